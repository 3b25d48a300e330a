"""max_pool, Numba backend: same signature and bits as :func:`kernels.reference.max_pool`.

Parallel over output rows ``(n, oh)``; out-of-range taps are skipped, which is
the reference's "padding never wins" (``padding < kernel`` keeps every window
non-empty).  Comparisons only. Each window's running maximum lives in a per-task
row that cannot alias the input, so LLVM vectorizes the channel loop
(``vpmaxub``, 32 channels per instruction on AVX2).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks


@njit(cache=True, parallel=True)
def _max_pool_kernel(x, kernel, stride, padding, out):
    # x (N, H, W, C) uint8; out (N, OH, OW, C) uint8
    n_batch, height, width, channels = x.shape
    out_h, out_w = out.shape[1], out.shape[2]
    for task in prange(n_batch * out_h):
        n = task // out_h
        oh = task - n * out_h
        best = np.empty(channels, dtype=np.uint8)
        for ow in range(out_w):
            for c in range(channels):  # explicit loops: Numba's slice assignment sizes with float math
                best[c] = 0
            for i in range(kernel):
                ih = oh * stride - padding + i
                if ih < 0 or ih >= height:
                    continue
                for j in range(kernel):
                    iw = ow * stride - padding + j
                    if iw < 0 or iw >= width:
                        continue
                    src = x[n, ih, iw]
                    for c in range(channels):
                        best[c] = max(best[c], src[c])
            dst = out[n, oh, ow]
            for c in range(channels):
                dst[c] = best[c]


def max_pool(x, kernel, stride, padding):
    """Max pooling; see :func:`kernels.reference.max_pool` for the definition."""
    x, kernel, stride, padding, oh, ow = checks.max_pool_args(x, kernel, stride, padding)
    out = np.empty((x.shape[0], oh, ow, x.shape[3]), dtype=np.uint8)
    _max_pool_kernel(x, kernel, stride, padding, out)
    return out
