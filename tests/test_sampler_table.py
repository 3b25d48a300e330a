"""Table sampler: entries vs mpmath, exact alias masses, failure bin, reference == Numba, chi-square."""
from fractions import Fraction
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest
from scipy.stats import chisquare

from kernels.sampler import FAIL, sample_discrete_gaussian
from kernels.sampler.table import (
    TOTAL,
    WEIGHT_BITS,
    AliasTable,
    build_alias,
    exact_weights,
    table_add_noise_clip_numba,
    table_fill_np,
    table_fill_numba,
    table_lookup_np,
)

SIGMAS_SQ = [Fraction(1, 4), Fraction(1), Fraction(10), Fraction(65025, 16), Fraction(65025)]


def mp_pmf(sigma_sq, kmax, dps=50):
    """mpmath exact pmf exp(-k^2/(2 s^2)) / Z for k = -kmax..kmax (Z summed to far beyond 30 sigma)."""
    with mpmath.workdps(dps):
        s2 = mpmath.mpf(sigma_sq.numerator) / sigma_sq.denominator
        J = int(40 * mpmath.sqrt(s2)) + 10
        e = [mpmath.exp(-mpmath.mpf(k * k) / (2 * s2)) for k in range(max(J, kmax) + 1)]
        Z = e[0] + 2 * mpmath.fsum(e[1 : J + 1])
        return [e[abs(k)] / Z for k in range(-kmax, kmax + 1)]


def chi_square_p(samples, sigma_sq, min_expected=20):
    """Goodness of fit of integer samples to N_Z(0, sigma_sq); tails pooled into the outer bins."""
    n = samples.size
    kmax = int(max(np.abs(samples).max(), 14 * float(sigma_sq) ** 0.5)) + 2
    p = np.array([float(v) for v in mp_pmf(sigma_sq, kmax, dps=30)])
    expected = n * p
    observed = np.bincount(samples + kmax, minlength=2 * kmax + 1).astype(float)
    central = np.flatnonzero(expected >= min_expected)
    a, b = central[0], central[-1]
    obs = np.concatenate([[observed[: a + 1].sum()], observed[a + 1 : b], [observed[b:].sum()]])
    exp = np.concatenate([[expected[: a + 1].sum()], expected[a + 1 : b], [expected[b:].sum()]])
    exp *= obs.sum() / exp.sum()
    return chisquare(obs, exp).pvalue


@pytest.mark.parametrize("sigma_sq", SIGMAS_SQ + [Fraction(23409, 25)])
def test_weights_are_floors_of_exact_pmf(sigma_sq):
    K, w, w_fail = exact_weights(sigma_sq)
    sigma = mpmath.sqrt(mpmath.mpf(sigma_sq.numerator) / sigma_sq.denominator)
    assert K == int(mpmath.ceil(14 * sigma))  # covers |k| <= ceil(14 sigma), no more
    p = mp_pmf(sigma_sq, K, dps=60)
    with mpmath.workdps(60):
        assert w == [int(mpmath.floor(q * TOTAL)) for q in p]
    assert w_fail == TOTAL - sum(w)  # the FAIL bin holds exactly the rounding deficit
    assert 0 <= w_fail < 2 * K + 2  # each floor loses < 1, the mass beyond 14 sigma < 2^-141
    assert WEIGHT_BITS >= 60


@pytest.mark.parametrize("sigma_sq", SIGMAS_SQ)
def test_alias_table_implies_exactly_the_weights(sigma_sq):
    t = AliasTable(sigma_sq)
    masses = t.implied_masses()
    expected = {k - t.K: wk for k, wk in enumerate(t.weights) if wk}
    if t.fail_weight:
        expected[FAIL] = t.fail_weight
    assert masses == expected
    C = 1 << t.shift
    assert len(t.threshold) * C == TOTAL and int(t.threshold.max()) <= C
    assert len(t.threshold) >= 2 * t.K + 2


