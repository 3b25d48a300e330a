"""Fixed-point requantization: the one home of "int32 accumulator x real multiplier".

A real multiplier ``m > 0`` is stored as ``(M, shift)`` (TFLite convention):
``M`` is an int32 in ``[2^30, 2^31)`` (a Q0.31 fraction in ``[0.5, 1)``) and
``shift`` is in ``[-31, 30]`` (positive = left), so that
``m ~= M * 2^shift / 2^31``.  ``m == 0`` (or a multiplier too small to
represent, ``shift < -31``) is stored as ``(0, 0)``.

Applying ``(M, shift)`` to an accumulator is *single rounding, ties toward
+infinity* ("round half up")::

    total_shift = 31 - shift                                  # in [1, 62]
    result      = (acc * M + 2^(total_shift - 1)) >> total_shift   # int64, arithmetic shift

i.e. ``result = floor(acc * M / 2^total_shift + 1/2)``.

Why it cannot overflow: the ops keep ``|acc| < 2^31 + 2^29`` (int32 bias plus
a bounded dot product, see ``kernels.checks``) and ``M < 2^31``, so
``|acc * M| < 2^62 + 2^60``; the rounding term is ``<= 2^61``; the sum stays
below ``2^63``.

Floats appear only in :func:`quantize_multiplier` / :func:`quantize_multipliers`,
which run once at export or model load, never in the hot loop.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Return ``(M, shift)`` with ``real ~= M * 2^shift / 2^31`` (TFLite's QuantizeMultiplier).

    ``M`` is the mantissa of ``real`` in ``[0.5, 1)`` rounded to 31 fraction
    bits, ties away from zero (as ``std::round``), computed exactly from the
    double.  Representable range: shifts below -31 give ``(0, 0)``; shifts
    above 30 saturate to ``(2^31 - 1, 30)``.
    """
    real = float(real)
    if not math.isfinite(real) or real < 0.0:
        raise ValueError(f"quantize_multiplier needs a finite real >= 0, got {real!r}")
    if real == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real)  # real = mantissa * 2^shift, mantissa in [0.5, 1)
    num, den = (mantissa * 2.0**31).as_integer_ratio()  # exact: den is a power of two
    q_fixed = (2 * num + den) // (2 * den)  # floor(x + 1/2) == round half away from zero for x > 0
    if q_fixed == 2**31:  # mantissa rounded up to 1.0
        q_fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return INT32_MAX, 30
    return int(q_fixed), int(shift)


def quantize_multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel :func:`quantize_multiplier`: returns ``(M, shift)`` as two int32 1-D arrays."""
    reals = np.asarray(reals, dtype=np.float64).reshape(-1)
    pairs = [quantize_multiplier(r) for r in reals]
    multipliers = np.array([p[0] for p in pairs], dtype=np.int32)
    shifts = np.array([p[1] for p in pairs], dtype=np.int32)
    return multipliers, shifts


def check_multiplier(multiplier, shift) -> None:
    """Raise ValueError unless every ``(M, shift)`` is ``(0, 0)`` or has ``M`` in ``[2^30, 2^31)``, ``shift`` in ``[-31, 30]``."""
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    zero = (m == 0) & (s == 0)
    ok = zero | ((m >= 2**30) & (m <= INT32_MAX) & (s >= -31) & (s <= 30))
    if not np.all(ok):
        raise ValueError(
            "output multiplier must be an int32 in [2^30, 2^31) with shift in [-31, 30] (or (0, 0))"
        )


def requantize_round_half_up(acc, multiplier, shift) -> np.ndarray:
    """``floor(acc * M / 2^(31 - shift) + 1/2)`` as int64, not saturated (NumPy, broadcasting).

    ``acc`` int64 with ``|acc| < 2^31 + 2^29``; ``multiplier``/``shift`` int32
    scalars or arrays broadcastable against ``acc`` (e.g. per channel, last axis).
    """
    acc = np.asarray(acc, dtype=np.int64)
    multiplier = np.asarray(multiplier, dtype=np.int64)
    total_shift = np.int64(31) - np.asarray(shift, dtype=np.int64)  # in [1, 62]
    rounding = np.left_shift(np.int64(1), total_shift - 1)  # <= 2^61
    return np.right_shift(acc * multiplier + rounding, total_shift)


def multiply_by_quantized_multiplier(x, multiplier, shift) -> np.ndarray:
    """Apply ``(M, shift)`` to int32 ``x``: single rounding, ties toward +infinity, saturated to int32.

    ``x`` int32 array (``|x| <= 2^31``), ``multiplier``/``shift`` int32 scalars
    or arrays broadcastable against ``x``.  Returns int32 of the broadcast shape.
    ``|x * M| < 2^62`` and the rounding term is ``<= 2^61``, so the int64 sum
    cannot overflow.
    """
    check_multiplier(multiplier, shift)
    result = requantize_round_half_up(np.asarray(x, dtype=np.int32), multiplier, shift)
    return np.clip(result, INT32_MIN, INT32_MAX).astype(np.int32)


@njit(cache=True)
def requantize_round_half_up_scalar(acc, multiplier, shift):
    """Numba scalar twin of :func:`requantize_round_half_up` (int64 in, int64 out, integer-only).

    Every Numba kernel requantizes through this function, so the rounding rule
    has one home.  Arguments are widened to int64 here; see the module
    docstring for the overflow bound.
    """
    total_shift = np.int64(31) - np.int64(shift)
    rounding = np.int64(1) << (total_shift - np.int64(1))
    return (np.int64(acc) * np.int64(multiplier) + rounding) >> total_shift


@njit(cache=True)
def multiply_by_quantized_multiplier_scalar(x, multiplier, shift):
    """Numba scalar twin of :func:`multiply_by_quantized_multiplier`: int64 result saturated to the int32 range."""
    result = requantize_round_half_up_scalar(x, multiplier, shift)
    if result > np.int64(2147483647):
        return np.int64(2147483647)
    if result < np.int64(-2147483648):
        return np.int64(-2147483648)
    return result
