"""avg_pool_round_half_up: k x k average pooling without padding (the specification)."""
from __future__ import annotations

import numpy as np

from kernels import checks
from kernels.fixedpoint import requantize_round_half_up


def avg_pool_round_half_up(x, kernel, stride, input_zero_point, output_multiplier,
                           output_shift, output_zero_point, act_min, act_max):
    """Average pooling as a window sum requantized once.

    ``x`` (N, H, W, C) uint8; returns uint8 (N, OH, OW, C) with
    ``OH = (H - kernel)//stride + 1``; no padding.  ``(output_multiplier,
    output_shift)`` (int scalars) quantizes ``s_in / (s_out * kernel^2)``, so the
    division by the window size is folded into the multiplier::

        acc = sum_{i,j < kernel} (x[n, oh*stride+i, ow*stride+j, c] - input_zero_point)
        out = clamp(requant(acc, M, shift) + output_zero_point, act_min, act_max)

    Rounding: single rounding, ties toward +infinity.  Global pooling is
    ``kernel = H = W``, ``stride = 1``.  Overflow: ``|acc| <= 255 * kernel^2``
    with ``kernel^2 <= 16577`` (checked), far inside int32.
    """
    (x, kernel, stride, input_zero_point, output_multiplier, output_shift,
     output_zero_point, act_min, act_max, oh, ow) = checks.avg_pool_args(
        x, kernel, stride, input_zero_point, output_multiplier, output_shift,
        output_zero_point, act_min, act_max)
    shifted = x.astype(np.int64) - input_zero_point
    acc = np.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=np.int64)
    for i in range(kernel):
        for j in range(kernel):
            acc += shifted[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
    out = requantize_round_half_up(acc, output_multiplier, output_shift) + output_zero_point
    return np.clip(out, act_min, act_max).astype(np.uint8)
