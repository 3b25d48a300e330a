"""Shared parameters of the samplers: sigma^2 as an exact rational, FAIL, index limits.

``sigma_sq = num / den`` is always a reduced positive ``fractions.Fraction``.
Bad arguments raise ``ValueError`` with a one-line message (``kernels`` does
not import ``intengine``; the engine turns them into ``IntengineError``).
"""
from __future__ import annotations

from fractions import Fraction
from math import isqrt

import numpy as np
from numba import njit

FAIL = int(np.iinfo(np.int32).min)
"""Raw value of the table sampler's failure outcome (``INT32_MIN``); never a valid noise value."""

SIGMA_SQ_MAX = 1 << 24
"""sigma^2 <= 2^24 (sigma <= 4096 grid units; the pixel grid needs sigma <= 255)."""

DEN_MAX = 1 << 20
"""Denominator bound: keeps every CKS intermediate in int64 (see ``kernels.sampler.cks``)."""


def as_sigma_sq(sigma_sq) -> Fraction:
    """``Fraction`` or ``(num, den)`` -> validated ``Fraction`` with ``0 < sigma_sq <= 2^24``."""
    if isinstance(sigma_sq, tuple) and len(sigma_sq) == 2:
        num, den = sigma_sq
        for name, v in (("numerator", num), ("denominator", den)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"sigma_sq {name} must be an integer, got {v!r}")
        if int(den) <= 0:
            raise ValueError(f"sigma_sq denominator must be positive, got {den}")
        value = Fraction(int(num), int(den))
    elif isinstance(sigma_sq, Fraction):
        value = sigma_sq
    elif isinstance(sigma_sq, (int, np.integer)) and not isinstance(sigma_sq, (bool, np.bool_)):
        value = Fraction(int(sigma_sq))
    else:
        raise ValueError(
            f"sigma_sq must be a fractions.Fraction or a (num, den) pair of integers, got {sigma_sq!r}"
        )
    if value <= 0:
        raise ValueError(f"sigma_sq must be positive, got {value}")
    if value > SIGMA_SQ_MAX:
        raise ValueError(f"sigma_sq must be at most 2^24 (sigma <= 4096 grid units), got {value}")
    if value.denominator > DEN_MAX:
        raise ValueError(f"sigma_sq denominator must be at most 2^20, got {value.denominator}")
    return value


def sigma_sq_from_sigma(sigma) -> Fraction:
    """Pixel-scale sigma (float or decimal string) -> ``(Fraction(str(sigma)) * 255) ** 2``.

    ``0.25 -> 65025/16``.  ``str`` of a float is its shortest round-trip decimal,
    so ``0.12`` becomes exactly ``12/100``, not the binary double.
    """
    if isinstance(sigma, (bool, np.bool_)):
        raise ValueError(f"sigma must be a number or a decimal string, got {sigma!r}")
    try:
        value = Fraction(str(sigma))
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"sigma must be a number or a decimal string, got {sigma!r}") from None
    if value <= 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    return as_sigma_sq((value * 255) ** 2)


def floor_sigma(sigma_sq: Fraction) -> int:
    """``floor(sqrt(num/den))`` exactly: ``isqrt(floor(x)) == floor(sqrt(x))`` for real ``x >= 0``."""
    return isqrt(sigma_sq.numerator // sigma_sq.denominator)


def ceil_multiple_of_sigma(sigma_sq: Fraction, c: int) -> int:
    """Smallest integer ``K >= c * sigma``, i.e. ``K^2 * den >= c^2 * num``."""
    num, den = sigma_sq.numerator, sigma_sq.denominator
    k = isqrt((c * c * num) // den)
    while k * k * den < c * c * num:
        k += 1
    return k


@njit(cache=True, inline="always")
def clip_add(x, v):
    """``clip(x + v, 0, 255)`` as uint8 for a pixel ``0 <= x <= 255`` and noise ``v`` (int32; FAIL clips to 0).

    ``x + v`` is formed in int64, so even ``v = INT32_MIN`` (FAIL) cannot overflow.
    """
    y = np.int64(x) + np.int64(v)
    y = max(y, np.int64(0))
    y = min(y, np.int64(255))
    return np.uint8(y)


# Work units of one sample x at most SPAN coordinates (even: a unit starts on a Philox pair).
# A one-sample call with millions of coordinates spreads over every thread like a (B, d) one,
# each unit's uniform buffer stays in L1/L2, and since noise is keyed by (coordinate, sample),
# the split changes no bit.
SPAN = 4096


@njit(cache=True, inline="always")
def unit_span(task, spans, d):
    """(sample i, unit k, first coordinate, end coordinate) of work unit ``task``."""
    i = task // spans
    j0 = (task - i * spans) * SPAN
    return i, task - i * spans, j0, min(d, j0 + SPAN)


@njit(cache=True)
def failed_rows(bad, failed):
    """failed[i] = 1 if any unit of sample i hit the failure bin (bad: uint8 (B, spans))."""
    for i in range(failed.shape[0]):
        failed[i] = np.uint8(0)
        for k in range(bad.shape[1]):
            failed[i] |= bad[i, k]
