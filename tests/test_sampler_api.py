"""Public sampler API: sigma^2, purity in the indices (batch, chunk, threads), streams, IR, errors."""
from fractions import Fraction

import numba
import numpy as np
import pytest

from kernels.ircheck import assert_integer_only, llvm_ir_for
from kernels.sampler import (
    FAIL,
    Sampler,
    as_sigma_sq,
    make_sampler,
    resolve_seed,
    sample_discrete_gaussian,
    sigma_sq_from_sigma,
)
from kernels.sampler.cks import cks_add_noise_clip_numba, cks_fill_numba
from kernels.sampler.table import table_add_noise_clip_numba, table_fill_numba

SIGMA_025 = Fraction(65025, 16)
METHODS = ["table", "cks"]
SEED = 0xDEADBEEF12345678


def _fill(sampler, B, d, seed=SEED, stream=1, image=0, start=0):
    out = np.empty((B, d), np.int32)
    failed = np.empty(B, np.uint8)
    sampler.fill(seed, stream, image, start, out, failed)
    return out, failed


def test_sigma_sq_from_sigma():
    assert sigma_sq_from_sigma(0.25) == Fraction(65025, 16)
    assert sigma_sq_from_sigma("0.25") == Fraction(65025, 16)
    assert sigma_sq_from_sigma(0.12) == Fraction(23409, 25)
    assert sigma_sq_from_sigma(1.0) == 65025
    assert sigma_sq_from_sigma(0.5) == Fraction(65025, 4)
    for bad in (0, -0.1, "abc", float("nan"), True):
        with pytest.raises(ValueError):
            sigma_sq_from_sigma(bad)


def test_as_sigma_sq():
    assert as_sigma_sq((65025, 16)) == SIGMA_025
    assert as_sigma_sq((130050, 32)) == SIGMA_025
    assert as_sigma_sq(SIGMA_025) == SIGMA_025
    assert as_sigma_sq(10) == 10
    for bad in ((1, 0), (-1, 4), (1.5, 2), 0.25, "1/4", Fraction(2**24 + 1), Fraction(0)):
        with pytest.raises(ValueError):
            as_sigma_sq(bad)


@pytest.mark.parametrize("method", METHODS)
def test_sample_discrete_gaussian_shapes_and_fill(method):
    x = sample_discrete_gaussian((65025, 16), (6, 11), SEED, stream=1, method=method)
    assert x.dtype == np.int32 and x.shape == (6, 11)
    out, failed = _fill(make_sampler(SIGMA_025, method), 6, 11)
    np.testing.assert_array_equal(x, out)
    assert not failed.any()
    flat = sample_discrete_gaussian(SIGMA_025, 11, SEED, stream=1, method=method)
    np.testing.assert_array_equal(flat, out[0])
    assert sample_discrete_gaussian(SIGMA_025, (2, 3, 4), SEED, method=method).shape == (2, 3, 4)
    assert sample_discrete_gaussian(SIGMA_025, (0, 4), SEED, method=method).shape == (0, 4)
    assert sample_discrete_gaussian(SIGMA_025, 5, None, method=method).shape == (5,)


def test_methods_and_seeds_give_different_noise():
    a = sample_discrete_gaussian(SIGMA_025, 1000, SEED, method="table")
    b = sample_discrete_gaussian(SIGMA_025, 1000, SEED, method="cks")
    c = sample_discrete_gaussian(SIGMA_025, 1000, SEED + 1, method="table")
    d = sample_discrete_gaussian(SIGMA_025, 1000, SEED + (1 << 32), method="table")  # high key word
    assert (a != b).mean() > 0.9 and (a != c).mean() > 0.9 and (a != d).mean() > 0.9


@pytest.mark.parametrize("method", METHODS)
def test_noise_is_independent_of_batch_and_chunking(method):
    s = make_sampler(SIGMA_025, method)
    whole, whole_failed = _fill(s, 24, 37, image=5, start=100)
    for chunk in (1, 5, 8):
        parts = []
        for start in range(0, 24, chunk):
            b = min(chunk, 24 - start)
            parts.append(_fill(s, b, 37, image=5, start=100 + start)[0])
        np.testing.assert_array_equal(np.concatenate(parts), whole)
    # a prefix of the coordinates is the same noise too (d does not enter the counter)
    np.testing.assert_array_equal(_fill(s, 24, 20, image=5, start=100)[0], whole[:, :20])
    assert not whole_failed.any()


@pytest.mark.parametrize("method", METHODS)
def test_noise_is_independent_of_thread_count(method):
    s = make_sampler(SIGMA_025, method)
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = _fill(s, 33, 50)[0]
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two = _fill(s, 33, 50)[0]
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(one, two)


@pytest.mark.parametrize("method", METHODS)
def test_streams_images_samples_differ_and_are_uncorrelated(method):
    s = make_sampler(Fraction(10), method)
    B, d = 40, 500
    base = _fill(s, B, d, stream=0, image=0)[0].astype(float).ravel()
    others = [
        _fill(s, B, d, stream=1, image=0)[0],
        _fill(s, B, d, stream=0, image=1)[0],
        _fill(s, B, d, stream=0, image=0, start=B)[0],
    ]
    for o in others:
        o = o.astype(float).ravel()
        assert (o != base).mean() > 0.8
        r = np.corrcoef(base, o)[0, 1]
        assert abs(r) < 5 / np.sqrt(base.size)
    # neighbouring coordinates within a sample are uncorrelated as well
    grid = base.reshape(B, d)
    r = np.corrcoef(grid[:, :-1].ravel(), grid[:, 1:].ravel())[0, 1]
    assert abs(r) < 5 / np.sqrt(grid.size)


