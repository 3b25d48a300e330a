"""Dynamic work sharing for the parallel kernels: each thread runs its own share of the tasks in claimed
chunks, then takes chunks of the others' shares that are still unclaimed.

Why: Numba's ``prange`` splits its range statically (the OpenMP layer's ``omp for`` has no schedule
clause; the workqueue layer splits evenly too), so a layer ends when the slowest thread's share ends.
On a shared machine one thread preempted by another process stalls every layer (measured: 0.36-0.41
of the idle throughput beside one busy process on 2 cores, where a fair share is 2/3). Here ``prange``
runs one iteration per thread (worker ``w``); worker ``w`` owns the ``w``-th equal share of the tasks,
as in the static split, and claims it ``grain`` tasks at a time with an atomic fetch-and-add on the
share's counter; when its share is exhausted it claims from the next workers' shares. A preempted
thread's unclaimed tasks are taken by the others; the only wait left is the one chunk it holds. Owning
a share keeps the static split's locality on an idle machine (worker ``w`` reads, in layer L+1, the
images it wrote in layer L: a pure first-come claim order measured 4-8% slower idle on ResNet-50).
Which thread runs a task never changes its result, so the output bits are the same for every split.

The Python wrapper computes ``n_workers, grain = work_split(n_tasks)`` (a kernel that calls
``numba.get_num_threads()`` itself cannot be cached: Numba links it through a ctypes pointer) and
the kernel inlines the pattern, written out in each kernel: Numba has no cheap closures, and a helper
returning the next chunk as a tuple (one ``next_chunk`` for all kernels) measured 8-10% slower on
ResNet-20 (3 alternating runs of ``certify_speed.py --peers intengine``)::

    share = (n_tasks + n_workers - 1) // n_workers
    counters = np.zeros(n_workers * COUNTER_STRIDE, dtype=np.int64)
    for w in prange(n_workers):
        ...                                   # per-thread scratch
        for victim in range(victims(n_workers, grain, share)):
            v = (w + victim) % n_workers      # own share first
            first_task, last_task = v * share, min((v + 1) * share, n_tasks)
            while True:
                first = first_task + fetch_add(counters, v * COUNTER_STRIDE, grain)
                if first >= last_task:
                    break
                for task in range(first, min(first + grain, last_task)):
                    ...                       # one task
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels.numba_backend.llvm_vector import array_data

# Claims per thread when the work is split evenly: enough that the chunk a preempted thread holds is a
# small part of a layer (1/32 of its share), few enough that claiming (one uncontended atomic add, ~20 ns)
# costs nothing beside a chunk (>= one output row of a conv layer, ~1 us and up).
CLAIMS_PER_THREAD = 32
# INTENGINE_CLAIMS_PER_THREAD overrides it; 1 claims each share whole and steals nothing: the static split
# Numba's prange makes (benchmarks/certify_speed.py's "intengine-static" peer, for an A/B in one run).
CLAIMS_ENV = "INTENGINE_CLAIMS_PER_THREAD"
# int64 slots between two shares' counters: 64 bytes, one cache line each, so claims on different shares
# do not contend for a line
COUNTER_STRIDE = 8


@intrinsic
def fetch_add(typingctx, counters, index, value):
    """``old = counters[index]; counters[index] += value; return old`` as one atomic operation (int64).

    Monotonic ordering: a claim needs only that no two threads get the same ``old``; the tasks'
    outputs are ordered before the caller reads them by the join at the end of the parallel region."""
    if not (isinstance(counters, types.Array) and counters.dtype == types.int64 and counters.ndim == 1):
        return None
    if index != types.int64 or value != types.int64:
        return None
    sig = types.int64(counters, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        ptr = builder.gep(array_data(context, builder, signature.args[0], args[0]), [args[1]])
        return builder.atomic_rmw("add", ptr, args[2], "monotonic")

    return sig, codegen


@njit(cache=True, inline="always")
def victims(n_workers, grain, share):
    """Shares a worker visits: all of them (its own first), or only its own when one claim takes a whole
    share (claims per thread 1: the static split)."""
    return n_workers if grain < share else 1


def claims_per_thread() -> int:
    """``$INTENGINE_CLAIMS_PER_THREAD`` (a positive integer) or :data:`CLAIMS_PER_THREAD`."""
    raw = os.environ.get(CLAIMS_ENV, "")
    if not raw:
        return CLAIMS_PER_THREAD
    try:
        claims = int(raw)
    except ValueError:
        claims = 0
    if claims < 1:
        raise ValueError(f"{CLAIMS_ENV} must be a positive integer, got {raw!r}")
    return claims


def work_split(n_tasks: int, n_workers: int | None = None) -> tuple[np.int64, np.int64]:
    """``(n_workers, grain)`` for a kernel sharing ``n_tasks`` tasks: the threads Numba runs now and the
    tasks per claim, ``n_tasks / (n_workers * claims_per_thread())`` rounded up, at least 1 (rounded up so
    that one claim per thread covers everything when the claims are 1)."""
    if n_workers is None:
        n_workers = numba.get_num_threads()
    claims = max(int(n_workers), 1) * claims_per_thread()
    return np.int64(n_workers), np.int64(max(-(-int(n_tasks) // claims), 1))


@njit(cache=True, parallel=True)
def claim_counts(n_tasks, n_workers, grain):
    """``(hits, worker)``: how many times each task ran (all ones when the scheme is right) and which worker
    ran it last, when ``n_tasks`` tasks are shared by ``n_workers`` threads in claims of ``grain``: the
    pattern above, verbatim (tested on every thread count)."""
    hits = np.zeros(n_tasks, dtype=np.int64)
    worker = np.full(n_tasks, -1, dtype=np.int64)
    share = (n_tasks + n_workers - 1) // n_workers
    counters = np.zeros(n_workers * COUNTER_STRIDE, dtype=np.int64)
    for w in prange(n_workers):
        for victim in range(victims(n_workers, grain, share)):
            v = (w + victim) % n_workers
            first_task, last_task = v * share, min((v + 1) * share, n_tasks)
            while True:
                first = first_task + fetch_add(counters, v * COUNTER_STRIDE, grain)
                if first >= last_task:
                    break
                for task in range(first, min(first + grain, last_task)):
                    hits[task] += 1
                    worker[task] = w
    return hits, worker
