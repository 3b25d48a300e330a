"""Numerical soundness check of the one-sided radius for discrete Gaussian noise (docs/certificate.md).

For integer delta and Z ~ N_Z(0, sigma^2)^d (iid 1-D discrete Gaussians on the integers) the
certificate is sound iff

    p*(delta) = P[<Z,delta> < |delta|^2] + 1/2 P[<Z,delta> = |delta|^2]  <=  Phi(|delta| / sigma).

We compare complements, which keeps relative precision when both sides are close to 1:

    q*(delta) = 1 - p*(delta) = P[<Z,delta> > |delta|^2] + 1/2 P[<Z,delta> = |delta|^2]  >=  Q(|delta|/sigma).

q* is computed in float64 from the exact 1-D pmf (truncated at |z| <= M = ceil(12 sigma) + 2):
the distribution of sum_{i<d} delta_i Z_i by exact shift-and-add convolution, then one sum
against the exact upper tail of delta_d Z_d.  Every quantity is a sum of nonnegative terms,
so the relative rounding error is at most (d + 2)(2M + 2) 2^-53 (sequential sums; numpy's
pairwise sums are better), and truncation adds at most 1e-28 absolute (the dropped mass is
below 2 exp(-72) / (1 - exp(-12/sigma)) per coordinate).  Q is evaluated in mpmath (30 digits).
A case passes when q*_computed (1 - err) - 1e-28 > Q: a proof for that (delta, sigma) up to
the stated float error.  The figures (cases, violations, minimum slack) are printed (-s).
"""
from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations_with_replacement

import mpmath
import numpy as np
import pytest

from intengine.certificate import sigma_sq_int

U = 2.0**-53
TRUNC_ABS = 1e-28


def dg_pmf(sigma_sq):
    """(M, pmf float64 (2M+1,) over z = -M..M, gt float64 (2M+2,) with gt[k+M+1] = P[Z > k])."""
    s2 = float(sigma_sq)
    m = int(math.ceil(12.0 * math.sqrt(s2))) + 2
    z = np.arange(-m, m + 1, dtype=np.float64)
    w = np.exp(-(z * z) / (2.0 * s2))
    p = w / w.sum()
    gt = np.zeros(2 * m + 2)
    gt[:-1] = np.cumsum(p[::-1])[::-1]  # gt[j] = sum p[j:], i.e. P[Z >= j - M] = P[Z > j - M - 1]
    return m, p, gt


_PMF_CACHE: dict = {}


def _pmf(sigma_sq):
    key = Fraction(sigma_sq)
    if key not in _PMF_CACHE:
        _PMF_CACHE[key] = dg_pmf(key)
    return _PMF_CACHE[key]


def sum_distribution(weights, sigma_sq):
    """Exact (float64) pmf of sum_i w_i Z_i for positive integers w_i: (offset, array)."""
    m, p, _ = _pmf(sigma_sq)
    arr = np.ones(1)
    off = 0
    if weights:  # the first coordinate needs no convolution: mass p[j] sits at w_0 (j - M)
        w0 = weights[0]
        arr = np.zeros(2 * m * w0 + 1)
        arr[::w0] = p
        off = -m * w0
    for wi in weights[1:]:
        new = np.zeros(arr.shape[0] + 2 * m * wi)
        for j in range(2 * m + 1):
            if p[j] == 0.0:
                continue
            new[wi * j: wi * j + arr.shape[0]] += p[j] * arr
        arr, off = new, off - m * wi
    return off, arr


def upper_tail_scaled(u, w, sigma_sq):
    """G(u) = P[w Z > u] + 1/2 P[w Z = u] for integer array u and integer w > 0."""
    m, p, gt = _pmf(sigma_sq)
    k = np.floor_divide(u, w)
    exact = (u - k * w) == 0
    kk = np.clip(k, -m - 1, m)
    g = np.where(k < -m - 1, 1.0, np.where(k > m, 0.0, gt[kk + m + 1]))
    pk = np.where((k >= -m) & (k <= m), p[np.clip(k, -m, m) + m], 0.0)
    return g + np.where(exact, 0.5 * pk, 0.0)


