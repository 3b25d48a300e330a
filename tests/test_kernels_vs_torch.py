"""The reference kernels against PyTorch's quantized ops (x86 engine) on the same integers.

PyTorch requantizes in float (round half to even) where intengine uses one
fixed-point rounding (ties toward +infinity), so outputs may differ by one
step near ties.  Stated tolerance: <= 1 LSB per element and a mean signed
difference below 0.05 LSB (no systematic bias).
"""
import warnings

import numpy as np
import pytest

import kernels
from kernels.fixedpoint import quantize_multiplier, quantize_multipliers
from kernel_cases import conv_acc, linear_acc, torch_exact_activation_levels

LEVELS = torch_exact_activation_levels()  # 128 on CPUs without AVX-512 VNNI: see kernel_cases

torch = pytest.importorskip("torch")
qF = pytest.importorskip("torch.ao.nn.quantized.functional")

REF = kernels.get_backend("reference")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(autouse=True)
def x86_engine():
    engines = torch.backends.quantized.supported_engines
    engine = "x86" if "x86" in engines else "fbgemm" if "fbgemm" in engines else None
    if engine is None:
        pytest.skip("torch has neither the x86 nor the fbgemm quantized engine")
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    yield
    torch.backends.quantized.engine = previous


def _activation(q_nhwc_or_nk, scale, zero_point):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._make_per_tensor_quantized_tensor(torch.from_numpy(q_nhwc_or_nk), scale, zero_point)


def _weight(q, scales):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch._make_per_channel_quantized_tensor(
            torch.from_numpy(q), torch.from_numpy(scales.astype(np.float64)),
            torch.zeros(len(scales), dtype=torch.int64), 0)


def _scales_for(acc, rng, s_in, s_out):
    """Per-channel weight scales giving real multipliers ~ 128 / max|acc| (outputs mostly unclamped)."""
    peak = np.abs(acc.reshape(-1, acc.shape[-1])).max(axis=0).astype(np.float64)
    reals = 128.0 / np.maximum(peak, 1.0) * rng.uniform(0.5, 2.0, size=peak.shape)
    return reals * s_out / s_in


def _compare(ours, theirs, act_min=0, act_max=255):
    ours = ours.astype(np.int64)
    theirs = theirs.astype(np.int64)
    diff = ours - theirs
    assert np.abs(diff).max() <= 1, f"max |diff| {np.abs(diff).max()} LSB"
    inside = (ours > act_min) & (ours < act_max)
    assert inside.mean() > 0.5  # the comparison is about requantization, not the clamp
    assert abs(diff.mean()) < 0.05, f"mean signed diff {diff.mean():.4f} LSB"
    return diff


@pytest.mark.parametrize("c, o, k, stride, padding", [
    (3, 16, 3, 1, 1),     # ResNet-20 stem
    (16, 16, 3, 1, 1),
    (16, 32, 3, 2, 1),
    (32, 64, 1, 2, 0),    # projection shortcut
    (17, 19, 3, 1, 2),
    (8, 8, 7, 2, 3),      # ResNet-50 stem kernel
])
def test_conv2d_matches_torch(c, o, k, stride, padding):
    rng = np.random.default_rng(c * 1000 + o)
    n, h, w = 4, 12, 12
    # the zero point pads the input, so it stays inside torch's exact domain too
    input_zero_point, output_zero_point = int(rng.integers(0, LEVELS)), int(rng.integers(64, 192))
    s_in, s_out = float(rng.uniform(0.005, 0.05)), float(rng.uniform(0.01, 0.1))
    x = rng.integers(0, LEVELS, size=(n, h, w, c), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k, k, c), dtype=np.int8)
    bias = rng.integers(-30000, 30000, size=o).astype(np.int32)
    s_w = _scales_for(conv_acc(x, weight, bias, input_zero_point, stride, padding), rng, s_in, s_out)
    m, s = quantize_multipliers(s_in * s_w / s_out)

    ours = REF.conv2d(x, weight, bias, input_zero_point, m, s, output_zero_point, stride, padding, 0, 255)

    q_x = _activation(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), s_in, input_zero_point)
    q_x = q_x.contiguous(memory_format=torch.channels_last)
    q_w = _weight(np.ascontiguousarray(weight.transpose(0, 3, 1, 2)), s_w)
    bias_real = torch.from_numpy(bias.astype(np.float64) * s_in * s_w).float()
    theirs = qF.conv2d(q_x, q_w, bias_real, stride=stride, padding=padding,
                       scale=s_out, zero_point=output_zero_point)
    theirs = theirs.int_repr().numpy().transpose(0, 2, 3, 1)
    _compare(ours, theirs)

    # fused ReLU (act_min = output zero point) == ReLU applied to torch's output
    ours_relu = REF.conv2d(x, weight, bias, input_zero_point, m, s, output_zero_point, stride, padding,
                           output_zero_point, 255)
    diff = ours_relu.astype(np.int64) - np.maximum(theirs, output_zero_point)
    assert np.abs(diff).max() <= 1


@pytest.mark.parametrize("k, o", [(64, 10), (256, 10), (2048, 1000), (33, 7)])
def test_linear_matches_torch(k, o):
    rng = np.random.default_rng(k + o)
    n = 32
    input_zero_point, output_zero_point = int(rng.integers(0, LEVELS)), int(rng.integers(64, 192))
    s_in, s_out = float(rng.uniform(0.005, 0.05)), float(rng.uniform(0.01, 0.1))
    x = rng.integers(0, LEVELS, size=(n, k), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k), dtype=np.int8)
    bias = rng.integers(-30000, 30000, size=o).astype(np.int32)
    s_w = _scales_for(linear_acc(x, weight, bias, input_zero_point), rng, s_in, s_out)
    m, s = quantize_multipliers(s_in * s_w / s_out)

    ours = REF.linear(x, weight, bias, input_zero_point, m, s, output_zero_point, 0, 255)

    bias_real = torch.from_numpy(bias.astype(np.float64) * s_in * s_w).float()
    theirs = qF.linear(_activation(x, s_in, input_zero_point), _weight(weight, s_w), bias_real,
                       scale=s_out, zero_point=output_zero_point)
    _compare(ours, theirs.int_repr().numpy())


@pytest.mark.parametrize("seed", range(4))
def test_add_matches_torch(seed):
    rng = np.random.default_rng(seed)
    shape = (8, 16, 16, 32)
    s_a, s_b = float(rng.uniform(0.01, 0.1)), float(rng.uniform(0.01, 0.1))
    s_out = float(s_a + s_b) * float(rng.uniform(1.6, 2.4))  # |a + b| spans about +-128 output steps
    a_zp, b_zp = (int(v) for v in rng.integers(0, 256, size=2))
    out_zp = int(rng.integers(64, 192))
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = rng.integers(0, 256, size=shape, dtype=np.uint8)
    am, ash = quantize_multiplier(s_a / s_out)
    bm, bsh = quantize_multiplier(s_b / s_out)

    ours = REF.add_round_half_up(a, b, a_zp, am, ash, b_zp, bm, bsh, out_zp, 0, 255)

    theirs = torch.ops.quantized.add(_activation(a, s_a, a_zp), _activation(b, s_b, b_zp), s_out, out_zp)
    _compare(ours, theirs.int_repr().numpy())


def test_max_pool_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 9, 9, 5), dtype=np.uint8)
    ours = REF.max_pool(x, 3, 2, 1)
    q_x = _activation(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), 0.1, 7)
    theirs = torch.nn.functional.max_pool2d(q_x, 3, 2, 1).int_repr().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(ours, theirs)
