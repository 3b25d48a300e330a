"""max_pool: k x k max pooling (the specification)."""
from __future__ import annotations

import numpy as np

from kernels import checks


def max_pool(x, kernel, stride, padding):
    """Max over each ``kernel x kernel`` window; padded positions never win.

    ``x`` (N, H, W, C) uint8; returns uint8 (N, OH, OW, C) with
    ``OH = (H + 2*padding - kernel)//stride + 1``.  ``padding < kernel``
    (checked), so every window holds at least one real element; padding acts as
    -infinity.  The output keeps the input's scale and zero point; no arithmetic,
    so no rounding and no overflow.
    """
    x, kernel, stride, padding, oh, ow = checks.max_pool_args(x, kernel, stride, padding)
    # pad with -1 in int16: below every uint8 value, so it never wins
    padded = np.pad(x.astype(np.int16), ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                    constant_values=-1)
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -1, dtype=np.int16)
    for i in range(kernel):
        for j in range(kernel):
            tap = padded[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
            np.maximum(out, tap, out=out)
    return out.astype(np.uint8)
