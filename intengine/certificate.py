"""Clopper-Pearson bounds, the certified-radius rule and int32 certificate tables.

The rule (Cohen, Rosenfeld, Kolter 2019, CERTIFY, one-sided form; see docs/certificate.md):

* ``pA_lower`` = one-sided Clopper-Pearson lower bound on P[f(x + Z) = A] at level alpha
  from ``nA`` successes out of ``N`` estimation samples;
* ABSTAIN when ``pA_lower <= 1/2``; otherwise the radius is ``R = sigma * PhiInverse(pA_lower)``
  in pixel scale, ``R_int = sigma_int * PhiInverse(pA_lower)`` in integer input units.

On the hot path the certificate is a lookup in an int32 table of length ``N + 1``:
``table[nA]`` is the largest integer ``m`` with ``m < R_int(nA)^2`` (``-1`` = abstain); an
integer perturbation ``delta`` is certified iff ``|delta|^2 <= table[nA]``.  The table is
built in float64 here, with every rounding toward a smaller radius, and sampled entries are
re-checked with an exact binomial tail in mpmath.  Floats are allowed here (table building,
reporting); the Numba helpers at the bottom are the integer-only hot-path part.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
from numba import njit

from intengine.errors import IntengineError

TABLE_VERSION = 1
# Relative safety margin applied to pA_lower before PhiInverse and to R^2 before rounding.
# float64 evaluation errors of beta.ppf / ndtri / products are a few ulps (~1e-15 relative),
# far inside this margin; the mpmath check below confirms it entry by entry on a sample.
MARGIN = 1e-12
INT32_MAX = 2**31 - 1
# alpha range in which the construction is verified sound (tests/test_hostile_certificate.py and
# docs/certificate.md: every entry by scipy's betainc, the entries nearest nA = N in 50-digit mpmath).
# Below ~1e-100 scipy's beta.ppf and betainc both lose accuracy near nA = N (alpha = 1e-300, N = 10^5:
# 33 of the top 40 entries unsound); alpha > 1/2 certifies nothing useful.
ALPHA_MIN = 1e-12
ALPHA_MAX = 0.5
# --n / --n0 bound: the table and its float64 build temporaries take ~90 bytes per entry (0.9 GB at
# 10^7), the build ~5 us per entry (minutes at 10^7), and 10^7 noisy samples already take minutes
# per image; all counts stay far inside int32/int64 (docs/certificate.md, "Allowed ranges").
MAX_N = 10**7
MAX_SIGMA = 4096 / 255  # kernels.sampler accepts sigma_int^2 <= 2^24
# Relative slack when re-checking a table in float64 (scipy's betainc/ndtr are accurate to ~1e-14
# relative in the allowed range, see above).
CHECK_SLACK = 1e-9

_memory_cache: dict[tuple, np.ndarray] = {}
_predict_cache: dict[tuple, np.ndarray] = {}


# ---------------------------------------------------------------------------
# Scalar helpers (float, build time / reporting)
# ---------------------------------------------------------------------------

def check_options(*, sigma=None, alpha=None, n0=None, n=None) -> None:
    """Raise IntengineError for sigma <= 0, alpha outside [ALPHA_MIN, ALPHA_MAX], n0 or n outside [1, MAX_N]."""
    if sigma is not None:
        if not (math.isfinite(float(sigma)) and float(sigma) > 0):
            raise IntengineError(f"sigma must be a finite number > 0, got {sigma}")
        if float(sigma) > MAX_SIGMA:
            raise IntengineError(f"sigma must be at most {MAX_SIGMA:.4g} (4096 grid units, the samplers' bound), "
                                 f"got {float(sigma):.4g}")
    if alpha is not None:
        if not (math.isfinite(float(alpha)) and ALPHA_MIN <= alpha <= ALPHA_MAX):
            raise IntengineError(f"alpha must be in [{ALPHA_MIN:g}, {ALPHA_MAX:g}] (the range in which the "
                                 f"certificate table is verified sound), got {alpha}")
    for name, v in (("n0", n0), ("n", n)):
        if v is not None and (int(v) != v or not 1 <= v <= MAX_N):
            raise IntengineError(f"{name} must be an integer in [1, {MAX_N:.0e}], got {v}")


def sigma_sq_int(sigma) -> Fraction:
    """Exact integer-unit noise variance: ``(Fraction(str(sigma)) * 255)^2`` (0.25 -> 65025/16).

    The sampler's :func:`kernels.sampler.sigma_sq_from_sigma`, with its errors as IntengineError.
    """
    from kernels.sampler import sigma_sq_from_sigma

    try:
        return sigma_sq_from_sigma(sigma)
    except ValueError as exc:
        raise IntengineError(str(exc)) from None


def clopper_pearson_lower(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound: Beta(alpha; nA, N - nA + 1), 0 for nA = 0.

    ``scipy.special.betaincinv`` is the function ``scipy.stats.beta.ppf`` evaluates (the same
    bits), without importing ``scipy.stats`` (about a second of start-up)."""
    from scipy.special import betaincinv

    if n_a <= 0:
        return 0.0
    return float(betaincinv(n_a, n - n_a + 1, alpha))


