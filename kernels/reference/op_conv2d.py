"""conv2d: quantized 2-D convolution, NHWC activations, OHWI weights (the specification)."""
from __future__ import annotations

import numpy as np

from kernels import checks
from kernels.fixedpoint import requantize_round_half_up


def conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
           output_zero_point, stride, padding, act_min, act_max, out=None):
    """Quantized conv2d with per-output-channel requantization and a fused clamp.

    Layout and dtypes: ``x`` (N, H, W, C) uint8, ``weight`` (O, KH, KW, C) int8
    in [-127, 127], ``bias`` (O,) int32, ``output_multiplier``/``output_shift``
    (O,) int32; scalars are ints.  Returns uint8 (N, OH, OW, O) with
    ``OH = (H + 2*padding - KH)//stride + 1`` (likewise OW), written into ``out``
    when given (uint8, that shape, C-contiguous, not overlapping ``x``).

    Formula (``xpad`` is ``x`` padded by ``padding`` on each side with
    ``input_zero_point``, so padding contributes 0)::

        acc[n,oh,ow,o] = bias[o] + sum_{kh,kw,c} (xpad[n, oh*stride+kh, ow*stride+kw, c]
                                                  - input_zero_point) * weight[o,kh,kw,c]
        out = clamp(requant(acc, M[o], shift[o]) + output_zero_point, act_min, act_max)

    Rounding: ``requant`` is single rounding, ties toward +infinity
    (:mod:`kernels.fixedpoint`).  Fused ReLU is ``act_min = output_zero_point``.

    Overflow: every product is at most 255 * 127 in magnitude and the window
    holds ``K = KH*KW*C <= 16577`` of them (checked), so the dot product is below
    2^29 and ``|acc| < 2^31 + 2^29``; the int64 requantization bound holds.
    """
    (x, weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point,
     stride, padding, act_min, act_max, oh, ow) = checks.conv2d_args(
        x, weight, bias, input_zero_point, output_multiplier, output_shift,
        output_zero_point, stride, padding, act_min, act_max)
    n, h, w, c = x.shape
    o, kh, kw, _ = weight.shape

    # (N, H+2p, W+2p, C) int64; padded positions hold x - zp = 0
    shifted = np.pad(x.astype(np.int64) - input_zero_point,
                     ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    w64 = weight.astype(np.int64)
    acc = np.zeros((n, oh, ow, o), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            # (N, OH, OW, C) window tap (i, j) @ (C, O)
            tap = shifted[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
            acc += tap @ w64[:, i, j, :].T
    acc += bias.astype(np.int64)

    out = checks.output_buffer(out, (n, oh, ow, o), x)
    v = requantize_round_half_up(acc, output_multiplier, output_shift) + output_zero_point
    out[...] = np.clip(v, act_min, act_max)
    return out
