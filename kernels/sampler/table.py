"""Table sampler of N_Z(0, sigma^2) with an explicit failure bin (the fast default).

Table (built once per ``sigma_sq = num/den``; float-free, see ``exact_weights``)
--------------------------------------------------------------------------------
Support ``k = -K .. K`` with ``K = ceil(14 sigma)``.  The exact pmf is
``p(k) = exp(-k^2 / (2 sigma^2)) / Z``, ``Z = sum_{j in Z} exp(-j^2 / (2 sigma^2))``.
Each outcome gets the 64-bit integer weight ``w(k) = floor(2^64 p(k))``
(rounded DOWN), and the leftover ``w_fail = 2^64 - sum_k w(k)`` is an explicit
FAIL outcome.  ``w_fail`` is at most the number of bins plus ``2^64`` times the
mass beyond ``14 sigma`` (< e^-98 < 2^-141), so ``P(FAIL) < (2K + 2) / 2^64``
per coordinate (below 4e-16 for sigma = 255).

The weights are computed with ``decimal`` at 60+ significant digits and a
rigorous relative error bound ``eps``: ``w(k) = floor(v (1 - eps))`` is accepted
only when it equals ``floor(v (1 + eps))``, so it is the exact floor of the
true value (otherwise the precision is raised; past 400 digits -- only for a
value within 10^-300 of an integer, such as ``2^64 p(0)`` at sigma^2 << 1 --
the lower end is kept, which is still rounded down).  The tests compare every
entry with an independent mpmath computation.

Alias table (Walker / Vose), exact integer construction
-------------------------------------------------------
``m = 2K + 2`` outcomes (values and FAIL) padded with zero-weight outcomes to
``n = 2^b`` columns; column capacity ``C = 2^(64 - b)``, so ``n C = 2^64``.
Vose's pairing (``threshold[s] = w[s]``, ``alias[s] = l``,
``w[l] -= C - w[s]``) is done on Python ints, so every column ends with
``threshold`` in ``[0, C]`` and the implied probability of each outcome,
``(sum of its thresholds + sum of C - threshold where it is the alias) / 2^64``,
is *exactly* ``w(k) / 2^64`` (the tests recompute it).

One draw takes one uniform 64-bit word ``u``::

    column = u >> (64 - b)            # uniform in [0, n)
    r      = u & (C - 1)              # uniform in [0, C), independent of column
    value  = primary[column] if r < threshold[column] else alias[column]

integer shifts, masks, one compare and two loads; FAIL is the value
``INT32_MIN`` (``kernels.sampler.params.FAIL``).  The uniform for coordinate
``j`` is lanes ``2 (j & 1)`` (low half) and ``2 (j & 1) + 1`` (high half) of
``Philox4x32-10(counter = (j >> 1, sample, image, stream << 24), key = seed)``.

Why counting a failed sample as "not the top class" keeps certification sound
-------------------------------------------------------------------------------
Let ``Z`` be one exact discrete-Gaussian coordinate.  Given ``Z = k``, output
``T = k`` with probability ``(w(k) / 2^64) / p(k) <= 1`` and ``T = FAIL``
otherwise.  Then ``P(T = k) = w(k) / 2^64`` for every ``k`` and
``P(T = FAIL) = w_fail / 2^64``: ``T`` has exactly the table sampler's law,
and ``T`` is either ``Z`` or FAIL.  Doing this independently for every
coordinate of every noisy sample couples the table noise ``T`` with exact
noise ``Z`` such that *a sample without failure has exactly the same noise as
the exact sample*.  Count a failed sample as "not the top class ``A``": then
sample by sample ``1[no FAIL and f(x + T) = A] <= 1[f(x + Z) = A]``, so the
table count ``n_A`` is pointwise at most the exact count, i.e. stochastically
dominated by ``Binomial(N, p_A)`` with ``p_A`` the exact smoothed
probability.  The one-sided Clopper-Pearson lower bound is nondecreasing in
``n_A``, hence ``P(pA_lower(n_A_table) > p_A) <= P(pA_lower(n_A_exact) > p_A)
<= alpha``: the certificate for the true discrete Gaussian keeps level alpha,
with no approximation term.  (The selection stream only picks the class ``A``;
failures there can only change which class is tested, never the level.)
The only assumption, as for every PRNG-based certificate, is that Philox's
output words are independent uniform bits.

Tables under 48 bits are never used: ``WEIGHT_BITS`` is 64.
"""
from __future__ import annotations

