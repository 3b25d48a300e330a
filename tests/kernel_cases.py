"""Shared helpers for the kernel tests: random op arguments and independent accumulator oracles.

The oracles here are written independently of ``kernels.reference`` (sliding
windows + einsum), so the tests that use them to pick multipliers or to check
exact math do not trust the code under test.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import kernels
from kernels.fixedpoint import quantize_multiplier, quantize_multipliers

# reference, numba (best rung), and numba forced onto every conv2d rung this CPU has
# (numba-vnni512, numba-avx2, numba-portable): "SIMD must make no difference to the results"
BACKEND_NAMES = kernels.available_backends()


def conv_acc(x, weight, bias, input_zero_point, stride, padding):
    """int64 (N, OH, OW, O) accumulator of conv2d (bias included), by sliding windows."""
    shifted = x.astype(np.int64) - input_zero_point
    shifted = np.pad(shifted, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    _, kh, kw, _ = weight.shape
    # (N, H', W', C, KH, KW) -> strided output positions
    windows = sliding_window_view(shifted, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    dot = np.einsum("nhwcij,oijc->nhwo", windows, weight.astype(np.int64))
    return dot + bias.astype(np.int64)


def linear_acc(x, weight, bias, input_zero_point):
    return (x.astype(np.int64) - input_zero_point) @ weight.astype(np.int64).T + bias.astype(np.int64)


def window_sum(x, kernel, stride, input_zero_point):
    """int64 (N, OH, OW, C) sum of ``x - zp`` over each kernel x kernel window, no padding."""
    shifted = x.astype(np.int64) - input_zero_point
    windows = sliding_window_view(shifted, (kernel, kernel), axis=(1, 2))[:, ::stride, ::stride]
    return windows.sum(axis=(-2, -1))


def multipliers_for(acc, rng, target=128.0):
    """Per-channel (last axis) (M, shift) with ``real ~ target / max|acc|`` times a factor in [0.5, 2].

    Outputs then span about +-target around the zero point: some clamp, most do not.
    Also returns the real multipliers used.
    """
    peak = np.abs(acc.reshape(-1, acc.shape[-1])).max(axis=0).astype(np.float64)
    reals = target / np.maximum(peak, 1.0) * rng.uniform(0.5, 2.0, size=peak.shape)
    m, s = quantize_multipliers(reals)
    return m, s, reals


def centering_bias(dot, rng):
    """Per-channel int32 bias ~ -mean(dot) plus a random offset within a quarter of the spread.

    As BN folding does, this centers each channel's accumulator, so outputs land on
    both sides of the zero point instead of all clamping to one end (e.g. when
    input_zero_point = 0 makes every x - zp >= 0).
    """
    flat = dot.reshape(-1, dot.shape[-1])
    mean = np.round(flat.mean(axis=0)).astype(np.int64)
    spread = np.abs(flat - mean).max(axis=0) + 1
    offset = rng.integers(-(spread // 4), spread // 4 + 1)
    return np.clip(offset - mean, -(2**31), 2**31 - 1).astype(np.int32)


def activation_range(rng, output_zero_point, kind):
    """(act_min, act_max): "full", "relu" (act_min = zero point) or a random sub-range."""
    if kind == "full":
        return 0, 255
    if kind == "relu":
        return output_zero_point, 255
    lo, hi = sorted(int(v) for v in rng.integers(0, 256, size=2))
    return lo, hi


def random_conv_case(rng, n, h, w, c, o, k, stride, padding, input_zero_point,
                     output_zero_point, act_kind):
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k, k, c), dtype=np.int8)
    dot = conv_acc(x, weight, np.zeros(o, np.int32), input_zero_point, stride, padding)
    bias = centering_bias(dot, rng)
    acc = dot + bias.astype(np.int64)
    m, s, reals = multipliers_for(acc, rng)
    act_min, act_max = activation_range(rng, output_zero_point, act_kind)
    args = (x, weight, bias, input_zero_point, m, s, output_zero_point, stride, padding, act_min, act_max)
    return args, acc, reals


def random_linear_case(rng, n, k, o, input_zero_point, output_zero_point, act_kind):
    x = rng.integers(0, 256, size=(n, k), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k), dtype=np.int8)
    dot = linear_acc(x, weight, np.zeros(o, np.int32), input_zero_point)
    bias = centering_bias(dot, rng)
    acc = dot + bias.astype(np.int64)
    m, s, reals = multipliers_for(acc, rng)
    act_min, act_max = activation_range(rng, output_zero_point, act_kind)
    return (x, weight, bias, input_zero_point, m, s, output_zero_point, act_min, act_max), acc, reals


def scalar_multiplier(real):
    m, s = quantize_multiplier(real)
    return m, s


def predicted_interior(acc, reals, output_zero_point, act_min, act_max):
    """Mask of outputs whose real-valued result ``acc * real + zp`` lies inside (act_min + 1, act_max - 1).

    Requantization is within 1/2 + 2^-22 LSB of that value here, so a correct
    kernel must leave these outputs strictly inside the clamp range.
    """
    predicted = acc.astype(np.float64) * reals + output_zero_point
    return (predicted > act_min + 1) & (predicted < act_max - 1)


def interior_count(out, act_min, act_max):
    """Outputs strictly inside (act_min, act_max): the ones requantization decided, not the clamp."""
    return int(np.count_nonzero((out > act_min) & (out < act_max)))


def torch_exact_activation_levels() -> int:
    """Activation codes 0..L-1 on which torch's x86/FBGEMM int8 conv and linear are exact here.

    Without AVX-512 VNNI, FBGEMM multiplies uint8 x int8 with ``vpmaddubsw``, whose int16 pair
    sums saturate once activations reach 128 (255 * 127 * 2 > 32767); torch's own x86 qconfig
    quantizes activations to 7 bits there (``reduce_range``). Cross-checks against torch use that
    domain on such CPUs and the full 8 bits where ``vpdpbusd`` makes FBGEMM exact."""
    from kernels.numba_backend.microkernel import host_features

    return 256 if host_features().get("avx512vnni", False) else 128