def radius_from_p(p_a_lower: float, sigma: float) -> float:
    """Cohen's one-sided radius ``sigma * PhiInverse(pA_lower)``; 0.0 when pA_lower <= 1/2 (abstain)."""
    from scipy.special import ndtri

    if p_a_lower <= 0.5:
        return 0.0
    return float(sigma) * float(ndtri(p_a_lower))


def binomial_pvalue_two_sided(n_a: int, n_b: int) -> float:
    """Two-sided binomial test p-value of ``nA`` out of ``nA + nB`` against p = 1/2 (scipy)."""
    from scipy.stats import binomtest

    t = n_a + n_b
    if t == 0:
        return 1.0
    return float(binomtest(n_a, t, 0.5).pvalue)


# ---------------------------------------------------------------------------
# Certificate table
# ---------------------------------------------------------------------------

def _lower_bounds(n: int, alpha: float) -> np.ndarray:
    """Clopper-Pearson lower bounds for nA = 0..N, shrunk by the relative MARGIN. float64 (N+1,)."""
    from scipy.special import betaincinv  # = scipy.stats.beta.ppf, without importing scipy.stats

    n_a = np.arange(n + 1, dtype=np.float64)
    p = np.zeros(n + 1, dtype=np.float64)
    p[1:] = betaincinv(n_a[1:], n - n_a[1:] + 1.0, alpha)
    return p * (1.0 - MARGIN)


def _build_table(n: int, alpha: float, sigma_sq: Fraction) -> tuple[np.ndarray, np.ndarray]:
    """Return (table int32 (N+1,), p_used float64 (N+1,)); rounding always toward a smaller radius."""
    from scipy.special import ndtri

    p = _lower_bounds(n, alpha)
    # sqrt of a float64 of the exact rational: relative error ~2e-16, covered by MARGIN.
    sigma_int = math.sqrt(float(sigma_sq))
    table = np.full(n + 1, -1, dtype=np.int64)
    ok = p > 0.5
    r_int = sigma_int * ndtri(p[ok])                    # > 0 where ok
    r_sq = (r_int * r_int) * (1.0 - MARGIN)            # shrink before rounding
    m = np.ceil(r_sq) - 1.0                             # largest integer strictly below r_sq
    m = np.minimum(m, float(INT32_MAX))
    table[ok] = m.astype(np.int64)
    # The exact bound increases with nA; float noise can break that by an entry or two.  A suffix
    # minimum restores it and only ever lowers entries, so it cannot make an entry unsound.
    table = np.minimum.accumulate(table[::-1])[::-1]
    return table.astype(np.int32), p


