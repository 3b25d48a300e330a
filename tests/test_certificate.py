"""Clopper-Pearson bounds, radius rule, int32 certificate tables, PREDICT thresholds, hot-path helpers."""
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtri
from scipy.stats import binom, binomtest

from intengine import certificate as cert
from intengine.errors import IntengineError
from kernels.ircheck import assert_integer_only

SIGMA_025 = Fraction(65025, 16)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    cert._memory_cache.clear()
    yield
    cert._memory_cache.clear()


def test_sigma_sq_int_is_exact():
    assert cert.sigma_sq_int(0.25) == Fraction(65025, 16)
    assert cert.sigma_sq_int(0.12) == Fraction(12 * 255, 100) ** 2
    assert cert.sigma_sq_int(1) == 65025


@pytest.mark.parametrize("n_a,n,alpha", [(1, 10, 0.05), (990, 1000, 0.001), (100000, 100000, 0.001), (37, 100, 0.01)])
def test_clopper_pearson_matches_scipy_exact_interval(n_a, n, alpha):
    # one-sided lower bound at alpha == lower end of the two-sided exact interval at 1 - 2 alpha
    low = binomtest(n_a, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert cert.clopper_pearson_lower(n_a, n, alpha) == pytest.approx(low, rel=1e-10)
    # and its defining property: P[Bin(n, p_low) >= n_a] = alpha
    with mpmath.workdps(30):
        tail = cert.binomial_upper_tail_mp(n, n_a, cert.clopper_pearson_lower(n_a, n, alpha))
    assert float(tail) == pytest.approx(alpha, rel=1e-6)


def test_clopper_pearson_zero_successes():
    assert cert.clopper_pearson_lower(0, 100, 0.001) == 0.0


def test_binomial_tail_mp_matches_scipy():
    for n, k, p in [(100, 60, 0.5), (1000, 990, 0.97), (10, 10, 0.3), (5000, 2600, 0.5)]:
        with mpmath.workdps(30):
            v = float(cert.binomial_upper_tail_mp(n, k, p))
        assert v == pytest.approx(binom.sf(k - 1, n, p), rel=1e-9)
        assert v >= binom.sf(k - 1, n, p) * (1 - 1e-12)  # never low


def test_radius_rule():
    assert cert.radius_from_p(0.5, 0.25) == 0.0
    assert cert.radius_from_p(0.3, 0.25) == 0.0
    assert cert.radius_from_p(0.99, 0.5) == pytest.approx(0.5 * ndtri(0.99))


@pytest.mark.parametrize("n,alpha,sigma_sq", [(200, 0.001, SIGMA_025), (1000, 0.01, Fraction(65025, 4)),
                                              (50, 0.05, Fraction(1, 10))])
def test_table_every_entry_is_sound_and_tight(n, alpha, sigma_sq):
    table = cert.certificate_table(n, alpha, sigma_sq, use_disk=False)
    assert table.dtype == np.int32 and table.shape == (n + 1,)
    assert np.all(np.diff(table.astype(np.int64)) >= 0), "table must be nondecreasing in nA"
    with mpmath.workdps(40):
        sig = mpmath.sqrt(mpmath.mpf(sigma_sq.numerator) / sigma_sq.denominator)
        for n_a in range(n + 1):
            p = cert.clopper_pearson_lower(n_a, n, alpha)
            if p <= 0.5 * (1 + 1e-9):
                assert table[n_a] == -1 or p > 0.5, (n_a, p, table[n_a])
                continue
            r = sig * mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p) - 1)
            m = int(table[n_a])
            assert m >= 0
            assert m < r * r, "table entry must lie strictly below the exact R_int^2"
            # conservative by at most the margins: m + 1 >= R^2 (1 - 1e-9)
            assert m + 1 >= r * r * (1 - mpmath.mpf(10) ** -9), (n_a, m, r * r)


def test_table_abstains_exactly_below_half():
    n, alpha = 1000, 0.001
    table = cert.certificate_table(n, alpha, SIGMA_025, use_disk=False)
    p = np.array([cert.clopper_pearson_lower(k, n, alpha) for k in range(n + 1)])
    assert np.all(table[p <= 0.5] == -1)
    assert np.all(table[p > 0.5 + 1e-9] >= 0)
    assert table[n] > 0


def test_table_disk_cache_roundtrip_and_corruption(tmp_path):
    t1 = cert.certificate_table(300, 0.001, SIGMA_025)
    files = sorted((tmp_path / "cache").iterdir())
    assert [f.suffix for f in files] == [".json", ".npy"]
    np.load(files[1], allow_pickle=False)  # plain .npy, no pickle
    cert._memory_cache.clear()
    t2 = cert.certificate_table(300, 0.001, SIGMA_025)
    assert np.array_equal(t1, t2)
    # a tampered cache file is detected (hash) and rebuilt
    bad = t1.copy()
    bad[-1] += 1000
    np.save(files[1], bad)
    cert._memory_cache.clear()
    t3 = cert.certificate_table(300, 0.001, SIGMA_025)
    assert np.array_equal(t1, t3)


