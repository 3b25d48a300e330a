"""Exact discrete Gaussian sampler of Canonne, Kamath, Steinke (NeurIPS 2020), integers only.

The specification, the test oracle and a user option (``method="cks"``).
Algorithms 1-3 of the paper, for ``sigma^2 = num / den`` (reduced, ``den <= 2^20``):

* ``bernoulli_exp(A, B)`` -- Bernoulli(exp(-gamma)) for ``gamma = A / B >= 0``.
  For ``gamma <= 1``: ``K = 1``; repeat {draw Bernoulli(gamma / K); stop on 0;
  ``K += 1``}; return ``K`` odd.  Bernoulli(gamma / K) is drawn as the product
  of Bernoulli(A / B) (``uniform(B) < A``) and Bernoulli(1 / K)
  (``uniform(K) == 0``): the same law, and ``B * K`` is never formed, so it
  cannot overflow.  For ``gamma > 1``: ``floor(gamma)`` Bernoulli(exp(-1))
  draws (stop at the first 0), then Bernoulli(exp(-(gamma - floor gamma))).
* ``discrete_laplace(t)`` -- P(Y = y) proportional to exp(-|y| / t), integer
  ``t >= 1``: ``U = uniform(t)``; reject unless Bernoulli(exp(-U / t));
  ``V`` = number of Bernoulli(exp(-1)) successes before the first failure;
  ``X = U + t V``; sign bit ``S = uniform(2)``; reject ``S = 1, X = 0``;
  return ``(1 - 2 S) X``.
* ``discrete_gaussian`` -- ``t = floor(sigma) + 1``; repeat {``Y`` =
  discrete_laplace(t); accept with Bernoulli(exp(-gamma)),
  ``gamma = (|Y| - sigma^2 / t)^2 / (2 sigma^2) = A / B`` with
  ``A = (den t |Y| - num)^2`` and ``B = 2 num den t^2``}.

Integer ranges (all int64; checked once in ``CksParams``):

* ``num <= 2^24 den <= 2^44``; ``t <= 4097``; ``B = 2 num den t^2 <= 2^62``
  (checked), so every uniform range ``m`` (``t``, ``B``, ``K``, 2) is in ``[1, 2^62]``.
* ``Y_MAX = min((S - num) // (den t), 2^30)`` with ``S = isqrt(2^63 - 1)``:
  for ``|Y| <= Y_MAX``, ``-num <= den t |Y| - num <= S`` so ``A <= S^2 < 2^63``.
* Candidates with ``|Y| > Y_MAX`` are **rejected** (the Laplace draw stops as
  soon as ``V > Y_MAX // t``).  Rejecting them makes the output exactly the
  discrete Gaussian conditioned on ``|k| <= Y_MAX``, whose total-variation
  distance to N_Z(0, sigma^2) is ``P(|k| > Y_MAX) <= 2 exp(-Y_MAX^2 / (2 sigma^2))``.
  ``CksParams`` requires ``Y_MAX >= 64 sigma``, which puts it below
  ``2 e^-2048 < 2^-2900``; for the grid sigmas it is far smaller still:
  sigma^2 = 65025/16 (t = 64) and 65025 (t = 256) both have ``Y_MAX`` about
  46500 sigma, and every ``sigma <= 1024`` with ``den = 1`` has
  ``Y_MAX >= 2890 sigma``, i.e. a bound below ``e^-4000000`` (well under
  the ``e^-40000`` asked for).  Accepted: ``sigma^2 <= S / (64 den)``, e.g. any
  pixel-scale sigma <= 1.35 written with two decimals (``den <= 400``).
* ``K`` of Algorithm 1 reaches ``k`` with probability ``gamma^(k-1)/(k-1)! <= 1/(k-1)!``;
  ``V`` reaches ``v`` with probability ``e^-v``; ``floor(gamma)`` loops stop at the first
  failure.  ``X = U + t V <= t (Y_MAX // t + 1) < 2^31``.

Uniform integers in ``[0, m)`` come from 32-bit Philox words by rejection, no
modulo bias: for ``m <= 2^32`` one word ``w`` is accepted iff
``w >= (2^32 - m) mod m`` and gives ``w mod m``; for larger ``m`` two words
(low first) form a 64-bit ``w``, accepted iff ``w >= (2^64 - m) mod m``;
``m = 1`` returns 0 and consumes nothing.

Random words: output ``(coordinate j, sample s, image i, stream)`` owns the
Philox counters ``(j, s, i, stream << 24 | block)``, ``block = 0, 1, ...``,
four words per block used in order, so each output is a pure function of its
indices.  The mean is about a dozen words per output (measured by the tests);
``2^24`` blocks (``2^26`` words) per output are available.  Running out is
reported as FAIL (sound by the same coupling as the table sampler's failure
bin: it can only turn an output into FAIL); it needs a run of tens of millions
of consecutive rejections and never happens in practice.

``discrete_gaussian_py`` (pure Python, Python ints) is the reference; the
Numba kernels return the same bits (tests).  Every Numba function here is
integer-only (``kernels.ircheck``).
"""
from __future__ import annotations

