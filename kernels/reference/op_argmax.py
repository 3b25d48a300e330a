"""argmax: predicted class per row of logits (the specification)."""
from __future__ import annotations

import numpy as np

from kernels import checks


def argmax(logits):
    """First index of the maximum of each row: ties go to the lowest class id.

    ``logits`` (N, num_classes) uint8; returns int32 (N,).  Comparisons only.
    """
    logits = checks.argmax_args(logits)
    return np.argmax(logits, axis=1).astype(np.int32)
