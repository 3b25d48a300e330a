"""add_round_half_up, Numba backend: same signature and bits as :func:`kernels.reference.add_round_half_up`.

Elementwise over the flattened tensors, parallel over chunks.  The two scaled
terms are below 2^59 each (|a - zp| < 2^8, M < 2^31, relative shift <= 20), so
the int64 sum and its rounding term (<= 2^61) cannot overflow.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks

_CHUNK = 4096


@njit(cache=True, parallel=True)
def _add_kernel(a, b, a_zero_point, a_scale, b_zero_point, b_scale, total_shift,
                output_zero_point, act_min, act_max, out):
    # a, b, out (size,) uint8; a_scale = Ma << (a_shift - smin) < 2^51, likewise b_scale;
    # total_shift = 31 - smin in [1, 62]
    size = a.shape[0]
    rounding = np.int64(1) << (total_shift - np.int64(1))
    n_chunks = (size + _CHUNK - 1) // _CHUNK
    for chunk in prange(n_chunks):
        stop = min(size, (chunk + 1) * _CHUNK)
        for i in range(chunk * _CHUNK, stop):
            v = ((np.int64(a[i]) - a_zero_point) * a_scale
                 + (np.int64(b[i]) - b_zero_point) * b_scale)
            r = ((v + rounding) >> total_shift) + output_zero_point
            if r < act_min:
                r = act_min
            elif r > act_max:
                r = act_max
            out[i] = np.uint8(r)


def add_round_half_up(a, b, a_zero_point, a_multiplier, a_shift, b_zero_point,
                      b_multiplier, b_shift, output_zero_point, act_min, act_max):
    """Residual add; see :func:`kernels.reference.add_round_half_up` for the definition."""
    (a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
     output_zero_point, act_min, act_max) = checks.add_args(
        a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
        output_zero_point, act_min, act_max)
    smin = min(a_shift, b_shift)
    out = np.empty(a.shape, dtype=np.uint8)
    _add_kernel(a.reshape(-1), b.reshape(-1), a_zero_point, a_multiplier << (a_shift - smin),
                b_zero_point, b_multiplier << (b_shift - smin), 31 - smin,
                output_zero_point, act_min, act_max, out.reshape(-1))
    return out
