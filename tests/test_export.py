"""Torch side: models, fake quantization, BN folding, conversion, training CLI, and engine == torch QAT."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import convert, qat  # noqa: E402
from export import models as fm  # noqa: E402
from export.train import TrainConfig, clean_input, discrete_noise, noisy_clip, train  # noqa: E402
from intengine import modelfile  # noqa: E402
from intengine.datasets import load_cifar10, load_digits_uint8  # noqa: E402
from intengine.engine import Model, load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def data_file() -> Path:
    base = Path(os.environ.get("INTENGINE_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    path = base / "cifar10_subset.npz"
    if not path.exists():
        pytest.skip(f"CIFAR-10 subset not found at {path} (set INTENGINE_DATA)")
    return path


def torch_codes(qnet, x_uint8: np.ndarray) -> np.ndarray:
    """uint8 logit codes of the torch QAT model, computed in float64 (fewer float-rounding ties)."""
    qnet = copy.deepcopy(qnet).double().eval()  # a copy: .float() would round the float64 observer state
    with torch.no_grad():
        return qnet.logit_codes(clean_input(x_uint8).double()).numpy()


def agreement(engine_logits: np.ndarray, codes: np.ndarray) -> tuple[float, int]:
    top1 = float((np.argmax(engine_logits, 1) == np.argmax(codes, 1)).mean())
    return top1, int(np.abs(engine_logits.astype(np.int64) - codes).max())


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A small residual CNN trained briefly on sklearn digits with IntRS noise (sigma 0.25)."""
    x_tr, y_tr, names = load_digits_uint8("train")
    x_te, y_te, _ = load_digits_uint8("test")
    cfg = TrainConfig(arch="small", sigma=0.25, epochs=5, qat_epochs=2, freeze_epochs=1, seed=3, lr=0.05,
                      flip=False)
    result = train(cfg, x_tr, y_tr, x_te, y_te, 10, log=lambda s: None)
    path = tmp_path_factory.mktemp("digits") / "small.int8"
    convert.write_model(result["model"], path, sigma=0.25, class_names=names,
                        provenance={"dataset": "digits", **result["metrics"]})
    return result, path, x_te, y_te


def test_model_sizes():
    assert 0.26e6 < sum(p.numel() for p in fm.resnet20().parameters()) < 0.28e6
    r50 = fm.resnet50(num_classes=7)
    # 25.56M with 1000 classes; the 2048x1000 head shrinks to 2048x7 here
    assert sum(p.numel() for p in r50.parameters()) == 25_557_032 - 2048 * 993 - 993
    with torch.no_grad():
        assert r50.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 7)
        assert fm.small_cnn()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_weight_quantization_is_symmetric_per_channel():
    w = torch.randn(5, 3, 3, 3)
    w[2] = 0.0
    codes, scale = qat.weight_qparams(w)
    assert codes.abs().max() <= 127 and codes.abs().flatten(1).amax(1)[[0, 1, 3, 4]].eq(127).all()
    assert torch.all(codes[2] == 0) and scale[2] == 1.0
    assert torch.allclose(codes * scale.view(-1, 1, 1, 1), w.double(), atol=float(scale.max()) / 2 + 1e-12)


def test_activation_qparams_contain_zero():
    s, zp = qat.activation_qparams(0.5, 3.0, relu=False)
    assert zp == 0 and s == pytest.approx(3.0 / 255)
    s, zp = qat.activation_qparams(-1.0, 1.0, relu=False)
    assert zp == 128
    s, zp = qat.activation_qparams(-1.0, 1.0, relu=True)
    assert zp == 0


def test_bn_folding_preserves_float_function():
    torch.manual_seed(0)
    net = fm.resnet20()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    conv, bn = net.stem[0], net.stem[1]
    w, b = qat.fold_bn(conv, bn)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = bn(conv(x))
        got = torch.nn.functional.conv2d(x, w, b, 1, 1)
    assert torch.allclose(ref, got, atol=1e-5)