def test_table_key_distinguishes_parameters():
    a = cert.certificate_table(300, 0.001, SIGMA_025)
    b = cert.certificate_table(300, 0.01, SIGMA_025)
    c = cert.certificate_table(300, 0.001, Fraction(65025, 4))
    assert not np.array_equal(a, b) and not np.array_equal(a, c)


def test_table_read_only():
    t = cert.certificate_table(100, 0.001, SIGMA_025, use_disk=False)
    with pytest.raises(ValueError):
        t[0] = 5


@pytest.mark.parametrize("kw", [dict(sigma=0), dict(sigma=-1.0), dict(sigma=float("nan")), dict(alpha=0.0),
                                dict(alpha=1.0), dict(alpha=-0.1), dict(n0=0), dict(n=0), dict(n=2.5)])
def test_check_options_rejects(kw):
    with pytest.raises(IntengineError):
        cert.check_options(**kw)


def test_predict_thresholds_match_binomtest():
    n, alpha = 160, 0.001
    thr = cert.predict_thresholds(n, alpha)
    for t in range(0, n + 1):
        for n_a in range((t + 1) // 2, t + 1):
            n_b = t - n_a
            passes = t > 0 and n_a > n_b and binomtest(n_a, t, 0.5).pvalue <= alpha
            assert (n_a >= thr[t]) == passes, (t, n_a)


def test_predict_thresholds_large_n_spot_checks():
    n, alpha = 100_000, 0.001
    thr = cert.predict_thresholds(n, alpha)
    for t in (1000, 5001, 77777, 100_000):
        k = int(thr[t])
        assert binomtest(k, t, 0.5).pvalue <= alpha
        assert binomtest(k - 1, t, 0.5).pvalue > alpha


# --- integer-only hot-path helpers -------------------------------------------------------

@settings(max_examples=40)
@given(st.lists(st.tuples(st.integers(0, 9), st.booleans()), max_size=200))
def test_count_votes_matches_reference(samples):
    ids = np.array([s[0] for s in samples], dtype=np.int32)
    failed = np.array([s[1] for s in samples], dtype=np.uint8)
    counts = np.zeros(10, dtype=np.int64)
    n_failed = cert.count_votes(ids, failed, counts)
    expect = np.bincount(ids[failed == 0], minlength=10)
    assert np.array_equal(counts, expect)
    assert n_failed == int(failed.sum())
    assert counts.sum() + n_failed == len(samples)  # a failed sample counts for no class


def test_count_votes_accumulates_and_ignores_out_of_range():
    counts = np.zeros(3, dtype=np.int64)
    cert.count_votes(np.array([0, 1, 2, 5, -1], dtype=np.int32), np.zeros(5, dtype=np.uint8), counts)
    cert.count_votes(np.array([2], dtype=np.int32), np.zeros(1, dtype=np.uint8), counts)
    assert counts.tolist() == [1, 1, 2]


def test_lookup_and_is_certified():
    table = np.array([-1, -1, 0, 7, 30], dtype=np.int32)
    assert cert.lookup_radius_sq(table, np.int64(1)) == -1
    assert cert.lookup_radius_sq(table, np.int64(9)) == -1
    assert cert.lookup_radius_sq(table, np.int64(3)) == 7
    assert cert.is_certified(table, np.int64(3), np.int64(7))
    assert not cert.is_certified(table, np.int64(3), np.int64(8))
    assert cert.is_certified(table, np.int64(2), np.int64(0))
    assert not cert.is_certified(table, np.int64(1), np.int64(0))


def test_hot_path_helpers_are_integer_only():
    ids = np.zeros(4, dtype=np.int32)
    failed = np.zeros(4, dtype=np.uint8)
    counts = np.zeros(3, dtype=np.int64)
    table = np.zeros(5, dtype=np.int32)
    assert_integer_only(cert.count_votes, ids, failed, counts)
    assert_integer_only(cert.lookup_radius_sq, table, np.int64(2))
    assert_integer_only(cert.is_certified, table, np.int64(2), np.int64(1))


@pytest.mark.parametrize("n, alpha", [(100, 0.001), (10_000, 0.05), (100_000, 0.001), (1000, 1e-6)])
def test_clopper_pearson_bounds_equal_scipy_stats_bit_for_bit(n, alpha):
    # the certificate path uses scipy.special.betaincinv (no scipy.stats import at start-up);
    # it must give exactly scipy.stats.beta.ppf's bits, so no radius changed with the switch
    from scipy.stats import beta

    from intengine import certificate

    k = np.arange(1, n + 1, dtype=np.float64)
    np.testing.assert_array_equal(certificate._lower_bounds(n, alpha)[1:],
                                  beta.ppf(alpha, k, n - k + 1.0) * (1.0 - certificate.MARGIN))
    for n_a in (1, n // 2, n - 1, n):
        assert certificate.clopper_pearson_lower(n_a, n, alpha) == float(beta.ppf(alpha, n_a, n - n_a + 1))


def test_certify_does_not_import_scipy_stats():
    code = ("import sys, intengine.cli as c; "
            "c.main(['certify', 'models/resnet20_sigma0.25.int8', 'examples/cat_chelsea.npy', '--n', '50', "
            "'--n0', '10', '--seed', '0', '--json']); "
            "assert 'scipy.stats' not in sys.modules, 'scipy.stats imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1],
                   capture_output=True)
