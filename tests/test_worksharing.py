"""Dynamic work sharing (kernels/numba_backend/worksharing.py): every task runs exactly once, on any
thread count and grain, and the kernels that use it give the same bits on one thread as on all.

The speed it is for (a preempted thread's work taken by the others) is measured by
``benchmarks/certify_speed.py``'s loaded rounds, never here."""
import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels
from kernels.fixedpoint import quantize_multipliers
from kernels.numba_backend.worksharing import CLAIMS_ENV, CLAIMS_PER_THREAD, claim_counts, work_split

THREAD_COUNTS = sorted({1, 2, numba.config.NUMBA_NUM_THREADS})


@pytest.fixture
def threads():
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)


@pytest.mark.parametrize("n_threads", THREAD_COUNTS)
@settings(max_examples=40, deadline=None)
@given(n_tasks=st.integers(0, 5000), grain=st.integers(1, 700), extra_workers=st.integers(0, 5))
def test_every_task_runs_once(n_threads, n_tasks, grain, extra_workers):
    # more workers than threads: a thread runs several workers one after the other, so the first one
    # steals from the shares of workers that have not started yet
    numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        hits, worker = claim_counts(np.int64(n_tasks), np.int64(numba.get_num_threads() + extra_workers),
                                    np.int64(grain))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert hits.shape == (n_tasks,)
    assert np.all(hits == 1)
    assert n_tasks == 0 or worker.min() >= 0


def test_claims_under_contention(threads):
    # grain 1 over 200,000 tasks: the threads claim concurrently hundreds of thousands of times, so a
    # non-atomic add would lose or duplicate claims
    threads(numba.config.NUMBA_NUM_THREADS)
    hits, _ = claim_counts(np.int64(200_000), np.int64(numba.get_num_threads()), np.int64(1))
    assert np.all(hits == 1)


@pytest.mark.parametrize("n_tasks,n_workers", [(12_800, 2), (12_801, 2), (37, 4), (5, 8)])
def test_one_claim_per_thread_is_the_static_split(monkeypatch, n_tasks, n_workers):
    # INTENGINE_CLAIMS_PER_THREAD=1: worker w runs exactly the w-th share, as prange's static split does,
    # even with more workers than threads (no stealing)
    monkeypatch.setenv(CLAIMS_ENV, "1")
    workers, grain = work_split(n_tasks, n_workers)
    hits, worker = claim_counts(np.int64(n_tasks), workers, grain)
    share = -(-n_tasks // n_workers)
    np.testing.assert_array_equal(hits, 1)
    np.testing.assert_array_equal(worker, np.arange(n_tasks) // share)


@pytest.mark.parametrize("n_tasks,n_workers,claims,grain", [
    (0, 2, None, 1), (1, 2, None, 1), (64, 2, None, 1), (65, 2, None, 2), (12_800, 2, None, 200),
    (12_800, 1, None, 400), (3_201, 2, None, 51), (10**12, 3, None, -(-10**12 // 96)),
    (12_800, 2, "1", 6_400), (12_801, 2, "1", 6_401), (7, 16, "3", 1),
])
def test_work_split(monkeypatch, n_tasks, n_workers, claims, grain):
    if claims is None:
        monkeypatch.delenv(CLAIMS_ENV, raising=False)
    else:
        monkeypatch.setenv(CLAIMS_ENV, claims)
    assert work_split(n_tasks, n_workers) == (n_workers, grain)
    per_thread = CLAIMS_PER_THREAD if claims is None else int(claims)
    # n_workers * claims_per_thread claims of `grain` cover every task; one claim fewer would not
    assert grain * n_workers * per_thread >= n_tasks
    assert grain == 1 or (grain - 1) * n_workers * per_thread < n_tasks


@pytest.mark.parametrize("raw", ["0", "-3", "many", "1.5"])
def test_claims_setting_refused(monkeypatch, raw):
    monkeypatch.setenv(CLAIMS_ENV, raw)
    with pytest.raises(ValueError, match=CLAIMS_ENV):
        work_split(100)


def _conv_case(rng, n, h, w, c, o, k, stride, padding):
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k, k, c), dtype=np.int8)
    bias = rng.integers(-5000, 5000, size=o, dtype=np.int32)
    mult, shift = quantize_multipliers(rng.uniform(1e-4, 0.05, size=o))
    return (x, weight, bias, int(rng.integers(0, 256)), mult, shift, int(rng.integers(0, 256)), stride, padding, 0, 255)


@pytest.mark.parametrize("claims", ["1", "32", "1000"])
@pytest.mark.parametrize("backend", [b for b in kernels.available_backends() if b.startswith("numba")])
def test_conv_and_add_same_bits_on_one_thread_and_all(backend, claims, threads, monkeypatch):
    monkeypatch.setenv(CLAIMS_ENV, claims)
    # a batch of 37 images x 9 rows: tasks not a multiple of any grain or thread count
    rng = np.random.default_rng(11)
    fast, reference = kernels.get_backend(backend), kernels.get_backend("reference")
    conv_args = _conv_case(rng, 37, 9, 11, 5, 20, 3, 1, 1)
    a = rng.integers(0, 256, size=(37, 9, 11, 20), dtype=np.uint8)
    b = rng.integers(0, 256, size=(37, 9, 11, 20), dtype=np.uint8)
    add_args = (a, b, 3, 1 << 30, -1, 250, 1_500_000_000, -2, 128, 0, 255)
    outputs = {}
    for n_threads in THREAD_COUNTS:
        threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        outputs[n_threads] = (fast.conv2d(*conv_args), fast.add_round_half_up(*add_args))
    want = (reference.conv2d(*conv_args), reference.add_round_half_up(*add_args))
    for got in outputs.values():
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])

