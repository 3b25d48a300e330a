"""Engine: API, input validation, numba == reference bit for bit on whole networks, info text, datasets."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import intengine
from intengine import modelfile
from intengine.datasets import load_cifar10
from intengine.engine import Model, info_text, load_model
from intengine.errors import IntengineError
from test_modelfile import tiny_model

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


def data_path() -> Path:
    return Path(os.environ.get("INTENGINE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def cifar_test(n=None):
    path = data_path() / "cifar10_subset.npz"
    if not path.exists():
        pytest.skip(f"CIFAR-10 subset not found at {path} (set INTENGINE_DATA)")
    x, y, names = load_cifar10(path, "test")
    return (x, y, names) if n is None else (x[:n], y[:n], names)


def shipped(sigma="0.25") -> Path:
    path = MODELS / f"resnet20_sigma{sigma}.int8"
    assert path.exists(), f"shipped model {path} is missing"
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.int8"
    modelfile.write(path, *tiny_model(1))
    return path


def test_load_model_api(tiny):
    m = intengine.load_model(tiny)
    assert isinstance(m, Model)
    assert m.input_shape == (6, 6, 2)
    assert m.num_classes == 3 and m.class_names == ["a", "b", "c"]
    assert m.sigma == 0.25 and m.clip == "clip"
    assert m.metadata["seed"] == 1
    x = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 2), dtype=np.uint8)
    logits = m.forward(x, backend="reference")
    assert logits.dtype == np.uint8 and logits.shape == (5, 3)
    ids = m.classify(x, backend="reference")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, np.argmax(logits, axis=1))
    assert m.forward(x[:0], backend="reference").shape == (0, 3)


@settings(max_examples=25)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 6), data=st.data())
def test_numba_equals_reference_tiny(seed, n, data):
    model = Model(*tiny_model(seed))
    x = np.random.default_rng(seed).integers(0, 256, (n, 6, 6, 2), dtype=np.uint8)
    if data.draw(st.booleans()):  # saturated inputs exercise the clamps
        x[...] = data.draw(st.sampled_from([0, 255]))
    np.testing.assert_array_equal(model.forward(x, "numba"), model.forward(x, "reference"))
    np.testing.assert_array_equal(model.classify(x, "numba"), model.classify(x, "reference"))


def test_numba_equals_reference_resnet20_on_cifar():
    model = load_model(shipped())
    x, _, _ = cifar_test(24)
    np.testing.assert_array_equal(model.forward(x, "numba"), model.forward(x, "reference"))


def test_reused_buffers_across_batch_sizes_and_threads():
    """The engine reuses activation buffers across calls (per thread): results never depend on
    the previous call's batch size, an earlier result is never overwritten, and threads do not
    share buffers."""
    import threading

    model = load_model(shipped())
    rng = np.random.default_rng(4)
    batches = [rng.integers(0, 256, (n,) + model.input_shape, dtype=np.uint8) for n in (9, 3, 17, 9)]
    want = [model.forward(b, "reference") for b in batches]
    got = [model.forward(b, "numba") for b in batches]  # grows, shrinks, grows again
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    results = {}

    def run(k):
        results[k] = [model.forward(batches[(k + j) % 4], "numba") for j in range(4)]

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        for j in range(4):
            np.testing.assert_array_equal(results[k][j], want[(k + j) % 4])
    model.release_buffers()
    np.testing.assert_array_equal(model.forward(batches[0], "numba"), want[0])


@pytest.mark.slow
def test_numba_equals_reference_resnet20_noisy_inputs():
    from kernels.sampler import make_sampler, sigma_sq_from_sigma

    model = load_model(shipped())
    x, _, _ = cifar_test(2)
    sampler = make_sampler(sigma_sq_from_sigma(model.sigma))
    for i, img in enumerate(x):
        noisy = np.empty((64, img.size), dtype=np.uint8)
        failed = np.empty(64, dtype=np.uint8)
        sampler.add_noise_clip(img.reshape(-1), 7, 1, i, 0, noisy, failed)
        batch = noisy.reshape((64,) + model.input_shape)
        np.testing.assert_array_equal(model.forward(batch, "numba"), model.forward(batch, "reference"))


@pytest.mark.slow
@pytest.mark.parametrize("sigma", ["0.12", "0.25", "0.50", "1.00"])
def test_shipped_model_accuracy_matches_card(sigma):
    """The engine's clean test accuracy is within 1.5 points of the torch QAT model's (provenance)."""
    model = load_model(shipped(sigma))
    x, y, names = cifar_test()
    assert model.class_names == names
    acc = float((model.classify(x, "numba") == y).mean())
    assert abs(acc - model.metadata["test_acc_clean"]) <= 0.015


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 6, 6, 2), dtype=np.float32), "uint8"),
    (np.zeros((2, 6, 6, 2), dtype=np.int16), "uint8"),
    (np.zeros((6, 6, 2), dtype=np.uint8), "shape"),
    (np.zeros((2, 2, 6, 6), dtype=np.uint8), "shape"),
    (np.zeros((2, 6, 6, 3), dtype=np.uint8), "shape"),
    ([[0, 1]], "numpy array"),
])
def test_bad_inputs(tiny, bad, match):
    m = load_model(tiny)
    for backend in ("reference", "numba"):
        with pytest.raises(IntengineError, match=match):
            m.forward(bad, backend)


def test_unknown_backend(tiny):
    with pytest.raises(IntengineError, match="backend"):
        load_model(tiny).forward(np.zeros((1, 6, 6, 2), np.uint8), "cuda")


def test_non_contiguous_input_is_accepted(tiny):
    m = load_model(tiny)
    x = np.random.default_rng(3).integers(0, 256, (4, 6, 6, 4), dtype=np.uint8)[..., ::2]
    np.testing.assert_array_equal(m.forward(x, "numba"), m.forward(np.ascontiguousarray(x), "reference"))


def test_load_errors(tmp_path):
    with pytest.raises(IntengineError, match="not found"):
        load_model(tmp_path / "nope.int8")
    (tmp_path / "junk.int8").write_bytes(b"hello world, not a model" * 10)
    with pytest.raises(IntengineError):
        load_model(tmp_path / "junk.int8")


def test_info_text(tiny):
    m = load_model(tiny)
    text = info_text(m, tiny)
    n_params = sum(a.size for k, a in m.tensors.items() if k.endswith((".weight", ".bias")))
    assert f"{n_params:,}" in text and m.parameter_count() == n_params
    assert "sigma       0.25" in text
    assert f"{tiny.stat().st_size:,} bytes" in text
    for node in m.nodes:
        assert node["name"] in text
    assert "dataset" in text  # provenance
    assert "3x3x4" in text  # max pool output shape


def test_info_text_resnet20():
    path = shipped()
    text = info_text(load_model(path), path)
    assert "conv2d" in text and "add_round_half_up" in text and "test_acc_clean" in text


# ----------------------------------------------------------------------------- datasets

def test_load_cifar10_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(5), x_test=x[:2], y_test=np.array([9, 0]),
             label_names=np.array(["c%d" % i for i in range(10)]))
    xt, yt, names = load_cifar10(tmp_path / "d.npz", "test")
    assert xt.dtype == np.uint8 and xt.shape == (2, 32, 32, 3) and yt.dtype == np.int64
    assert names[9] == "c9" and list(yt) == [9, 0]
    xr, yr, _ = load_cifar10(tmp_path / "d.npz", "train")
    np.testing.assert_array_equal(xr, x)
    with pytest.raises(IntengineError, match="split"):
        load_cifar10(tmp_path / "d.npz", "val")
    np.savez(tmp_path / "bad.npz", x_test=x.astype(np.float32), y_test=np.arange(5))
    with pytest.raises(IntengineError, match="uint8"):
        load_cifar10(tmp_path / "bad.npz", "test")
    np.savez(tmp_path / "labels.npz", x_test=x, y_test=np.arange(5) + 20)
    with pytest.raises(IntengineError, match="labels"):
        load_cifar10(tmp_path / "labels.npz", "test")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(IntengineError):
        load_cifar10(tmp_path / "junk.npz", "test")
    with pytest.raises(IntengineError, match="not found"):
        load_cifar10(tmp_path / "absent.npz", "test")


def test_load_shared_subset():
    x, y, names = cifar_test()
    assert x.shape == (1017, 32, 32, 3) and names[0] == "airplane" and y.max() == 9


def _py2_pickle(obj) -> bytes:
    """Protocol-2 bytes laid out like the official (Python 2 cPickle) CIFAR-10 batch files."""
    import struct

    def enc(v) -> bytes:
        if isinstance(v, dict):
            body = b"".join(enc(k) + enc(x) for k, x in v.items())
            return b"}(" + body + b"u"
        if isinstance(v, list):
            return b"](" + b"".join(enc(x) for x in v) + b"e"
        if isinstance(v, bytes):
            return (b"U" + bytes([len(v)]) if len(v) < 256 else b"T" + struct.pack("<I", len(v))) + v
        if isinstance(v, int):
            return b"J" + struct.pack("<i", v)
        if isinstance(v, np.ndarray):
            dtype = b"cnumpy\ndtype\n" + enc(b"u1") + b"K\x00K\x01\x87R" + \
                b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
            shape = b"(" + b"".join(enc(int(s)) for s in v.shape) + b"t"
            return (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + enc(b"b")
                    + b"\x87R" + b"(K\x01" + shape + dtype + b"\x89" + enc(v.tobytes()) + b"tb")
        raise TypeError(type(v))

    return b"\x80\x02" + enc(obj) + b"."


def test_load_cifar10_batches_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    images = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        images[name] = (data, labels)
        (folder / name).write_bytes(_py2_pickle({b"batch_label": b"x", b"labels": labels, b"data": data,
                                                 b"filenames": [b"a.png", b"b.png", b"c.png"]}))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(_py2_pickle({b"label_names": names, b"num_vis": 3072}))
    x, y, got_names = load_cifar10(tmp_path, "test")  # parent folder works too
    data, labels = images["test_batch"]
    assert x.shape == (3, 32, 32, 3) and list(y) == labels and got_names[3] == "cat"
    np.testing.assert_array_equal(x[1, 4, 5], data[1].reshape(3, 32, 32)[:, 4, 5])  # CHW rows -> HWC
    x, y, _ = load_cifar10(folder, "train")
    assert x.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(y[3:6], images["data_batch_2"][1])


@pytest.mark.parametrize("payload", [
    b"\x80\x02cos\nsystem\nU\x02lsR.",                      # a global outside the allow-list
    b"\x80\x02cbuiltins\neval\nU\x011\x85R.",
    b"\x80\x02}(U\x04data",                                   # truncated
    b"\x80\x02}q\x00(U\x04dataq\x01K\x05u.",                   # data is not an array
    b"\x80\x02\x8f.",                                         # unsupported opcode
    b"",
])
def test_hostile_cifar_batch_files(tmp_path, payload):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(IntengineError):
        load_cifar10(folder, "test")


def test_missing_batch_file(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(IntengineError, match="test_batch"):
        load_cifar10(tmp_path, "test")
