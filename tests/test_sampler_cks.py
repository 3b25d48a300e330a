"""Exact CKS sampler: Bernoulli(exp(-gamma)), discrete Laplace, discrete Gaussian; reference == Numba."""
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binomtest, chisquare

from kernels.sampler import FAIL, sample_discrete_gaussian
from kernels.sampler.cks import (
    BLOCK_LIMIT,
    REJECT,
    CksParams,
    WordStream,
    bernoulli_exp_many,
    bernoulli_exp_py,
    cks_add_noise_clip_numba,
    cks_fill_numba,
    discrete_gaussian_one_py,
    discrete_gaussian_py,
    discrete_laplace_many,
    discrete_laplace_py,
)
from test_sampler_table import SIGMAS_SQ, chi_square_p

KEY = (0x9E3779B9, 0x7F4A7C15)
RATIONALS = [(0, 1), (1, 3), (1, 1), (2, 2), (5, 2), (7, 3), (13, 4), (40, 7)]


@pytest.mark.parametrize("A,B", RATIONALS)
def test_bernoulli_exp_frequency(A, B):
    n = 200_000
    out = np.empty(n, np.uint8)
    bernoulli_exp_many(np.uint64(KEY[0]), np.uint64(KEY[1]), np.int64(A), np.int64(B), out)
    p = math.exp(-A / B)
    hits = int(out.sum())
    if A == 0:
        assert hits == n
    else:
        assert binomtest(hits, n, p).pvalue > 1e-4


@pytest.mark.parametrize("A,B", RATIONALS)
def test_bernoulli_exp_reference_matches_numba(A, B):
    n = 300
    out = np.empty(n, np.uint8)
    bernoulli_exp_many(np.uint64(KEY[0]), np.uint64(KEY[1]), np.int64(A), np.int64(B), out)
    ref = [bernoulli_exp_py(WordStream(KEY, i, 0, 0, 0), A, B) for i in range(n)]
    np.testing.assert_array_equal(out, np.array(ref, dtype=np.uint8))


@pytest.mark.parametrize("t", [1, 3, 64])
def test_discrete_laplace_distribution(t):
    n = 300_000
    out = np.empty(n, np.int64)
    discrete_laplace_many(np.uint64(KEY[0]), np.uint64(KEY[1]), np.int64(t), np.int64(1 << 30), out)
    assert not (out == REJECT).any()
    q = math.exp(-1 / t)
    kmax = int(t * 25)
    k = np.arange(-kmax, kmax + 1)
    pmf = (1 - q) / (1 + q) * q ** np.abs(k)
    expected = n * pmf
    observed = np.bincount(np.clip(out, -kmax, kmax) + kmax, minlength=2 * kmax + 1).astype(float)
    central = np.flatnonzero(expected >= 20)
    a, b = central[0], central[-1]
    obs = np.concatenate([[observed[: a + 1].sum()], observed[a + 1 : b], [observed[b:].sum()]])
    exp = np.concatenate([[expected[: a + 1].sum()], expected[a + 1 : b], [expected[b:].sum()]])
    exp *= obs.sum() / exp.sum()
    assert chisquare(obs, exp).pvalue > 1e-4
    ref = [discrete_laplace_py(WordStream(KEY, i, 0, 0, 0), t, 1 << 30) for i in range(200)]
    np.testing.assert_array_equal(out[:200], ref)


def test_discrete_laplace_rejects_beyond_y_max():
    n = 20_000
    out = np.empty(n, np.int64)
    discrete_laplace_many(np.uint64(KEY[0]), np.uint64(KEY[1]), np.int64(5), np.int64(7), out)
    kept = out[out != REJECT]
    assert np.abs(kept).max() <= 7 and 0 < (out == REJECT).mean() < 0.5
    ref = [discrete_laplace_py(WordStream(KEY, i, 0, 0, 0), 5, 7) for i in range(300)]
    np.testing.assert_array_equal(out[:300], ref)


