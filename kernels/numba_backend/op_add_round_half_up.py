"""add_round_half_up, Numba backend: same signature and bits as :func:`kernels.reference.add_round_half_up`.

Elementwise over the flattened tensors, parallel over chunks.  The output is a
function of the byte pair ``(a[i], b[i])`` alone, so for large tensors (a batch
of noise samples) the kernel first evaluates the formula on all 256 x 256 pairs
(a 64 KiB table, the same arithmetic) and then does one lookup per element;
small tensors use the formula directly.  The two scaled
terms are below 2^59 each (|a - zp| < 2^8, M < 2^31, relative shift <= 20), so
the int64 sum and its rounding term (<= 2^61) cannot overflow.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks

_CHUNK = 4096


@njit(cache=True, inline="always")
def _add_one(av, bv, a_zero_point, a_scale, b_zero_point, b_scale, rounding, total_shift,
             output_zero_point, act_min, act_max):
    # a_scale = Ma << (a_shift - smin) < 2^51, likewise b_scale; total_shift = 31 - smin in [1, 62]
    v = (np.int64(av) - a_zero_point) * a_scale + (np.int64(bv) - b_zero_point) * b_scale
    r = ((v + rounding) >> total_shift) + output_zero_point
    if r < act_min:
        r = act_min
    elif r > act_max:
        r = act_max
    return np.uint8(r)


@njit(cache=True, parallel=True)
def _add_kernel(a, b, a_zero_point, a_scale, b_zero_point, b_scale, total_shift,
                output_zero_point, act_min, act_max, out):
    # a, b, out (size,) uint8
    size = a.shape[0]
    rounding = np.int64(1) << (total_shift - np.int64(1))
    n_chunks = (size + _CHUNK - 1) // _CHUNK
    for chunk in prange(n_chunks):
        stop = min(size, (chunk + 1) * _CHUNK)
        for i in range(chunk * _CHUNK, stop):
            out[i] = _add_one(a[i], b[i], a_zero_point, a_scale, b_zero_point, b_scale, rounding,
                              total_shift, output_zero_point, act_min, act_max)


# A table costs 65536 evaluations; use it once the tensor is several times larger.
_TABLE_MIN_SIZE = 1 << 19


@njit(cache=True, parallel=True)
def _add_table_kernel(a, b, a_zero_point, a_scale, b_zero_point, b_scale, total_shift,
                      output_zero_point, act_min, act_max, out):
    # same contract as _add_kernel; table[(av << 8) | bv] = the formula at (av, bv)
    rounding = np.int64(1) << (total_shift - np.int64(1))
    table = np.empty(256 * 256, dtype=np.uint8)
    for av in prange(256):
        for bv in range(256):
            table[(av << 8) | bv] = _add_one(av, bv, a_zero_point, a_scale, b_zero_point, b_scale, rounding,
                                             total_shift, output_zero_point, act_min, act_max)
    size = a.shape[0]
    n_chunks = (size + _CHUNK - 1) // _CHUNK
    for chunk in prange(n_chunks):
        stop = min(size, (chunk + 1) * _CHUNK)
        for i in range(chunk * _CHUNK, stop):
            out[i] = table[(np.int64(a[i]) << 8) | np.int64(b[i])]


def add_round_half_up(a, b, a_zero_point, a_multiplier, a_shift, b_zero_point,
                      b_multiplier, b_shift, output_zero_point, act_min, act_max):
    """Residual add; see :func:`kernels.reference.add_round_half_up` for the definition."""
    (a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
     output_zero_point, act_min, act_max) = checks.add_args(
        a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
        output_zero_point, act_min, act_max)
    smin = min(a_shift, b_shift)
    out = np.empty(a.shape, dtype=np.uint8)
    kernel = _add_table_kernel if a.size >= _TABLE_MIN_SIZE else _add_kernel
    kernel(a.reshape(-1), b.reshape(-1), a_zero_point, a_multiplier << (a_shift - smin),
                b_zero_point, b_multiplier << (b_shift - smin), 31 - smin,
                output_zero_point, act_min, act_max, out.reshape(-1))
    return out
