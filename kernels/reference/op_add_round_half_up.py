"""add_round_half_up: residual add of two quantized tensors with different scales (the specification)."""
from __future__ import annotations

import numpy as np

from kernels import checks


def add_round_half_up(a, b, a_zero_point, a_multiplier, a_shift, b_zero_point,
                      b_multiplier, b_shift, output_zero_point, act_min, act_max, out=None):
    """Elementwise ``a + b`` of two uint8 tensors of the same shape, requantized once.

    ``(a_multiplier, a_shift)`` quantizes ``s_a / s_out`` and
    ``(b_multiplier, b_shift)`` quantizes ``s_b / s_out`` (see
    :func:`kernels.fixedpoint.quantize_multiplier`).  With
    ``smin = min(a_shift, b_shift)`` and ``|a_shift - b_shift| <= 20`` (checked)::

        v   = (a - a_zp) * Ma * 2^(a_shift - smin) + (b - b_zp) * Mb * 2^(b_shift - smin)
        out = clamp(((v + 2^(30 - smin)) >> (31 - smin)) + output_zero_point, act_min, act_max)

    that is ``out = RHU(s_a/s_out * (a - a_zp) + s_b/s_out * (b - b_zp)) + zp`` computed
    exactly with the quantized multipliers: one rounding, ties toward +infinity.
    Returns uint8 with the shape of ``a`` (written into ``out`` when given:
    uint8, that shape, C-contiguous, not overlapping ``a`` or ``b``).

    Overflow: ``|a - a_zp| < 2^8``, ``M < 2^31`` and the relative shift is at most
    20, so each term is below 2^59 and ``|v| < 2^60``; the rounding term is at most
    2^61, so int64 suffices.
    """
    (a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
     output_zero_point, act_min, act_max) = checks.add_args(
        a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
        output_zero_point, act_min, act_max)
    smin = min(a_shift, b_shift)
    a_scale = np.int64(a_multiplier) << np.int64(a_shift - smin)  # < 2^51
    b_scale = np.int64(b_multiplier) << np.int64(b_shift - smin)
    v = (a.astype(np.int64) - a_zero_point) * a_scale + (b.astype(np.int64) - b_zero_point) * b_scale
    total_shift = np.int64(31 - smin)  # in [1, 62]
    out = checks.output_buffer(out, a.shape, a, b)
    r = ((v + (np.int64(1) << (total_shift - 1))) >> total_shift) + output_zero_point
    out[...] = np.clip(r, act_min, act_max)
    return out