from math import isqrt

import numpy as np
from numba import njit, prange

from kernels.sampler.params import FAIL, SPAN, as_sigma_sq, clip_add, failed_rows, floor_sigma, unit_span as _span
from kernels.sampler.philox import BLOCK_BITS, philox4x32_10, philox4x32_10_py

S_MAX = isqrt((1 << 63) - 1)  # 3037000499
Y_CAP = 1 << 30
MIN_SIGMAS = 64  # 64^2 / 2 = 2048
BLOCK_LIMIT = 1 << BLOCK_BITS
REJECT = -(1 << 62)  # internal: the Laplace candidate exceeded Y_MAX


class CksParams:
    """Integer parameters of the CKS sampler for one ``sigma_sq``; raises ValueError if out of range."""

    def __init__(self, sigma_sq):
        self.sigma_sq = as_sigma_sq(sigma_sq)
        num, den = self.sigma_sq.numerator, self.sigma_sq.denominator
        t = floor_sigma(self.sigma_sq) + 1
        b_acc = 2 * num * den * t * t
        if b_acc > (1 << 62):
            raise ValueError(f"sigma_sq = {self.sigma_sq} is too large for the int64 CKS sampler (2 num den t^2 > 2^62)")
        y_max = min((S_MAX - num) // (den * t), Y_CAP)
        if y_max * y_max * den < MIN_SIGMAS * MIN_SIGMAS * num:
            raise ValueError(
                f"sigma_sq = {self.sigma_sq} is too large for the int64 CKS sampler (overflow cutoff below 64 sigma)"
            )
        self.num, self.den, self.t, self.y_max, self.b_acc = num, den, t, y_max, b_acc


# ----------------------------------------------------------------- reference


class _Exhausted(Exception):
    pass


class WordStream:
    """The 32-bit Philox words owned by one output, in order (pure Python)."""

    def __init__(self, key, coordinate, sample, image, stream, block_limit=BLOCK_LIMIT):
        self.key = key
        self.c012 = (coordinate, sample, image)
        self.c3 = stream << BLOCK_BITS
        self.block = 0
        self.block_limit = block_limit
        self.buf: list[int] = []
        self.used = 0

    def next32(self) -> int:
        if not self.buf:
            if self.block >= self.block_limit:
                raise _Exhausted
            self.buf = list(philox4x32_10_py((*self.c012, self.c3 | self.block), self.key))
            self.block += 1
        self.used += 1
        return self.buf.pop(0)

    def uniform(self, m: int) -> int:
        """Uniform integer in ``[0, m)``, ``1 <= m <= 2^62``, by rejection (no modulo bias)."""
        if m == 1:
            return 0
        if m <= 1 << 32:
            threshold = ((1 << 32) - m) % m
            while True:
                w = self.next32()
                if w >= threshold:
                    return w % m
        threshold = ((1 << 64) - m) % m
        while True:
            lo = self.next32()
            w = (self.next32() << 32) | lo
            if w >= threshold:
                return w % m


def bernoulli_exp_py(ws: WordStream, A: int, B: int) -> bool:
    """Bernoulli(exp(-A / B)) for integers ``A >= 0``, ``B >= 1`` (CKS Algorithm 1)."""
    if A > B:
        q, r = divmod(A, B)
        for _ in range(q):
            if not bernoulli_exp_py(ws, 1, 1):
                return False
        return bernoulli_exp_py(ws, r, B)
    if A == 0:
        return True
    K = 1
    while True:
        if A != B and ws.uniform(B) >= A:  # Bernoulli(A / B) failed
            break
        if ws.uniform(K) != 0:  # Bernoulli(1 / K) failed (K = 1 never fails, no word)
            break
        K += 1
    return K % 2 == 1


def discrete_laplace_py(ws: WordStream, t: int, y_max: int) -> int:
    """P(Y = y) ~ exp(-|y| / t) (CKS Algorithm 2, s = 1); REJECT if ``|Y| > y_max``."""
    v_max = y_max // t
    while True:
        U = ws.uniform(t)
        if not bernoulli_exp_py(ws, U, t):
            continue
        V = 0
        while bernoulli_exp_py(ws, 1, 1):
            V += 1
            if V > v_max:
                return REJECT
        X = U + t * V
        sign = ws.uniform(2)
        if sign == 1 and X == 0:
            continue
        if X > y_max:
            return REJECT
        return -X if sign == 1 else X


def discrete_gaussian_one_py(ws: WordStream, p: CksParams) -> int:
    """One N_Z(0, num/den) value (CKS Algorithm 3), or FAIL if the words ran out."""
    try:
        while True:
            Y = discrete_laplace_py(ws, p.t, p.y_max)
            if Y == REJECT:
                continue
            a = p.den * p.t * abs(Y) - p.num
            if bernoulli_exp_py(ws, a * a, p.b_acc):
                return Y
    except _Exhausted:
        return FAIL


def discrete_gaussian_py(p: CksParams, key, stream, image_index, samples, d, block_limit=BLOCK_LIMIT):
    """Reference fill: int32 (len(samples), d) for the given sample indices, coordinates ``0..d-1``."""
    out = np.empty((len(samples), d), dtype=np.int32)
    for r, s in enumerate(samples):
        for j in range(d):
            out[r, j] = discrete_gaussian_one_py(WordStream(key, j, int(s), image_index, stream, block_limit), p)
    return out


# --------------------------------------------------------------------- numba
# State of one output's word stream, a uint64 array:
_POS, _BLOCK, _EXH, _C0, _C1, _C2, _C3, _K0, _K1, _LIMIT = 4, 5, 6, 7, 8, 9, 10, 11, 12, 13
STATE_SIZE = 14
_U0 = np.uint64(0)
_U1 = np.uint64(1)
_U4 = np.uint64(4)
_U32 = np.uint64(32)
_TWO32 = np.uint64(1 << 32)
_I0 = np.int64(0)
_I1 = np.int64(1)


@njit(cache=True)
def _next32(st):
    pos = st[_POS]
    if pos == _U4:
        block = st[_BLOCK]
        if block >= st[_LIMIT]:
            st[_EXH] = _U1
            return _U0
        w0, w1, w2, w3 = philox4x32_10(st[_C0], st[_C1], st[_C2], st[_C3] | block, st[_K0], st[_K1])
        st[0] = w0
        st[1] = w1
        st[2] = w2
        st[3] = w3
        st[_BLOCK] = block + _U1
        pos = _U0
    st[_POS] = pos + _U1
    return st[pos]


@njit(cache=True)
def _uniform(st, m):
    """Uniform int64 in [0, m) for int64 1 <= m <= 2^62; garbage once st[_EXH] is set."""
    if m == _I1:
        return _I0
    mu = np.uint64(m)
    if mu <= _TWO32:
        threshold = (_TWO32 - mu) % mu
        while st[_EXH] == _U0:
            w = _next32(st)
            if w >= threshold:
                return np.int64(w % mu)
        return _I0
    threshold = (_U0 - mu) % mu  # (2^64 - m) mod m, uint64 wrap-around
    while st[_EXH] == _U0:
        lo = _next32(st)
        w = (_next32(st) << _U32) | lo
        if w >= threshold:
            return np.int64(w % mu)
    return _I0


@njit(cache=True)
def _bernoulli_exp_le1(st, A, B):
    if A == _I0:
        return True
    K = _I1
    while st[_EXH] == _U0:
        if A != B and _uniform(st, B) >= A:
            break
        if _uniform(st, K) != _I0:
            break
        K += _I1
    return (K & _I1) == _I1


@njit(cache=True)
def _bernoulli_exp(st, A, B):
    if A > B:
        q = A // B
        for _ in range(q):
            if not _bernoulli_exp_le1(st, _I1, _I1) or st[_EXH] != _U0:
                return False
        return _bernoulli_exp_le1(st, A - q * B, B)
    return _bernoulli_exp_le1(st, A, B)


@njit(cache=True)
def _discrete_laplace(st, t, y_max):
    v_max = y_max // t
    while st[_EXH] == _U0:
        U = _uniform(st, t)
        if not _bernoulli_exp(st, U, t):
            continue
        V = _I0
        over = False
        while True:
            b = _bernoulli_exp_le1(st, _I1, _I1)
            if st[_EXH] != _U0 or not b:
                break
            V += _I1
            if V > v_max:
                over = True
                break
        if st[_EXH] != _U0:
            break
        if over:
            return np.int64(REJECT)
        X = U + t * V
        sign = _uniform(st, np.int64(2))
        if sign == _I1 and X == _I0:
            continue
        if X > y_max:
            return np.int64(REJECT)
        if sign == _I1:
            return -X
        return X
    return np.int64(REJECT)


@njit(cache=True)
def _discrete_gaussian(st, num, den, t, y_max, b_acc):
    """One value as int32; FAIL if the output's words ran out."""
    while st[_EXH] == _U0:
        Y = _discrete_laplace(st, t, y_max)
        if st[_EXH] != _U0:
            break
        if Y == np.int64(REJECT):
            continue
        a = den * t * abs(Y) - num  # in [-num, S_MAX]: A = a^2 < 2^63
        accept = _bernoulli_exp(st, a * a, b_acc)
        if st[_EXH] != _U0:
            break
        if accept:
            return np.int32(Y)
    return np.int32(FAIL)


@njit(cache=True, inline="always")
def _start(st, j, s, image_index, c3, k0, k1, block_limit):
    st[_POS] = _U4
    st[_BLOCK] = _U0
    st[_EXH] = _U0
    st[_C0] = j
    st[_C1] = s
    st[_C2] = image_index
    st[_C3] = c3
    st[_K0] = k0
    st[_K1] = k1
    st[_LIMIT] = block_limit


@njit(cache=True, parallel=True)
def cks_fill_numba(k0, k1, c3, image_index, sample_start, num, den, t, y_max, b_acc, block_limit, out, failed):
    """Numba fill: ``out`` int32 (B, d), ``failed`` uint8 (B,).

    uint64: ``k0, k1, c3 (= stream << 24), image_index, sample_start, block_limit``;
    int64: ``num, den, t, y_max, b_acc``.
    """
    B, d = out.shape
    spans = max(1, (d + SPAN - 1) // SPAN)  # units of one sample x at most SPAN coordinates (params.py)
    bad = np.zeros((B, spans), dtype=np.uint8)
    for task in prange(B * spans):
        i, k, j0, j1 = _span(task, spans, d)
        st = np.empty(STATE_SIZE, dtype=np.uint64)
        s = sample_start + np.uint64(i)
        hit = False
        for j in range(j0, j1):
            _start(st, np.uint64(j), s, image_index, c3, k0, k1, block_limit)
            v = _discrete_gaussian(st, num, den, t, y_max, b_acc)
            hit |= v == np.int32(FAIL)
            out[i, j] = v
        bad[i, k] = np.uint8(1) if hit else np.uint8(0)
    failed_rows(bad, failed)


@njit(cache=True, parallel=True)
def cks_add_noise_clip_numba(k0, k1, c3, image_index, sample_start, x, num, den, t, y_max, b_acc, block_limit, out, failed):
    """Numba fused noise: ``out[i, j] = clip(x[j] + n[i, j], 0, 255)`` uint8 (a FAIL coordinate gets 0)."""
    B, d = out.shape
    spans = max(1, (d + SPAN - 1) // SPAN)  # units of one sample x at most SPAN coordinates (params.py)
    bad = np.zeros((B, spans), dtype=np.uint8)
    for task in prange(B * spans):
        i, k, j0, j1 = _span(task, spans, d)
        st = np.empty(STATE_SIZE, dtype=np.uint64)
        s = sample_start + np.uint64(i)
        hit = False
        for j in range(j0, j1):
            _start(st, np.uint64(j), s, image_index, c3, k0, k1, block_limit)
            v = _discrete_gaussian(st, num, den, t, y_max, b_acc)
            hit |= v == np.int32(FAIL)
            out[i, j] = clip_add(x[j], v)
        bad[i, k] = np.uint8(1) if hit else np.uint8(0)
    failed_rows(bad, failed)


@njit(cache=True)
def bernoulli_exp_many(k0, k1, A, B, out):
    """Test/benchmark helper: ``out[i]`` uint8 = Bernoulli(exp(-A/B)) draw ``i`` (int64 ``A >= 0``, ``B >= 1``).

    Draw ``i`` owns the word stream of coordinate ``i``, sample 0, image 0, stream 0.
    """
    st = np.empty(STATE_SIZE, dtype=np.uint64)
    for i in range(out.shape[0]):
        _start(st, np.uint64(i), _U0, _U0, _U0, k0, k1, np.uint64(BLOCK_LIMIT))
        out[i] = np.uint8(1) if _bernoulli_exp(st, A, B) else np.uint8(0)


@njit(cache=True)
def discrete_laplace_many(k0, k1, t, y_max, out):
    """Test/benchmark helper: ``out[i]`` int64 = discrete Laplace(t) draw ``i`` (REJECT if above ``y_max``)."""
    st = np.empty(STATE_SIZE, dtype=np.uint64)
    for i in range(out.shape[0]):
        _start(st, np.uint64(i), _U0, _U0, _U0, k0, k1, np.uint64(BLOCK_LIMIT))
        out[i] = _discrete_laplace(st, t, y_max)
