"""linear: quantized fully connected layer (the specification)."""
from __future__ import annotations

import numpy as np

from kernels import checks
from kernels.fixedpoint import requantize_round_half_up


def linear(x, weight, bias, input_zero_point, output_multiplier, output_shift,
           output_zero_point, act_min, act_max):
    """Quantized linear layer: conv2d with a 1x1 window.

    Layout and dtypes: ``x`` (N, K) uint8, ``weight`` (O, K) int8 in [-127, 127],
    ``bias`` (O,) int32, ``output_multiplier``/``output_shift`` (O,) int32.
    Returns uint8 (N, O)::

        acc[n,o] = bias[o] + sum_k (x[n,k] - input_zero_point) * weight[o,k]
        out = clamp(requant(acc, M[o], shift[o]) + output_zero_point, act_min, act_max)

    Rounding: single rounding, ties toward +infinity (:mod:`kernels.fixedpoint`).
    Overflow: ``K <= 16577`` (checked) keeps the dot product below 2^29, so
    ``|acc| < 2^31 + 2^29`` and the int64 requantization cannot overflow.
    """
    (x, weight, bias, input_zero_point, output_multiplier, output_shift,
     output_zero_point, act_min, act_max) = checks.linear_args(
        x, weight, bias, input_zero_point, output_multiplier, output_shift,
        output_zero_point, act_min, act_max)
    # (N, K) @ (K, O) in int64
    acc = (x.astype(np.int64) - input_zero_point) @ weight.astype(np.int64).T
    acc += bias.astype(np.int64)
    out = requantize_round_half_up(acc, output_multiplier, output_shift) + output_zero_point
    return np.clip(out, act_min, act_max).astype(np.uint8)