def q_star(delta, sigma_sq):
    """(q*(delta) computed in float64, its relative error bound). delta: nonzero integers."""
    d = sorted(abs(int(v)) for v in delta if v != 0)
    t = sum(v * v for v in d)
    m, _, _ = _pmf(sigma_sq)
    if len(d) == 2:  # sum_{i<d} is one coordinate: its 2M+1 atoms directly
        arr = _pmf(sigma_sq)[1]
        s = d[0] * np.arange(-m, m + 1, dtype=np.int64)
    else:
        off, arr = sum_distribution(d[:-1], sigma_sq)
        s = off + np.arange(arr.shape[0], dtype=np.int64)
    q = float(np.sum(arr * upper_tail_scaled(t - s, d[-1], sigma_sq)))
    return q, (len(d) + 2) * (2 * m + 2) * U


def q_gauss(delta, sigma_sq) -> mpmath.mpf:
    t = sum(int(v) ** 2 for v in delta)
    with mpmath.workdps(30):
        r = mpmath.sqrt(mpmath.mpf(t) * Fraction(sigma_sq).denominator / Fraction(sigma_sq).numerator)
        return mpmath.ncdf(-r)


def check_cases(cases):
    """Run the check; returns (count, violations, min absolute slack, min relative slack, worst case)."""
    violations = []
    min_abs, min_rel, worst = math.inf, math.inf, None
    for delta, sigma_sq in cases:
        q, err = q_star(delta, sigma_sq)
        qg = q_gauss(delta, sigma_sq)
        lower = q * (1.0 - err) - TRUNC_ABS
        slack = q - float(qg)
        rel = slack / float(qg)
        if not mpmath.mpf(lower) > qg:
            violations.append((delta, sigma_sq, q, float(qg)))
        if rel < min_rel:
            min_rel, min_abs, worst = rel, slack, (tuple(delta), str(sigma_sq))
    return len(cases), violations, min_abs, min_rel, worst


SIGMA_SQS = [Fraction(1, 10), Fraction(1), Fraction(4), Fraction(16), sigma_sq_int(0.12),
             sigma_sq_int(0.25), sigma_sq_int(0.5), sigma_sq_int(1.0)]


def make_cases(per_sigma_dim, r_max=6.0, seed=0):
    """Sorted positive delta (sign and order do not matter), |delta| <= r_max sigma, d = 1..4."""
    rng = np.random.default_rng(seed)
    cases = []
    for s2 in SIGMA_SQS:
        sigma = math.sqrt(float(s2))
        t_max = int((r_max * sigma) ** 2)
        hi = max(1, int(math.isqrt(t_max)))
        for d in (1, 2, 3, 4):
            budget = per_sigma_dim(s2, d)
            if budget <= 0:
                continue
            if d == 1:
                pool = [(a,) for a in range(1, hi + 1)]
            elif hi ** d <= 20000:
                pool = [c for c in combinations_with_replacement(range(1, hi + 1), d)
                        if sum(v * v for v in c) <= t_max]
            else:
                pool = set()
                for _ in range(40 * budget):  # bounded: small balls hold few sorted tuples
                    if len(pool) >= 4 * budget:
                        break
                    # |delta| spread over (0, r_max sigma]: random direction, random radius
                    v = np.abs(rng.normal(size=d))
                    v = v / np.linalg.norm(v) * rng.uniform(0.02, 1.0) * r_max * sigma
                    c = tuple(sorted(max(1, int(round(x))) for x in v))
                    if sum(x * x for x in c) <= t_max:
                        pool.add(c)
                pool = sorted(pool)
            if len(pool) > budget:
                pick = rng.choice(len(pool), size=budget, replace=False)
                pool = [pool[i] for i in sorted(pick)]
            cases += [(c, s2) for c in pool]
    return cases


def _fast_budget(s2, d):
    # M ~ 12 sigma: d = 3, 4 cost (2M+1)^(d-2) shift-adds of arrays of length ~2 M |delta|
    cost = 0 if float(s2) < 1000 else (1 if float(s2) < 10000 else 2)
    return {1: 400, 2: 400, 3: (120, 12, 0)[cost], 4: (60, 2, 0)[cost]}[d]


def _slow_budget(s2, d):
    cost = 0 if float(s2) < 1000 else (1 if float(s2) < 10000 else 2)
    return {1: 2000, 2: 4000, 3: (1500, 80, 10)[cost], 4: (800, 10, 1)[cost]}[d]