def table_is_sound(table: np.ndarray, n: int, alpha: float, sigma_sq: Fraction) -> bool:
    """Check every entry of a certificate table (a fresh or a cached one) in float64.

    ``table[nA] = m >= 0`` is sound iff ``m < R_int(nA)^2``, i.e. iff ``q = Phi(sqrt(m) / sigma_int)``
    lies below the exact Clopper-Pearson bound, i.e. iff ``P[Bin(N, q) >= nA] = I_q(nA, N - nA + 1)
    < alpha`` (the tail increases with q).  Checked with CHECK_SLACK to spare; also int32 (N+1,),
    entries in [-1, 2^31), nondecreasing.  ~0.1 s for N = 10^5."""
    from scipy.special import betainc, ndtr

    if not isinstance(table, np.ndarray) or table.dtype != np.int32 or table.shape != (n + 1,):
        return False
    t = table.astype(np.int64)
    if t.min() < -1 or np.any(np.diff(t) < 0) or t[0] != -1:
        return False
    nz = np.flatnonzero(t >= 0)
    if nz.size == 0:
        return True
    q = ndtr(np.sqrt(t[nz].astype(np.float64)) / math.sqrt(float(sigma_sq)))
    with np.errstate(all="ignore"):
        tail = betainc(nz.astype(np.float64), n - nz + 1.0, q)
    return bool(np.all(tail < alpha * (1.0 - CHECK_SLACK)))


def binomial_upper_tail_mp(n: int, k: int, p):
    """Upper bound (tight to ~30 digits) on P[Bin(n, p) >= k] for k > n*p, in the current mpmath precision.

    Sums C(n, j) p^j (1-p)^(n-j) from j = k upward with the term ratio
    (n-j)/(j+1) * p/(1-p) < 1 (k > n p), stops when a term is below 1e-30 of the sum and
    adds the geometric bound term * r / (1 - r) on the rest, so the result is never low.
    """
    import mpmath

    p = mpmath.mpf(p)
    if k <= 0:
        return mpmath.mpf(1)
    if k > n:
        return mpmath.mpf(0)
    q = 1 - p
    log_term = (mpmath.loggamma(n + 1) - mpmath.loggamma(k + 1) - mpmath.loggamma(n - k + 1)
                + k * mpmath.log(p) + (n - k) * mpmath.log(q))
    term = mpmath.exp(log_term)
    total = mpmath.mpf(0)
    j = k
    while True:
        total += term
        if j == n:
            return total
        r = mpmath.mpf(n - j) / (j + 1) * p / q
        term = term * r
        j += 1
        if term < total * mpmath.mpf(10) ** -30 and r < 1:
            # remaining terms decrease at least geometrically with ratio <= r
            return total + term / (1 - r)


def _verify_entries(table: np.ndarray, p: np.ndarray, n: int, alpha: float, sigma_sq: Fraction,
                    n_check: int = 12) -> None:
    """Re-check sampled non-abstaining entries exactly (mpmath, 40 digits).

    For each checked nA: (1) the p used is a valid one-sided lower bound, i.e. the exact tail
    P[Bin(N, p) >= nA] = I_p(nA, N - nA + 1) is <= alpha; (2) table[nA] < (sigma_int *
    PhiInverse(p))^2 with PhiInverse(p) = sqrt(2) * erfinv(2p - 1) in high precision.
    Raises RuntimeError (a bug, not a user error) if either fails.
    """
    import mpmath

    nz = np.flatnonzero(table >= 0)
    if nz.size == 0:
        return
    picks = {int(nz[0]), int(nz[min(1, nz.size - 1)])} | {int(v) for v in nz[-8:]}  # nA near N: hardest
    rng = np.random.default_rng(n * 1000003 + int(alpha * 1e9) % 1000003)
    picks.update(int(v) for v in rng.choice(nz, size=min(n_check, nz.size), replace=False))
    with mpmath.workdps(40):
        sigma_int = mpmath.sqrt(mpmath.mpf(sigma_sq.numerator) / sigma_sq.denominator)
        for n_a in sorted(picks):
            pv = mpmath.mpf(float(p[n_a]))
            tail = binomial_upper_tail_mp(n, n_a, pv)
            if tail > alpha:
                raise RuntimeError(f"certificate table: tail {tail} > alpha at nA={n_a}, N={n}")
            r = sigma_int * mpmath.sqrt(2) * mpmath.erfinv(2 * pv - 1)
            if not mpmath.mpf(int(table[n_a])) < r * r:
                raise RuntimeError(f"certificate table: m={table[n_a]} >= R^2={r * r} at nA={n_a}")


