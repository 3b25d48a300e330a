"""Hostile conditions around runs (issue 13: B1 memory, B4 --out below a file, B5 disk full,
B6 special files as --out, B9 data changed under a resumable run)."""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

from intengine import cli, modelfile, runs
from intengine.engine import Model
from intengine.errors import IntengineError
from intengine.membudget import DEFAULT_MEMORY_BUDGET, bytes_per_sample, cap_batch, parse_size

from _cert_fakes import FakeModel, install_fake_sampler
from _hostile import assert_one_line

KW = dict(n0=10, n=60, alpha=0.01, batch=16, seed=7, sigma=0.5)


def pool_model(side: int):
    """A valid model with a side x side x 1 input: avg pool (k = side/32, exact scales) -> linear."""
    k = side // 32
    s_in, s_pool = 1 / 255, 1 / 255
    mult, shift = 1 << 30, 1 - 2 * (k.bit_length() - 1)  # s_in / (s_pool * k^2) = 2^-2log2(k)
    rng = np.random.default_rng(0)
    tensors = {"fc.weight": rng.integers(-127, 128, (10, 1024)).astype(np.int8),
               "fc.bias": np.zeros(10, np.int32), "fc.output_multiplier": np.full(10, 1 << 30, np.int32),
               "fc.output_shift": np.full(10, -8, np.int32)}
    model = {
        "input": {"name": "input", "shape": [side, side, 1], "dtype": "uint8", "scale": s_in, "zero_point": 0,
                  "clip": "clip"},
        "nodes": [{"name": "pool", "op": "avg_pool_round_half_up", "inputs": ["input"], "tensors": {},
                   "attrs": {"kernel": k, "stride": k, "input_zero_point": 0, "output_multiplier": mult,
                             "output_shift": shift, "output_zero_point": 0, "act_min": 0, "act_max": 255}},
                  {"name": "fc", "op": "linear", "inputs": ["pool"],
                   "tensors": {t: f"fc.{t}" for t in ("weight", "bias", "output_multiplier", "output_shift")},
                   "attrs": {"input_zero_point": 0, "output_zero_point": 128, "act_min": 0, "act_max": 255}}],
        "output": "fc",
        "quantization": {"input": {"scale": s_in, "zero_point": 0}, "pool": {"scale": s_pool, "zero_point": 0},
                         "fc": {"scale": 0.1, "zero_point": 128}},
        "num_classes": 10, "class_names": [str(i) for i in range(10)], "sigma": 0.25, "provenance": {},
    }
    return model, tensors


def test_b1_batch_capped_by_memory_budget():
    """B1: a 4096x4096x1 model made the default batch allocate 15.6 GiB."""
    big = Model(*pool_model(4096))
    per = bytes_per_sample(big)
    assert per > 2**30  # >= 64 bytes per input element of temporaries
    assert cap_batch(big, 1000, None) == DEFAULT_MEMORY_BUDGET // per == 1
    with pytest.raises(IntengineError, match="memory budget"):
        cap_batch(big, 1000, parse_size("512M"))
    assert parse_size("2G") == 2 << 30 and parse_size("1.5GiB") == 3 << 29 and parse_size("100") == 100


def test_b1_cli_shrinks_the_batch_or_fails_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    mfile = tmp_path / "m512.int8"
    modelfile.write(mfile, *pool_model(512))
    img = tmp_path / "img.npy"
    np.save(img, np.random.default_rng(0).integers(0, 256, (512, 512, 1), dtype=np.uint8))
    per = bytes_per_sample(Model(*pool_model(512)))
    budget = 5 * per + per // 2
    rc = cli.main(["certify", str(mfile), str(img), "--n", "12", "--n0", "3", "--seed", "1", "--json",
                   "--memory-budget", str(budget)])
    out, err = capsys.readouterr()
    import json

    assert rc == 0, err
    assert json.loads(out)["batch"] == 5
    rc = cli.main(["certify", str(mfile), str(img), "--n", "12", "--n0", "3", "--memory-budget", "1M"])
    out, err = capsys.readouterr()
    assert_one_line(rc, out, err)
    assert "memory budget" in err


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    install_fake_sampler(monkeypatch)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(8, 2, 2, 3), dtype=np.uint8)
    y = rng.integers(0, 3, size=8)
    mfile = tmp_path / "model.int8"
    mfile.write_bytes(b"fake model bytes")
    return FakeModel(), mfile, (x, y), tmp_path / "out" / "results.tsv"