def test_noise_comes_from_engine_sampler_and_clips_like_engine():
    from kernels.sampler import make_sampler, sample_discrete_gaussian, sigma_sq_from_sigma

    x = np.random.default_rng(0).integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    n = discrete_noise(0.5, x.shape, 11, 20)
    ref = sample_discrete_gaussian(sigma_sq_from_sigma(0.5), (3, 48), 11, 20).reshape(x.shape)
    np.testing.assert_array_equal(n, ref)
    got = noisy_clip(x, n).permute(0, 2, 3, 1).numpy() * 255
    np.testing.assert_array_equal(np.rint(got).astype(np.int64), np.clip(x.astype(np.int64) + n, 0, 255))
    # the engine's sampler (add_noise_clip) uses the same counter layout: image index = row of the bank
    sampler = make_sampler(sigma_sq_from_sigma(0.5))
    out = np.empty((1, 48), np.uint8)
    failed = np.empty(1, np.uint8)
    sampler.add_noise_clip(x[0].reshape(-1), 11, 20, 0, 0, out, failed)
    np.testing.assert_array_equal(out[0], np.clip(x[0].reshape(-1).astype(np.int64) + n[0].reshape(-1), 0, 255))


def test_engine_matches_torch_qat_digits(digits_model):
    result, path, x, y = digits_model
    model = load_model(path)
    codes = torch_codes(result["model"], x)
    for backend in ("reference", "numba"):
        top1, max_diff = agreement(model.forward(x, backend), codes)
        assert top1 >= 0.99 and max_diff <= 2, (backend, top1, max_diff)
    acc = float((model.classify(x) == y).mean())
    assert abs(acc - result["metrics"]["test_acc_clean"]) <= 0.01
    assert acc > 0.3  # it learned something (10 classes)


def test_conversion_round_trip_identical_bytes(digits_model, tmp_path):
    result, path, _, _ = digits_model
    data = path.read_bytes()
    model, tensors = modelfile.read(path)
    assert modelfile.dumps(model, tensors) == data
    again = convert.write_model(result["model"], tmp_path / "again.int8", sigma=0.25,
                                class_names=model["class_names"], provenance=model["provenance"])
    assert again == data  # export -> export is deterministic too


def test_converted_integer_ranges(digits_model):
    _, path, _, _ = digits_model
    model, tensors = modelfile.read(path)
    for name, a in tensors.items():
        if name.endswith(".weight"):
            assert a.dtype == np.int8 and a.min() >= -127
        if name.endswith(".output_multiplier"):
            assert np.all((a >= 2**30) | (a == 0))
    assert model["input"] == {"name": "input", "shape": [8, 8, 1], "dtype": "uint8", "scale": 1 / 255,
                              "zero_point": 0, "clip": "clip"}


@pytest.mark.slow
def test_engine_matches_torch_qat_cifar():
    """A small CNN trained briefly on the CIFAR-10 subset: engine vs torch QAT on all test images."""
    path = data_file()
    x_tr, y_tr, names = load_cifar10(path, "train")
    x_te, y_te, _ = load_cifar10(path, "test")
    net_cfg = TrainConfig(arch="small", sigma=0.25, epochs=3, qat_epochs=2, freeze_epochs=1, seed=0)
    result = train(net_cfg, x_tr[:2000], y_tr[:2000], x_te[:64], y_te[:64], 10, log=lambda s: None)
    qnet = result["model"]
    model = Model(*convert.model_description(qnet, 0.25, names))
    codes = torch_codes(qnet, x_te)
    noise = discrete_noise(0.25, x_te.shape, 5, 3)
    noisy = np.clip(x_te.astype(np.int32) + noise, 0, 255).astype(np.uint8)
    for batch in (x_te, noisy):
        codes = torch_codes(qnet, batch)
        top1, max_diff = agreement(model.forward(batch, "numba"), codes)
        assert top1 >= 0.99 and max_diff <= 2, (top1, max_diff)


def test_fake_quant_conv_matches_torch_ao_quantized_conv():
    """Cross-check one layer against torch.ao's quantized conv (FBGEMM): codes within 1 LSB, mean ~0."""
    import torch.ao.nn.quantized.functional as qF

    torch.manual_seed(0)
    conv = qat.QConv(torch.randn(8, 3, 3, 3) * 0.3, torch.randn(8) * 0.1, stride=1, padding=1, relu=False)
    conv.out.min_val.fill_(-2.5)
    conv.out.max_val.fill_(3.0)
    conv.out.initialized.fill_(True)
    conv.eval()
    from kernel_cases import torch_exact_activation_levels

    x_codes = torch.randint(0, torch_exact_activation_levels(), (4, 3, 10, 10))  # FBGEMM's exact domain
    s_in = 1 / 255
    y, s_out, zp_out = conv(x_codes.double().float() * s_in, s_in, 0)
    ours = torch.round(y.double() / s_out).long() + zp_out

    codes, w_scale = qat.weight_qparams(conv.weight)
    bias_codes = qat.bias_qparams(conv.bias, s_in, w_scale)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(codes.to(torch.int8), w_scale.double(),
                                                      torch.zeros(8, dtype=torch.long), 0)
        qx = torch._make_per_tensor_quantized_tensor(x_codes.to(torch.uint8), s_in, 0)
        qy = qF.conv2d(qx, qw, (bias_codes * s_in * w_scale).float(), stride=1, padding=1,
                       scale=s_out, zero_point=zp_out)
    theirs = qy.int_repr().long()
    diff = ours - theirs
    assert diff.abs().max() <= 1
    assert abs(diff.double().mean()) < 0.02