@pytest.mark.parametrize("sigma_sq", SIGMAS_SQ)
def test_chi_square_cks_sampler(sigma_sq):
    x = sample_discrete_gaussian(sigma_sq, (500, 1000), seed=424242, method="cks")
    assert not (x == FAIL).any()
    p = chi_square_p(x.ravel().astype(np.int64), sigma_sq)
    print(f"cks chi-square sigma^2={sigma_sq}: p={p:.4f}")
    assert p > 1e-4


def _numba_fill(p, B, d, block_limit=BLOCK_LIMIT, stream=1, image=3, start=7):
    out = np.empty((B, d), np.int32)
    failed = np.empty(B, np.uint8)
    cks_fill_numba(
        np.uint64(KEY[0]), np.uint64(KEY[1]), np.uint64(stream << 24), np.uint64(image), np.uint64(start),
        np.int64(p.num), np.int64(p.den), np.int64(p.t), np.int64(p.y_max), np.int64(p.b_acc),
        np.uint64(block_limit), out, failed,
    )
    return out, failed


@pytest.mark.parametrize("sigma_sq", [Fraction(1, 4), Fraction(10), Fraction(65025, 16), Fraction(23409, 25)])
def test_reference_matches_numba(sigma_sq):
    p = CksParams(sigma_sq)
    out, failed = _numba_fill(p, 3, 40)
    ref = discrete_gaussian_py(p, KEY, 1, 3, range(7, 10), 40)
    np.testing.assert_array_equal(out, ref)
    assert not failed.any()


@pytest.mark.parametrize("block_limit", [2, 3, 5])
def test_running_out_of_words_is_fail_in_both(block_limit):
    # With only a few Philox blocks per output, many outputs run out: both versions say FAIL.
    p = CksParams(Fraction(65025, 16))
    out, failed = _numba_fill(p, 4, 50, block_limit)
    ref = discrete_gaussian_py(p, KEY, 1, 3, range(7, 11), 50, block_limit)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(failed, (ref == FAIL).any(axis=1))
    assert (ref == FAIL).any() and (ref != FAIL).any()

    x = np.arange(50, dtype=np.uint8) * 5
    noisy = np.empty((4, 50), np.uint8)
    failed2 = np.empty(4, np.uint8)
    cks_add_noise_clip_numba(
        np.uint64(KEY[0]), np.uint64(KEY[1]), np.uint64(1 << 24), np.uint64(3), np.uint64(7), x,
        np.int64(p.num), np.int64(p.den), np.int64(p.t), np.int64(p.y_max), np.int64(p.b_acc),
        np.uint64(block_limit), noisy, failed2,
    )
    np.testing.assert_array_equal(failed2, failed)
    np.testing.assert_array_equal(noisy, np.where(ref == FAIL, 0, np.clip(x.astype(np.int64) + ref, 0, 255)))


def test_about_fifteen_words_per_output():
    p = CksParams(Fraction(65025, 16))
    used = []
    for j in range(1000):
        ws = WordStream(KEY, j, 0, 0, 0)
        discrete_gaussian_one_py(ws, p)
        used.append(ws.used)
    assert 8 < np.mean(used) < 25


def test_params_ranges():
    p = CksParams(Fraction(65025, 16))
    assert (p.num, p.den, p.t) == (65025, 16, 64)
    assert p.b_acc == 2 * 65025 * 16 * 64 * 64 < 2**62
    assert (p.den * p.t * p.y_max + p.num) ** 2 < 2**63  # A cannot overflow for |Y| <= y_max
    assert p.y_max**2 * p.den >= 64**2 * p.num  # cutoff beyond 64 sigma
    assert CksParams(Fraction(1, 4)).t == 1 and CksParams(Fraction(65025)).t == 256
    with pytest.raises(ValueError):
        CksParams(Fraction(2**44 + 1, 2**20))  # sigma = 4096, den = 2^20: B overflows
    with pytest.raises(ValueError):
        CksParams(Fraction(2**30 + 1, 2**10))  # sigma ~ 1024, den = 1024: cutoff below 64 sigma