import decimal
from fractions import Fraction
from math import isqrt

import numpy as np
from numba import njit, prange

from kernels.sampler.params import FAIL, SPAN, as_sigma_sq, ceil_multiple_of_sigma, clip_add, failed_rows, unit_span as _span
from kernels.sampler.philox import philox4x32_10, philox4x32_10_np

WEIGHT_BITS = 64
TAIL_SIGMAS = 14
TOTAL = 1 << WEIGHT_BITS


# ------------------------------------------------------------------ building


def _weights_at_precision(sigma_sq: Fraction, digits: int, strict: bool = True):
    """Exact floors ``floor(2^64 p(k))`` for ``k = 0..K``, or None if ``digits`` were too few.

    With ``strict=False`` an undecided floor takes the lower end of the error
    interval: at most one unit below the exact floor, still a lower bound.
    """
    num, den = sigma_sq.numerator, sigma_sq.denominator
    K = ceil_multiple_of_sigma(sigma_sq, TAIL_SIGMAS)
    ctx = decimal.Context(prec=digits, Emin=-(10**9), Emax=10**9)
    # Sum Z out to J = ceil(c sigma) with c^2 / 2 > ln(10) (digits + 5): later terms
    # are below 10^-(digits + 5) relative to e_0 = 1; the rest is bounded below.
    c = isqrt(int(2 * 2.31 * (digits + 5))) + 1
    J = max(K, ceil_multiple_of_sigma(sigma_sq, c))
    two_num = decimal.Decimal(2 * num)
    e = []
    for k in range(J + 1):
        x = ctx.divide(decimal.Decimal(-k * k * den), two_num)  # |x| <= x_max below
        e.append(ctx.exp(x))
    Z = e[0]
    for k in range(1, J + 1):
        Z = ctx.add(Z, ctx.multiply(2, e[k]))
    # Tail: sum_{k > J} e_k <= e_J r / (1 - r), r = exp(-J / sigma^2) (since
    # k^2 - J^2 >= 2 J (k - J)), on both sides.
    r = ctx.exp(ctx.divide(decimal.Decimal(-J * den), decimal.Decimal(num)))
    tail = ctx.divide(ctx.multiply(2 * e[J], r), ctx.subtract(1, r))
    # Relative error of each computed v = 2^64 e_k / Z: the argument x is
    # rounded (relative 10^(1-P)/2, so exp is off by |x| 10^(1-P)), exp is
    # correctly rounded, the J + 1 additions, the product and the quotient add
    # 10^(1-P) each; (J + x_max + 1000) 10^(2-P) dominates all of it, plus the tail.
    x_max = -(-J * J * den // (2 * num))
    eps = ctx.add(
        ctx.multiply(J + x_max + 1000, ctx.power(decimal.Decimal(10), 2 - digits)),
        ctx.multiply(2, ctx.divide(tail, Z)),
    )
    lo_f = ctx.subtract(1, eps)
    hi_f = ctx.add(1, eps)
    scale = ctx.divide(decimal.Decimal(TOTAL), Z)
    floors = []
    for k in range(K + 1):
        v = ctx.multiply(e[k], scale)
        lo = int(ctx.multiply(v, lo_f).to_integral_value(rounding=decimal.ROUND_FLOOR))
        hi = int(ctx.multiply(v, hi_f).to_integral_value(rounding=decimal.ROUND_FLOOR))
        if lo != hi and strict:
            return None
        floors.append(lo)
    return floors


def exact_weights(sigma_sq) -> tuple[int, list[int], int]:
    """Return ``(K, w, w_fail)``: ``w[k + K] = floor(2^64 p(k))`` for ``|k| <= K``, Python ints.

    ``K = ceil(14 sigma)``; ``w_fail = 2^64 - sum(w)`` is the failure bin.
    """
    sigma_sq = as_sigma_sq(sigma_sq)
    digits = 60
    while True:
        # A floor within eps of an integer: prove it with more digits.  Only a
        # value within 10^-300 of an integer (e.g. 2^64 p(0) for sigma^2 << 1)
        # ends on the lower end, which keeps every weight a lower bound.
        half = _weights_at_precision(sigma_sq, digits, strict=digits < 400)
        if half is not None:
            break
        digits += 40
    K = len(half) - 1
    w = half[:0:-1] + half  # k = -K .. K (symmetric)
    w_fail = TOTAL - sum(w)
    if not 0 <= w_fail < TOTAL:
        raise AssertionError(f"weights sum to {sum(w)}, above 2^64")
    return K, w, w_fail


def build_alias(weights: list[int], values: list[int]):
    """Vose's alias table on Python ints for integer ``weights`` summing to exactly 2^64.

    Returns ``(threshold uint64 (n,), primary int32 (n,), alias int32 (n,), shift)``
    with ``n = 2^b``, ``shift = 64 - b``; column ``i``'s primary outcome is outcome
    ``i`` (zero-weight padding for ``i >= len(weights)``, its value FAIL, never drawn).
    """
    m = len(weights)
    if sum(weights) != TOTAL or any(w < 0 for w in weights):
        raise ValueError("alias weights must be nonnegative and sum to 2^64")
    b = max(1, (m - 1).bit_length())
    n = 1 << b
    C = TOTAL >> b
    w = list(weights) + [0] * (n - m)
    vals = list(values) + [FAIL] * (n - m)
    threshold = [0] * n
    alias = list(range(n))
    small = [i for i in range(n) if w[i] < C]
    large = [i for i in range(n) if w[i] >= C]
    while small and large:
        s = small.pop()
        l = large.pop()
        threshold[s] = w[s]
        alias[s] = l
        w[l] -= C - w[s]  # l gives column s the rest of its capacity; stays >= 0 since w[l] >= C
        (small if w[l] < C else large).append(l)
    for i in small + large:
        # Integer mass is conserved exactly, so every leftover holds exactly C.
        if w[i] != C:
            raise AssertionError("alias construction lost mass")
        threshold[i] = C
    return (
        np.array(threshold, dtype=np.uint64),
        np.array(vals, dtype=np.int32),
        np.array([vals[a] for a in alias], dtype=np.int32),
        64 - b,
    )


class AliasTable:
    """The built table of one ``sigma_sq``: arrays for the kernels plus the exact weights."""

    def __init__(self, sigma_sq):
        self.sigma_sq = as_sigma_sq(sigma_sq)
        self.K, self.weights, self.fail_weight = exact_weights(self.sigma_sq)
        values = list(range(-self.K, self.K + 1)) + [FAIL]
        self.threshold, self.primary, self.alias, self.shift = build_alias(
            self.weights + [self.fail_weight], values
        )
        self.shift_u64 = np.uint64(self.shift)
        self.rmask_u64 = np.uint64((1 << self.shift) - 1)

    def implied_masses(self) -> dict[int, int]:
        """Exact probability (times 2^64) of every value the table can return, from the arrays."""
        C = 1 << self.shift
        mass: dict[int, int] = {}
        for t, p, a in zip(self.threshold.tolist(), self.primary.tolist(), self.alias.tolist()):
            mass[p] = mass.get(p, 0) + t
            mass[a] = mass.get(a, 0) + C - t
        return {v: m for v, m in mass.items() if m}


# ----------------------------------------------------------------- reference


def table_lookup_np(table: AliasTable, u: np.ndarray) -> np.ndarray:
    """Reference lookup: uniform uint64 words ``u`` -> int32 values (FAIL = INT32_MIN)."""
    u = np.asarray(u, dtype=np.uint64)
    col = (u >> table.shift_u64).astype(np.intp)
    r = u & table.rmask_u64
    return np.where(r < table.threshold[col], table.primary[col], table.alias[col]).astype(np.int32)


def table_uniforms_np(key, c3, image_index, samples: np.ndarray, d: int) -> np.ndarray:
    """Reference uniforms: uint64 (len(samples), d), word for (sample, coordinate j)."""
    k0, k1 = key
    pairs = np.arange((d + 1) // 2, dtype=np.uint64)
    s = np.asarray(samples, dtype=np.uint64)[:, None]
    w = philox4x32_10_np(pairs[None, :], s, image_index, c3, k0, k1)  # (4, B, pairs)
    lo = np.stack([w[0], w[2]], axis=-1).reshape(len(samples), -1)  # coordinate 2p: lanes 0, 1
    hi = np.stack([w[1], w[3]], axis=-1).reshape(len(samples), -1)  # coordinate 2p+1: lanes 2, 3
    return ((hi << np.uint64(32)) | lo)[:, :d]


def table_fill_np(table: AliasTable, key, c3, image_index, sample_start, B, d):
    """Reference fill: int32 (B, d) noise (FAIL = INT32_MIN) and uint8 (B,) failure flags."""
    samples = np.arange(sample_start, sample_start + B, dtype=np.uint64)
    n = table_lookup_np(table, table_uniforms_np(key, c3, image_index, samples, d))
    return n, (n == FAIL).any(axis=1).astype(np.uint8)


# --------------------------------------------------------------------- numba

_U32 = np.uint64(32)
_FAIL32 = np.int32(FAIL)


@njit(cache=True, inline="always")
def _lookup(u, threshold, primary, alias, shift, rmask):
    col = u >> shift
    if (u & rmask) < threshold[col]:
        return primary[col]
    return alias[col]


@njit(cache=True, inline="always")
def _uniforms(k0, k1, c3, image_index, s, p0, u):
    """u uint64 (2 * pairs,) <- the uniform words of sample ``s``, coordinates 2*p0 .. 2*p0 + 2*pairs - 1.

    A straight-line loop over counters: LLVM vectorizes Philox across coordinates
    (AVX2 / AVX-512 32 x 32 -> 64 bit multiplies), the same bits as the scalar code.
    """
    for p in range(u.shape[0] // 2):
        w0, w1, w2, w3 = philox4x32_10(p0 + np.uint64(p), s, image_index, c3, k0, k1)
        u[2 * p] = (w1 << _U32) | w0
        u[2 * p + 1] = (w3 << _U32) | w2


@njit(cache=True, parallel=True)
def table_fill_numba(k0, k1, c3, image_index, sample_start, threshold, primary, alias, shift, rmask, out, failed):
    """Numba fill: ``out`` int32 (B, d) gets noise for samples ``sample_start + i``; ``failed`` uint8 (B,).

    ``k0, k1, c3, image_index, sample_start, shift, rmask``: uint64 scalars.
    """
    B, d = out.shape
    spans = max(1, (d + SPAN - 1) // SPAN)
    bad = np.zeros((B, spans), dtype=np.uint8)
    for task in prange(B * spans):
        i, k, j0, j1 = _span(task, spans, d)
        u = np.empty(2 * ((j1 - j0 + 1) // 2), dtype=np.uint64)
        _uniforms(k0, k1, c3, image_index, sample_start + np.uint64(i), np.uint64(j0 // 2), u)
        hit = False
        for j in range(j0, j1):
            v = _lookup(u[j - j0], threshold, primary, alias, shift, rmask)
            hit |= v == _FAIL32
            out[i, j] = v
        bad[i, k] = np.uint8(1) if hit else np.uint8(0)
    failed_rows(bad, failed)


@njit(cache=True, parallel=True)
def table_add_noise_clip_numba(k0, k1, c3, image_index, sample_start, x, threshold, primary, alias, shift, rmask, out, failed):
    """Numba fused noise: ``out[i, j] = clip(x[j] + n[i, j], 0, 255)`` uint8; a FAIL coordinate gets 0."""
    B, d = out.shape
    spans = max(1, (d + SPAN - 1) // SPAN)
    bad = np.zeros((B, spans), dtype=np.uint8)
    for task in prange(B * spans):
        i, k, j0, j1 = _span(task, spans, d)
        u = np.empty(2 * ((j1 - j0 + 1) // 2), dtype=np.uint64)
        _uniforms(k0, k1, c3, image_index, sample_start + np.uint64(i), np.uint64(j0 // 2), u)
        hit = False
        for j in range(j0, j1):
            v = _lookup(u[j - j0], threshold, primary, alias, shift, rmask)
            hit |= v == _FAIL32
            out[i, j] = clip_add(x[j], v)
        bad[i, k] = np.uint8(1) if hit else np.uint8(0)
    failed_rows(bad, failed)
