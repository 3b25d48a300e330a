"""linear, Numba backend: same signature and bits as :func:`kernels.reference.linear`.

Parallel over samples; each output is a contiguous int16 x int16 -> int32 dot
product of ``x[n] - input_zero_point`` (|.| <= 255) with a weight row
(|.| <= 127): with ``K <= 16577`` (checked) the sum stays below 2^29, so int32
accumulation is exact.  Requantization goes through
:func:`kernels.fixedpoint.requantize_round_half_up_scalar`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks
from kernels.fixedpoint import requantize_round_half_up_scalar


@njit(cache=True, parallel=True)
def _linear_kernel(x, weight16, bias, input_zero_point, output_multiplier, output_shift,
                   output_zero_point, act_min, act_max, out):
    # x (N, K) uint8; weight16 (O, K) int16; out (N, O) uint8
    n_batch, k_len = x.shape
    n_out = weight16.shape[0]
    for n in prange(n_batch):
        row = np.empty(k_len, dtype=np.int16)
        for k in range(k_len):
            row[k] = np.int16(np.int16(x[n, k]) - input_zero_point)
        for o in range(n_out):
            dot = np.int32(0)
            for k in range(k_len):
                dot = np.int32(dot + np.int32(row[k]) * np.int32(weight16[o, k]))
            acc = np.int64(dot) + np.int64(bias[o])
            v = requantize_round_half_up_scalar(acc, output_multiplier[o], output_shift[o]) + output_zero_point
            if v < act_min:
                v = act_min
            elif v > act_max:
                v = act_max
            out[n, o] = np.uint8(v)


def linear(x, weight, bias, input_zero_point, output_multiplier, output_shift,
           output_zero_point, act_min, act_max):
    """Quantized linear layer; see :func:`kernels.reference.linear` for the definition."""
    (x, weight, bias, input_zero_point, output_multiplier, output_shift,
     output_zero_point, act_min, act_max) = checks.linear_args(
        x, weight, bias, input_zero_point, output_multiplier, output_shift,
        output_zero_point, act_min, act_max)
    out = np.empty((x.shape[0], weight.shape[0]), dtype=np.uint8)
    _linear_kernel(x, weight.astype(np.int16), bias, input_zero_point, output_multiplier,
                   output_shift, output_zero_point, act_min, act_max, out)
    return out