def test_q_star_matches_mpmath_brute_force():
    """The float64 machinery against a direct 40-digit double sum (d = 1, 2)."""
    for s2, delta in [(Fraction(1), (2, 1)), (Fraction(4), (3, 5)), (Fraction(1, 10), (1, 1)),
                      (Fraction(16), (7,)), (Fraction(4), (1, 2))]:
        q, err = q_star(delta, s2)
        with mpmath.workdps(40):
            m = int(math.ceil(12 * math.sqrt(float(s2)))) + 2
            s2m = mpmath.mpf(s2.numerator) / s2.denominator
            w = [mpmath.exp(-mpmath.mpf(z * z) / (2 * s2m)) for z in range(-m, m + 1)]
            norm = mpmath.fsum(w)
            pm = [x / norm for x in w]
            t = sum(v * v for v in delta)
            if len(delta) == 1:
                exact = mpmath.fsum(pm[z + m] * (1 if delta[0] * z > t else mpmath.mpf(1) / 2 if delta[0] * z == t else 0)
                                    for z in range(-m, m + 1))
            else:
                a, b = delta
                exact = mpmath.fsum(pm[z1 + m] * pm[z2 + m] * (1 if a * z1 + b * z2 > t else mpmath.mpf(1) / 2)
                                    for z1 in range(-m, m + 1) for z2 in range(-m, m + 1) if a * z1 + b * z2 >= t)
            assert abs(q - float(exact)) <= err * float(exact) + 1e-28


def test_one_sided_rule_sound_on_integer_deltas():
    cases = make_cases(_fast_budget)
    # the documented cases, always included
    cases += [((64,), sigma_sq_int(0.25)), ((63, 11), sigma_sq_int(0.25)), ((1,), Fraction(1, 10)),
              ((1, 1, 1, 1), Fraction(1))]
    n, violations, min_abs, min_rel, worst = check_cases(cases)
    print(f"\nsoundness: {n} integer deltas (d=1..4, {len(SIGMA_SQS)} sigmas), {len(violations)} violations, "
          f"min slack {min_abs:.3e} absolute / {min_rel:.3e} relative at delta={worst[0]}, sigma^2={worst[1]}")
    assert n >= 2000
    assert not violations, violations[:5]


@pytest.mark.slow
def test_one_sided_rule_sound_on_integer_deltas_many():
    cases = make_cases(_slow_budget, r_max=7.0, seed=1)
    n, violations, min_abs, min_rel, worst = check_cases(cases)
    print(f"\nsoundness (slow): {n} integer deltas, {len(violations)} violations, "
          f"min slack {min_abs:.3e} absolute / {min_rel:.3e} relative at delta={worst[0]}, sigma^2={worst[1]}")
    assert not violations, violations[:5]


# --- the two unsound alternatives (docs/certificate.md) --------------------------------

def _cdf_tools(s2):
    m, p, gt = _pmf(s2)

    def le(k):  # P[Z <= k]
        return 1.0 - (gt[k + m + 1] if -m - 1 <= k <= m else (1.0 if k < -m - 1 else 0.0))

    return le


def test_two_sided_radius_is_unsound():
    """sigma_int = 63.75, delta = 64, three classes: A = {z <= 53}, C = {54..74}, B = {z >= 75}.

    The two-sided radius sigma/2 (PhiInv(pA) - PhiInv(pB)) with pB = max over other classes
    exceeds 64, yet at x + 64 the classes A and B are exactly tied (symmetry of Z), so the
    smoothed classifier need not return A.  The one-sided radius stays far below 64.
    """
    s2 = sigma_sq_int(0.25)
    le = _cdf_tools(s2)
    sigma = 63.75
    p_a, p_b = le(53), 1.0 - le(74)
    p_c = 1.0 - p_a - p_b
    assert p_a > p_c > 0 and p_a > p_b
    with mpmath.workdps(30):
        two_sided = sigma / 2 * (mpmath.sqrt(2) * (mpmath.erfinv(2 * mpmath.mpf(p_a) - 1)
                                                    - mpmath.erfinv(2 * mpmath.mpf(max(p_b, p_c)) - 1)))
        one_sided = sigma * mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p_a) - 1)
    assert two_sided > 64 + 5e-4           # the two-sided rule claims |delta| = 64 is certified
    p_a_shift = le(53 - 64)                # P[Z + 64 <= 53]
    p_b_shift = 1.0 - le(74 - 64)          # P[Z + 64 >= 75]
    assert p_b_shift >= p_a_shift          # exact tie: P[Z <= -11] = P[Z >= 11]
    assert one_sided < 60