def _run(setup, out=None, images=None, **kw):
    model, mfile, data, default_out = setup
    return runs.certify_dataset(model, mfile, "data.npz", out or default_out, images=images or data, **dict(KW, **kw))


def test_b4_out_below_a_regular_file(setup, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker / "x.tsv", blocker / "sub" / "x.tsv"):
        with pytest.raises(IntengineError, match="not a directory") as e:
            _run(setup, out=out)
        assert "\n" not in str(e.value)
    assert blocker.read_text() == "x"


def test_b4_cli_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    np.savez(tmp_path / "d.npz", x_test=np.zeros((2, 32, 32, 3), np.uint8), y_test=np.zeros(2, np.int64))
    model = os.path.join(os.path.dirname(__file__), "..", "models", "resnet20_sigma0.25.int8")
    rc = cli.main(["certify-dataset", model, str(tmp_path / "d.npz"), "--out", str(blocker / "x.tsv"),
                   "--max", "1", "--n", "10", "--n0", "10"])
    out, err = capsys.readouterr()
    assert_one_line(rc, out, err)


def _enospc_after(monkeypatch, calls: int):
    real = os.fsync
    count = {"n": 0}

    def fsync(fd):
        count["n"] += 1
        if count["n"] > calls:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(runs.os, "fsync", fsync)


@pytest.mark.parametrize("ok_fsyncs", [0, 1, 2, 4])  # meta, header, first row, third row
def test_b5_disk_full_one_line_no_temp_files_resume_exact(setup, monkeypatch, tmp_path, ok_fsyncs):
    """B5: a full disk gave an OSError traceback and left a 0-byte *.meta.json.<pid>.tmp behind."""
    out = setup[3]
    reference = tmp_path / "ref" / "results.tsv"
    _run(setup, out=reference)
    with monkeypatch.context() as m:
        _enospc_after(m, ok_fsyncs)
        with pytest.raises(IntengineError, match="no space left") as e:
            _run(setup)
        assert "\n" not in str(e.value)
    leftovers = [p.name for p in out.parent.iterdir() if ".tmp" in p.name]
    assert leftovers == []
    _run(setup)  # resume with space again
    strip = lambda p: [ln.split("\t")[:5] for ln in p.read_text().splitlines()]  # noqa: E731 (time columns differ)
    assert strip(out) == strip(reference)


def test_b6_fifo_as_results_file_does_not_block(setup, tmp_path):
    fifo = tmp_path / "fifo.tsv"
    os.mkfifo(fifo)
    result = {}

    def target():
        try:
            _run(setup, out=fifo)
        except IntengineError as exc:
            result["err"] = str(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "blocked on a FIFO"
    assert "FIFO" in result.get("err", "")


def test_b9_resume_refused_on_other_data(setup):
    """B9: the data file replaced by a shuffled copy at the same path was resumed silently."""
    model, mfile, (x, y), out = setup
    _run(setup, max_count=3)
    perm = np.random.default_rng(1).permutation(len(x))
    with pytest.raises(IntengineError, match="data differs"):
        _run(setup, images=(x[perm], y[perm]))
    _run(setup)  # the same data still resumes
    meta = __import__("json").loads(runs.meta_path(out).read_text())
    assert len(meta["data_sha256"]) == 64
    assert len(out.read_text().splitlines()) == 1 + len(x)


def test_b9_model_digest_recorded(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    path = os.path.join(os.path.dirname(__file__), "..", "models", "resnet20_sigma0.25.int8")
    from intengine.engine import load_model

    model = load_model(path)
    x = np.zeros((1, 32, 32, 3), np.uint8)
    out = tmp_path / "r.tsv"
    runs.certify_dataset(model, path, "d", out, images=(x, np.zeros(1, np.int64)), n0=2, n=4, batch=4, seed=1)
    meta = __import__("json").loads(runs.meta_path(out).read_text())
    assert meta["model_tensors_sha256"] == modelfile.tensors_digest(model.tensors)


def test_b9_sidecar_without_data_hash_is_not_resumed(setup):
    import json

    out = setup[3]
    _run(setup, max_count=2)
    meta = json.loads(runs.meta_path(out).read_text())
    del meta["data_sha256"]
    runs.meta_path(out).write_text(json.dumps(meta))
    with pytest.raises(IntengineError, match="records no data hash"):
        _run(setup)
