"""argmax, Numba backend: same signature and bits as :func:`kernels.reference.argmax`.

First index of the maximum per row (strict ``>`` keeps the lowest class id on
ties).  Comparisons only.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels import checks


@njit(cache=True, parallel=True)
def _argmax_kernel(logits, out):
    # logits (N, num_classes) uint8; out (N,) int32
    n_batch, n_classes = logits.shape
    for n in prange(n_batch):
        best = 0
        for k in range(1, n_classes):
            if logits[n, k] > logits[n, best]:
                best = k
        out[n] = np.int32(best)


def argmax(logits):
    """Predicted class per row; see :func:`kernels.reference.argmax`."""
    logits = checks.argmax_args(logits)
    out = np.empty(logits.shape[0], dtype=np.int32)
    _argmax_kernel(logits, out)
    return out