def test_alias_rejects_bad_weights():
    with pytest.raises(ValueError):
        build_alias([TOTAL // 2, TOTAL // 2 - 1], [0, 1])


def _args(table, seed=(3, 4), stream=1, image=2, start=5):
    head = (np.uint64(seed[0]), np.uint64(seed[1]), np.uint64(stream << 24), np.uint64(image), np.uint64(start))
    return head, (table.threshold, table.primary, table.alias, table.shift_u64, table.rmask_u64)


@pytest.mark.parametrize("sigma_sq", [Fraction(1, 4), Fraction(65025, 16)])
@pytest.mark.parametrize("B,d", [(3, 1), (4, 7), (9, 64)])
def test_numba_fill_matches_reference(sigma_sq, B, d):
    t = AliasTable(sigma_sq)
    head, params = _args(t)
    out = np.empty((B, d), np.int32)
    failed = np.full(B, 7, np.uint8)
    table_fill_numba(*head, *params, out, failed)
    ref, ref_failed = table_fill_np(t, (3, 4), 1 << 24, 2, 5, B, d)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(failed, ref_failed)


def _lossy_table():
    """A table with a large FAIL bin (1/4) over values -1, 0, 1, to exercise the failure path."""
    q = TOTAL // 4
    threshold, primary, alias, shift = build_alias([q, q, q, q], [-1, 0, 1, FAIL])
    return SimpleNamespace(
        threshold=threshold, primary=primary, alias=alias,
        shift_u64=np.uint64(shift), rmask_u64=np.uint64((1 << shift) - 1),
    )


def test_failure_bin_is_reported_per_sample():
    t = _lossy_table()
    head, params = _args(t)
    B, d = 400, 3
    out = np.empty((B, d), np.int32)
    failed = np.empty(B, np.uint8)
    table_fill_numba(*head, *params, out, failed)
    ref, ref_failed = table_fill_np(t, (3, 4), 1 << 24, 2, 5, B, d)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(failed, (out == FAIL).any(axis=1))
    assert 0.5 < failed.mean() < 0.65  # 1 - (3/4)^3 = 0.578
    assert set(np.unique(out)) == {FAIL, -1, 0, 1}

    x = np.array([0, 128, 255], np.uint8)
    noisy = np.empty((B, d), np.uint8)
    failed2 = np.empty(B, np.uint8)
    table_add_noise_clip_numba(*head, x, *params, noisy, failed2)
    np.testing.assert_array_equal(failed2, failed)
    expected = np.where(out == FAIL, 0, np.clip(x.astype(np.int64) + out, 0, 255))
    np.testing.assert_array_equal(noisy, expected)


def test_lookup_uses_the_top_bits_for_the_column():
    t = _lossy_table()  # 4 outcomes, 4 columns of capacity 2^62, each its own outcome
    u = np.array([0, 1 << 62, 2 << 62, 3 << 62, (1 << 62) - 1], dtype=np.uint64)
    np.testing.assert_array_equal(table_lookup_np(t, u), [-1, 0, 1, FAIL, -1])


@pytest.mark.parametrize("sigma_sq", SIGMAS_SQ)
def test_chi_square_table_sampler(sigma_sq):
    n = 2_000_000
    x = sample_discrete_gaussian(sigma_sq, (1000, n // 1000), seed=20261124, method="table")
    assert not (x == FAIL).any()
    p = chi_square_p(x.ravel().astype(np.int64), sigma_sq)
    print(f"table chi-square sigma^2={sigma_sq}: p={p:.4f}")
    assert p > 1e-4


@pytest.mark.parametrize("sigma_sq", [Fraction(1, 4), Fraction(1)])
def test_chi_square_has_power_against_rounded_gaussian(sigma_sq):
    # At small sigma a rounded continuous Gaussian is visibly wrong: the test must reject it.
    rng = np.random.default_rng(1)
    x = np.rint(rng.standard_normal(2_000_000) * float(sigma_sq) ** 0.5).astype(np.int64)
    assert chi_square_p(x, sigma_sq) < 1e-10
