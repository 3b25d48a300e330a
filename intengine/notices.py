"""One-line notices on stderr that save a newcomer minutes: cold Numba cache, capped thread count."""
from __future__ import annotations

import os
import sys

COMPILE_TEXT = "compiling kernels (first run only, ~10 s)..."


def numba_cache_is_cold() -> bool:
    """True when the on-disk Numba cache has no index for the argmax kernel (every numba run compiles it).

    A few ``stat`` calls, no compilation; False when Numba's cache layout cannot be read."""
    try:
        from kernels.numba_backend.op_argmax import _argmax_kernel

        return not os.path.exists(_argmax_kernel._cache._cache_file._index_path)
    except Exception:  # a private Numba attribute moved: say nothing rather than fail
        return False


def compile_notice(backend: str, stream=None) -> bool:
    """Print COMPILE_TEXT once when the numba backend will compile; returns whether it printed."""
    if backend != "numba" or not numba_cache_is_cold():
        return False
    print(COMPILE_TEXT, file=stream or sys.stderr, flush=True)
    return True


def set_threads_noting_cap(threads: int | None, stream=None) -> None:
    """``smoothing.set_threads``, saying once when the request exceeds the cores Numba may use."""
    from intengine.smoothing import set_threads

    if threads is not None:
        import numba

        available = int(numba.config.NUMBA_NUM_THREADS)
        if threads > available:
            print(f"intengine: --threads {threads} is more than the {available} available cores; using {available}",
                  file=stream or sys.stderr, flush=True)
    set_threads(threads)
