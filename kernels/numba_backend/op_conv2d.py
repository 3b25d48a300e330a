"""conv2d, Numba backend: same signature and bits as :func:`kernels.reference.conv2d`.

Design (portable, integer-only):

* parallel over output rows ``(n, oh)`` (``prange``), so any batch size keeps
  every thread busy;
* per row, an im2col patch matrix ``(OW, K)`` of ``x - input_zero_point`` in
  int16 (|value| <= 255; padding is stored as 0, which is exactly the
  reference's zero-point padding), laid out ``(kh, kw, c)`` like an OHWI weight
  row, so every output is one contiguous length-K dot product;
* weights widened once per call to int16 ``(O, K)``; the dot product
  accumulates in int32 (products <= 255*127, K <= 16577, so |dot| < 2^29) in a
  loop LLVM vectorizes (``pmaddwd``-style int16 x int16 -> int32);
* requantization through :func:`kernels.fixedpoint.requantize_round_half_up_scalar`.

A CPU-specific micro-kernel (e.g. AVX-512 VNNI, uint8 x int8) would replace the
patch + ``_row_dot`` stage: raw uint8 patches padded with ``input_zero_point``,
then ``acc = sum(x * w) - input_zero_point * sum(w[o])``, the same integer.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks
from kernels.numba_backend import vnni
from kernels.fixedpoint import requantize_round_half_up_scalar


@njit(cache=True, inline="always")
def _row_dot(patch, weight16, p, o, k_len):
    # patch (OW, K) int16, weight16 (O, K) int16 -> int32 dot of patch row p and weight row o;
    # |sum| < 2^29 (checks.MAX_REDUCTION), so the int32 accumulator is exact
    acc = np.int32(0)
    for k in range(k_len):
        acc = np.int32(acc + np.int32(patch[p, k]) * np.int32(weight16[o, k]))
    return acc


@njit(cache=True, parallel=True)
def _conv2d_kernel(x, weight16, kernel_h, kernel_w, bias, input_zero_point, output_multiplier,
                   output_shift, output_zero_point, stride, padding, act_min, act_max, out):
    # x (N, H, W, C) uint8; weight16 (O, K) int16 with K = KH*KW*C in (kh, kw, c) order;
    # out (N, OH, OW, O) uint8
    n_batch, height, width, channels = x.shape
    n_out, k_len = weight16.shape
    out_h, out_w = out.shape[1], out.shape[2]
    row_len = kernel_w * channels
    for task in prange(n_batch * out_h):
        n = task // out_h
        oh = task - n * out_h
        patch = np.zeros((out_w, k_len), dtype=np.int16)  # padding stays 0 == zp - zp
        for ow in range(out_w):
            for kh in range(kernel_h):
                ih = oh * stride - padding + kh
                if ih < 0 or ih >= height:
                    continue
                for kw in range(kernel_w):
                    iw = ow * stride - padding + kw
                    if iw < 0 or iw >= width:
                        continue
                    base = kh * row_len + kw * channels
                    for c in range(channels):
                        patch[ow, base + c] = np.int16(np.int16(x[n, ih, iw, c]) - input_zero_point)
        for ow in range(out_w):
            for o in range(n_out):
                acc = np.int64(_row_dot(patch, weight16, ow, o, k_len)) + np.int64(bias[o])
                v = requantize_round_half_up_scalar(acc, output_multiplier[o], output_shift[o]) + output_zero_point
                if v < act_min:
                    v = act_min
                elif v > act_max:
                    v = act_max
                out[n, oh, ow, o] = np.uint8(v)


def conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
           output_zero_point, stride, padding, act_min, act_max, out=None):
    """Quantized conv2d; see :func:`kernels.reference.conv2d` for the definition.

    Runs the AVX-512 VNNI micro-kernel (:mod:`kernels.numba_backend.vnni`) where the
    CPU has it, else the portable kernel; both give the reference's bits.
    """
    return _conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                   output_zero_point, stride, padding, act_min, act_max, out, use_vnni=vnni.AVAILABLE)


def conv2d_portable(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                    output_zero_point, stride, padding, act_min, act_max, out=None):
    """:func:`conv2d` forced onto the portable kernel (any x86-64 or ARM CPU)."""
    return _conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                   output_zero_point, stride, padding, act_min, act_max, out, use_vnni=False)


def _conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
            output_zero_point, stride, padding, act_min, act_max, out, use_vnni):
    (x, weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point,
     stride, padding, act_min, act_max, oh, ow) = checks.conv2d_args(
        x, weight, bias, input_zero_point, output_multiplier, output_shift,
        output_zero_point, stride, padding, act_min, act_max)
    n_out, kernel_h, kernel_w, channels = weight.shape
    out = checks.output_buffer(out, (x.shape[0], oh, ow, n_out), x)
    if use_vnni:
        return vnni.conv2d_vnni(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                                output_zero_point, stride, padding, act_min, act_max, out)
    weight16 = weight.reshape(n_out, kernel_h * kernel_w * channels).astype(np.int16)
    _conv2d_kernel(x, weight16, kernel_h, kernel_w, bias, input_zero_point, output_multiplier,
                   output_shift, output_zero_point, stride, padding, act_min, act_max, out)
    return out