def test_discrete_inverse_cdf_radius_is_unsound_in_2d():
    """R = min{k : P[Z <= k] >= pA} certifies |delta| < R: sound in d = 1, not for delta = (63, 11).

    With pA = 0.841 and sigma_int = 63.75: P[Z <= 63] < pA <= P[Z <= 64], so R = 64 and
    |(63, 11)| = 63.95 < 64 would be certified, but the worst-case half-space classifier with
    P[A] = pA needs pA > p*((63, 11)) ~ 0.84211.  The one-sided Gaussian rule does not certify it.
    """
    s2 = sigma_sq_int(0.25)
    le = _cdf_tools(s2)
    p_a = 0.841
    assert le(63) < p_a <= le(64)
    p_star = 1.0 - q_star((63, 11), s2)[0]
    assert p_star > p_a + 1e-3
    from scipy.special import ndtri

    assert 63.75 * ndtri(p_a) < math.hypot(63, 11)


# --- end to end on a linear base classifier -------------------------------------------

def _linear_case(w, b, x_dot, s2):
    """f(x) = 1 iff <w, x> >= b on the integer lattice; exact pA at <w, x> = x_dot, true radius^2."""
    off, arr = sum_distribution([abs(v) for v in w], s2)  # law of <|w|, Z> = law of <w, Z>
    tail = np.cumsum(arr[::-1])[::-1]  # tail[j] = P[V >= off + j]

    def p1(t):  # P[f(x + Z) = 1] for <w, x> = t
        j = b - t - off
        return 1.0 if j <= 0 else (0.0 if j >= arr.shape[0] else float(tail[j]))

    p_a = p1(x_dot)
    # smallest drop k = -<w, delta> that makes P[class 1] <= 1/2 (class no longer guaranteed)
    k = 1
    while p1(x_dot - k) > 0.5:
        k += 1
    # min |delta|^2 over integer delta with <w, delta> <= -k (brute force in a box)
    box = k // min(abs(v) for v in w) + 2
    grids = np.meshgrid(*[np.arange(-box, box + 1)] * len(w), indexing="ij")
    dots = sum(wi * g for wi, g in zip(w, grids))
    sq = sum(g * g for g in grids)
    r_true_sq = int(sq[dots <= -k].min())
    return p_a, r_true_sq


@pytest.mark.parametrize("s2", [Fraction(1), Fraction(4), Fraction(1, 10), Fraction(9, 4)])
def test_linear_classifier_certified_radius_never_exceeds_true_radius(s2):
    from intengine.certificate import certificate_table, clopper_pearson_lower

    rng = np.random.default_rng(int(s2 * 100))
    checked = 0
    for _ in range(40):
        d = int(rng.integers(1, 4))
        w = [int(v) for v in rng.integers(-4, 5, size=d) if v != 0] or [1]
        b = int(rng.integers(-3, 4))
        x_dot = b + int(rng.integers(0, 8))
        p_a, r_true_sq = _linear_case(w, b, x_dot, s2)
        if not 0.5 < p_a < 1 - 1e-12:
            continue
        with mpmath.workdps(30):
            r = mpmath.sqrt(mpmath.mpf(s2.numerator) / s2.denominator) * mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p_a) - 1)
            m_exact = int(mpmath.ceil(r * r)) - 1  # the table's rule with the exact pA
        assert m_exact < r_true_sq, (w, b, x_dot, p_a, m_exact, r_true_sq)
        # and the table itself, from counts nA = floor(pA N), N = 2000 (CP makes it smaller still)
        n = 2000
        table = certificate_table(n, 0.001, s2, use_disk=False)
        n_a = int(math.floor(p_a * n))
        assert table[n_a] < r_true_sq
        assert clopper_pearson_lower(n_a, n, 0.001) <= p_a
        checked += 1
    assert checked >= 10