@pytest.mark.parametrize("method", METHODS)
def test_add_noise_clip_is_clipped_fill(method):
    s = make_sampler(SIGMA_025, method)
    rng = np.random.default_rng(3)
    d = 3 * 8 * 8
    x = rng.integers(0, 256, d, dtype=np.uint8)
    noise, failed = _fill(s, 16, d, image=9, start=40)
    out = np.empty((16, d), np.uint8)
    failed2 = np.empty(16, np.uint8)
    s.add_noise_clip(x, SEED, 1, 9, 40, out, failed2)
    np.testing.assert_array_equal(out, np.clip(x.astype(np.int64) + noise, 0, 255))
    np.testing.assert_array_equal(failed2, failed)
    assert (out == 0).any() and (out == 255).any()


def test_make_sampler_caches():
    assert make_sampler(SIGMA_025) is make_sampler((65025, 16), "table")
    assert make_sampler(SIGMA_025, "cks") is not make_sampler(SIGMA_025, "table")
    assert "65025/16" in repr(make_sampler(SIGMA_025))


def test_bad_arguments_raise_one_line_value_errors():
    s = make_sampler(SIGMA_025)
    out = np.empty((2, 3), np.int32)
    failed = np.empty(2, np.uint8)
    x = np.zeros(3, np.uint8)
    cases = [
        lambda: s.fill(-1, 0, 0, 0, out, failed),
        lambda: s.fill(1, 256, 0, 0, out, failed),
        lambda: s.fill(1, 0, 2**32, 0, out, failed),
        lambda: s.fill(1, 0, 0, 2**32 - 1, out, failed),
        lambda: s.fill(1, 0, 0, 0, out.astype(np.int64), failed),
        lambda: s.fill(1, 0, 0, 0, out, np.empty(3, np.uint8)),
        lambda: s.fill(1, 0, 0, 0, np.empty((3, 2), np.int32).T, failed),
        lambda: s.add_noise_clip(np.zeros(4, np.uint8), 1, 0, 0, 0, np.empty((2, 3), np.uint8), failed),
        lambda: s.add_noise_clip(x.astype(np.int32), 1, 0, 0, 0, np.empty((2, 3), np.uint8), failed),
        lambda: make_sampler(SIGMA_025, "gauss"),
        lambda: sample_discrete_gaussian(SIGMA_025, (-1,), 1),
        lambda: sample_discrete_gaussian(0.25, 3, 1),
    ]
    for case in cases:
        with pytest.raises(ValueError) as err:
            case()
        assert "\n" not in str(err.value)
    assert isinstance(Sampler(Fraction(1, 4), "cks"), Sampler)
    assert resolve_seed(5) == 5


def _fresh(dispatcher):
    """Recompile without the on-disk cache: Numba cannot show the IR of cached code."""
    return numba.njit(parallel=dispatcher.targetoptions.get("parallel", False))(dispatcher.py_func)


@pytest.mark.parametrize("method", METHODS)
def test_hot_loop_kernels_are_integer_only(method):
    s = make_sampler(SIGMA_025, method)
    head = s._prefix(SEED, 1, 0, 0, 2, 5)
    out = np.empty((2, 5), np.int32)
    noisy = np.empty((2, 5), np.uint8)
    failed = np.empty(2, np.uint8)
    x = np.zeros(5, np.uint8)
    fill, clip = (table_fill_numba, table_add_noise_clip_numba) if method == "table" else (
        cks_fill_numba, cks_add_noise_clip_numba)
    for kernel, args in ((fill, (*head, *s._params, out, failed)), (clip, (*head, x, *s._params, noisy, failed))):
        fresh = _fresh(kernel)
        ir = llvm_ir_for(fresh, *args)
        assert "parfor" in ir and len(ir) > 20_000  # the parallel loop body is in the IR we check
        assert_integer_only(fresh, *args)


def test_ircheck_would_catch_a_float():
    @numba.njit
    def float_noise(x):
        return np.int32(x * 0.5)

    with pytest.raises(AssertionError):
        assert_integer_only(float_noise, np.int32(3))


def test_fail_is_int32_min():
    assert FAIL == np.iinfo(np.int32).min


@pytest.mark.parametrize("method", ["table", "cks"])
def test_long_rows_split_into_units_without_changing_a_bit(method):
    # rows longer than SPAN run as several work units (a one-sample call uses every thread);
    # an odd length crossing two unit borders must equal the unsplit per-coordinate definition
    from kernels.sampler.params import SPAN
    from kernels.sampler.philox import seed_to_key, stream_word
    from kernels.sampler.table import table_fill_np

    sq = Fraction(9, 1)
    d = 2 * SPAN + 3 if method == "table" else SPAN + 3
    one_row = sample_discrete_gaussian(sq, d, 11, method=method)
    two_rows = sample_discrete_gaussian(sq, (2, d), 11, method=method)
    np.testing.assert_array_equal(one_row, two_rows[0])
    if method == "table":
        sampler = make_sampler(sq, "table")
        want, _ = table_fill_np(sampler.table, seed_to_key(11), stream_word(0), 0, 0, 2, d)
        np.testing.assert_array_equal(two_rows, want)
    else:  # coordinate j depends on j alone: the head of a long row is a short row
        np.testing.assert_array_equal(one_row[:7], sample_discrete_gaussian(sq, 7, 11, method=method))
    assert len(np.unique(one_row[-SPAN:])) > 5  # the last unit was filled, not left empty


def test_failed_flags_are_reduced_over_units():
    from kernels.sampler.params import failed_rows

    bad = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]], dtype=np.uint8)
    failed = np.full(3, 7, dtype=np.uint8)
    failed_rows(bad, failed)
    np.testing.assert_array_equal(failed, [1, 0, 1])