def cache_dir() -> Path:
    """``$INTENGINE_CACHE`` or ``~/.cache/intengine``."""
    env = os.environ.get("INTENGINE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "intengine"


def _cache_key(n: int, alpha: float, sigma_sq: Fraction) -> tuple[str, dict]:
    meta = {
        "kind": "intengine.certificate_table",
        "version": TABLE_VERSION,
        "n": int(n),
        "alpha": float(alpha).hex(),
        "sigma_sq": f"{sigma_sq.numerator}/{sigma_sq.denominator}",
    }
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    return f"cert_n{n}_{digest}", meta


def _load_cached(stem: str, meta: dict, n: int, alpha: float, sigma_sq: Fraction) -> np.ndarray | None:
    from intengine.npyfile import load_npy
    from intengine.safeio import open_regular

    d = cache_dir()
    try:
        with open_regular(d / f"{stem}.json", "cache file") as fh:
            stored = json.loads(fh.read(1 << 16))
        if not isinstance(stored, dict) or any(stored.get(k) != v for k, v in meta.items()):
            return None
        table = load_npy(d / f"{stem}.npy", "cache file", max_bytes=4 * (n + 1) + 4096)
    except (OSError, ValueError, IntengineError):
        return None
    if table.dtype != np.int32 or table.shape != (n + 1,):
        return None
    if hashlib.sha256(table.tobytes()).hexdigest() != stored.get("sha256"):
        return None
    # the hash only catches accidents: anyone who can write the cache can rewrite it too
    if not table_is_sound(table, n, alpha, sigma_sq):
        return None
    return table


def _store_cached(stem: str, meta: dict, table: np.ndarray) -> None:
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / f"{stem}.{os.getpid()}.tmp.npy"
        np.save(tmp, table, allow_pickle=False)
        os.replace(tmp, d / f"{stem}.npy")
        info = dict(meta, sha256=hashlib.sha256(table.tobytes()).hexdigest())
        tmpj = d / f"{stem}.{os.getpid()}.tmp.json"
        tmpj.write_text(json.dumps(info, sort_keys=True))
        os.replace(tmpj, d / f"{stem}.json")
    except OSError:
        pass  # a read-only home is no reason to fail; the table is rebuilt next time


def certificate_table(n: int, alpha: float, sigma_sq: Fraction, *, use_disk: bool = True) -> np.ndarray:
    """int32 (N+1,): ``table[nA]`` = largest integer m < R_int(nA)^2, or -1 (abstain).

    Cached in memory and on disk (``.npy`` + ``.json`` under :func:`cache_dir`); a table read from
    disk is used only after :func:`table_is_sound` has checked every entry.  Nondecreasing in nA.  ``sigma_sq`` is the exact integer-unit variance (see :func:`sigma_sq_int`).
    """
    check_options(alpha=alpha, n=n)
    sigma_sq = Fraction(sigma_sq)
    if sigma_sq <= 0:
        raise IntengineError(f"sigma_sq must be > 0, got {sigma_sq}")
    key = (int(n), float(alpha), sigma_sq)
    table = _memory_cache.get(key)
    if table is not None:
        return table
    stem, meta = _cache_key(int(n), float(alpha), sigma_sq)
    table = _load_cached(stem, meta, int(n), float(alpha), sigma_sq) if use_disk else None
    if table is None:
        table, p = _build_table(int(n), float(alpha), sigma_sq)
        _verify_entries(table, p, int(n), float(alpha), sigma_sq)
        if not table_is_sound(table, int(n), float(alpha), sigma_sq):
            raise RuntimeError(f"certificate table for N={n}, alpha={alpha} failed its soundness check")
        if use_disk:
            _store_cached(stem, meta, table)
    table.setflags(write=False)
    _memory_cache[key] = table
    return table


def predict_thresholds(n: int, alpha: float) -> np.ndarray:
    """int64 (N+1,): ``thr[t]`` = smallest nA with two-sided binomial p-value(nA, t, 1/2) <= alpha.

    PREDICT returns the top class iff ``nA >= thr[nA + nB]``; ``thr[t] = t + 1`` means never.
    For p = 1/2 and nA > t/2 the two-sided p-value is ``2 * P[Bin(t, 1/2) >= nA]`` (capped at 1),
    so the condition is ``P[Bin(t, 1/2) >= nA] <= alpha / 2``.  Rounded toward abstaining: the
    float tail must be below ``alpha/2 * (1 - 1e-9)``.
    """
    from scipy.stats import binom

    check_options(alpha=alpha, n=n)
    key = (int(n), float(alpha))
    thr = _predict_cache.get(key)
    if thr is not None:
        return thr
    t = np.arange(n + 1, dtype=np.int64)
    target = alpha / 2.0 * (1.0 - 1e-9)
    k = binom.isf(target, t, 0.5)
    k = np.nan_to_num(k, nan=0.0).astype(np.int64) - 1
    k = np.maximum(k, t // 2 + 1)  # the test can only pass for nA > t/2
    for _ in range(64):
        bad = (k <= t) & (binom.sf(k - 1, t, 0.5) > target)
        if not bad.any():
            break
        k[bad] += 1
    # k - 1 must fail (minimality); step down where scipy's isf overshot.
    for _ in range(64):
        lower = k - 1
        can = (lower > t // 2) & (lower <= t) & (binom.sf(lower - 1, t, 0.5) <= target)
        if not can.any():
            break
        k[can] -= 1
    k = np.minimum(k, t + 1)
    thr = k
    thr.setflags(write=False)
    _predict_cache[key] = thr
    return thr


# ---------------------------------------------------------------------------
# Integer-only hot-path helpers (Numba); proven float-free in tests
# ---------------------------------------------------------------------------

@njit(cache=True)
def count_votes(class_ids, failed, counts):
    """counts[c] += #{i : class_ids[i] == c and failed[i] == 0}; a failed sample votes for no class.

    class_ids int32 (B,), failed uint8 (B,), counts int64 (K,) updated in place.  Class ids
    outside 0..K-1 count for no class (defensive; the engine never produces them).
    Returns the number of failed samples (int64).
    """
    k = counts.shape[0]
    n_failed = np.int64(0)
    for i in range(class_ids.shape[0]):
        if failed[i] != 0:
            n_failed += np.int64(1)
            continue
        c = class_ids[i]
        if c >= 0 and c < k:
            counts[c] += np.int64(1)
    return n_failed


@njit(cache=True)
def lookup_radius_sq(table, n_a):
    """table[nA] as int64 (-1 = abstain); nA outside 0..N gives -1 (never certify)."""
    if n_a < 0 or n_a >= table.shape[0]:
        return np.int64(-1)
    return np.int64(table[n_a])


@njit(cache=True)
def is_certified(table, n_a, delta_sq):
    """True iff the integer perturbation with squared norm delta_sq (int64) is certified."""
    m = lookup_radius_sq(table, n_a)
    return m >= 0 and delta_sq <= m
