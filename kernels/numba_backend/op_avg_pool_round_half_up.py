"""avg_pool_round_half_up, Numba backend: same signature and bits as the reference.

Parallel over output rows ``(n, oh)``; the window sum of ``x - zp`` is at most
255 * kernel^2 <= 255 * 16577 in magnitude (checked), so int32 is exact.
Requantization goes through :func:`kernels.fixedpoint.requantize_round_half_up_scalar`.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks
from kernels.fixedpoint import requantize_round_half_up_scalar


@njit(cache=True, parallel=True)
def _avg_pool_kernel(x, kernel, stride, input_zero_point, output_multiplier, output_shift,
                     output_zero_point, act_min, act_max, out):
    # x (N, H, W, C) uint8; out (N, OH, OW, C) uint8
    n_batch, _, _, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    offset = np.int32(kernel * kernel * input_zero_point)  # <= 255 * 16577 < 2^22
    for task in prange(n_batch * out_h):
        n = task // out_h
        oh = task - n * out_h
        acc = np.empty(channels, dtype=np.int32)
        for ow in range(out_w):
            acc[:] = -offset
            for i in range(kernel):
                for j in range(kernel):
                    for c in range(channels):
                        acc[c] += np.int32(x[n, oh * stride + i, ow * stride + j, c])
            for c in range(channels):
                v = requantize_round_half_up_scalar(acc[c], output_multiplier, output_shift) + output_zero_point
                if v < act_min:
                    v = act_min
                elif v > act_max:
                    v = act_max
                out[n, oh, ow, c] = np.uint8(v)


def avg_pool_round_half_up(x, kernel, stride, input_zero_point, output_multiplier,
                           output_shift, output_zero_point, act_min, act_max):
    """Average pooling; see :func:`kernels.reference.avg_pool_round_half_up` for the definition."""
    (x, kernel, stride, input_zero_point, output_multiplier, output_shift,
     output_zero_point, act_min, act_max, oh, ow) = checks.avg_pool_args(
        x, kernel, stride, input_zero_point, output_multiplier, output_shift,
        output_zero_point, act_min, act_max)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), dtype=np.uint8)
    _avg_pool_kernel(x, kernel, stride, input_zero_point, output_multiplier, output_shift,
                     output_zero_point, act_min, act_max, out)
    return out