def test_cli_train_module_does_not_import_torch():
    code = "import sys, argparse, export.cli_train as c; c.add_arguments(argparse.ArgumentParser()); " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_cli_train_digits_and_resume(tmp_path):
    from export import cli_train

    out = tmp_path / "d.int8"
    ckpt = tmp_path / "d.ckpt"
    args = ["--data", "digits", "--arch", "small", "--epochs", "2", "--qat-epochs", "1", "--out", str(out),
            "--seed", "4", "--checkpoint", str(ckpt), "--lr", "0.05"]
    assert cli_train.main(args) == 0
    m = load_model(out)
    prov = m.metadata
    assert prov["seed"] == 4 and prov["epochs"] == 2 and "test_acc_noisy" in prov and "command" in prov
    assert m.sigma == 0.25 and m.input_shape == (8, 8, 1)
    # resuming after the last epoch only finishes (evaluation, export) and gives the same file
    out2 = tmp_path / "d2.int8"
    args2 = args[:]
    args2[args2.index(str(out))] = str(out2)
    assert cli_train.main(args2 + ["--resume", str(ckpt), "--checkpoint", str(tmp_path / "x.ckpt")]) == 0
    a, b = modelfile.read(out), modelfile.read(out2)
    for k in a[1]:
        np.testing.assert_array_equal(a[1][k], b[1][k])


def test_cli_train_bad_data(tmp_path, capsys):
    from export import cli_train

    rc = cli_train.main(["--data", str(tmp_path / "none.npz"), "--epochs", "1", "--out", str(tmp_path / "o")])
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_float_baseline_mode(tmp_path):
    from safetensors import safe_open

    from export import cli_train

    out = tmp_path / "f.safetensors"
    assert cli_train.main(["--data", "digits", "--arch", "small", "--epochs", "1", "--mode", "float",
                           "--out", str(out), "--checkpoint", str(tmp_path / "f.ckpt")]) == 0
    with safe_open(str(out), "np") as f:
        assert f.metadata()["format"] == "intengine.float32-baseline"
    from export.floatrs import load_float_baseline

    net, meta = load_float_baseline(out)  # round trip: same weights, same function
    assert meta["arch"] == "small" and meta["sigma"] == 0.25 and len(meta["class_names"]) == 10
    x = load_digits_uint8("test")[0][:8]
    assert net(clean_input(x)).shape == (8, 10)


def test_floatq_mode_trains_qat_model_on_quantized_float_noise(tmp_path):
    from export import cli_train
    from export.train import quantize_input

    g = torch.Generator().manual_seed(0)
    v = quantize_input(torch.rand(1000, generator=g) * 1.4 - 0.2)
    assert v.min() == 0 and v.max() == 1 and torch.equal(v * 255, torch.round(v * 255))  # on the grid
    out = tmp_path / "q.int8"
    assert cli_train.main(["--data", "digits", "--arch", "small", "--epochs", "2", "--qat-epochs", "1",
                           "--mode", "floatq", "--out", str(out), "--checkpoint", str(tmp_path / "q.ckpt")]) == 0
    m = load_model(out)
    assert m.metadata["mode"] == "floatq" and "round(255 v)" in m.metadata["noise"]


def test_resnet50_converts_and_runs(tmp_path):
    """ResNet-50 (ImageNet layout, max pool, bottlenecks) converts to a valid file; engine == torch QAT."""
    torch.manual_seed(0)
    net = fm.resnet50(num_classes=5, input_size=64).eval()
    qnet = qat.quantize_model(net).train()
    x = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        qnet(clean_input(x))
    qnet.eval()
    model = Model(*convert.model_description(qnet, 0.5, None))
    assert model.num_classes == 5 and any(n["op"] == "max_pool" for n in model.nodes)
    logits = model.forward(x, "reference")
    assert np.abs(logits.astype(np.int64) - torch_codes(qnet, x)).max() <= 2
