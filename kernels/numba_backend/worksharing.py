"""Dynamic work sharing for the parallel kernels: threads claim chunks of tasks from one atomic counter.

Why: Numba's ``prange`` splits its range statically (the OpenMP layer's ``omp for`` has no schedule
clause; the workqueue layer splits evenly too), so a layer ends when the slowest thread's share ends.
On a shared machine one thread preempted by another process stalls every layer (measured: 0.41 of the
idle throughput beside one busy process on 2 cores, where a fair share is 2/3). Here ``prange`` runs
one iteration per thread, and each iteration claims ``grain`` consecutive tasks at a time with an
atomic fetch-and-add until none remain: a preempted thread's tasks are taken by the others, and the
only wait left is the one chunk it holds. Which thread runs a task never changes the task's result,
so the output bits are the same for every split.

The Python wrapper computes ``n_workers, grain = work_split(n_tasks)`` (a kernel that calls
``numba.get_num_threads()`` itself cannot be cached: Numba links it through a ctypes pointer) and
the kernel inlines the pattern (Numba has no cheap closures)::

    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        ...                         # per-thread scratch
        while True:
            first = fetch_add(counter, grain)
            if first >= n_tasks:
                break
            for task in range(first, min(first + grain, n_tasks)):
                ...                 # one task
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
# INTENGINE_CLAIMS_PER_THREAD overrides it; 1 gives every thread one equal share, i.e. the static split
# Numba's prange makes (benchmarks/certify_speed.py's "intengine-static" peer, for an A/B in one run).
CLAIMS_ENV = "INTENGINE_CLAIMS_PER_THREAD"


@intrinsic
def fetch_add(typingctx, counter, value):
    """``old = counter[0]; counter[0] += value; return old`` as one atomic operation (int64).

    Monotonic ordering: a claim needs only that no two threads get the same ``old``; the tasks'
    outputs are ordered before the caller reads them by the join at the end of the parallel region."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64 and counter.ndim == 1):
        return None
    if value != types.int64:
        return None
    sig = types.int64(counter, types.int64)

    def codegen(context, builder, signature, args):
        ptr = array_data(context, builder, signature.args[0], args[0])
        return builder.atomic_rmw("add", ptr, args[1], "monotonic")

    return sig, codegen


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
    """How many times each task was run when ``n_tasks`` tasks are shared by ``n_workers`` threads in
    claims of ``grain``: all ones when the scheme is right (the pattern above, verbatim; tested on every
    thread count)."""
    hits = np.zeros(n_tasks, dtype=np.int64)
    counter = np.zeros(1, dtype=np.int64)
    for _ in prange(n_workers):
        while True:
            first = fetch_add(counter, grain)
            if first >= n_tasks:
                break
            for task in range(first, min(first + grain, n_tasks)):
                hits[task] += 1
    return hits

