"""NumPy reference kernels: plain, readable, int64 inside -- the specification.

Each op lives in its own ``op_<name>.py``; its docstring states the formula,
layout, dtypes, rounding rule and why it cannot overflow.
"""
from kernels.reference.op_add_round_half_up import add_round_half_up
from kernels.reference.op_argmax import argmax
from kernels.reference.op_avg_pool_round_half_up import avg_pool_round_half_up
from kernels.reference.op_conv2d import conv2d
from kernels.reference.op_linear import linear
from kernels.reference.op_max_pool import max_pool

__all__ = ["conv2d", "linear", "add_round_half_up", "avg_pool_round_half_up", "max_pool", "argmax"]
