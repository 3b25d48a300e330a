"""Numba kernels: the same op names and signatures as :mod:`kernels.reference`, the same bits.

Each op is a thin Python wrapper (argument checks shared with the reference,
output allocation) around one ``@njit(cache=True)`` kernel that is
integer-only (``tests/test_no_float.py`` proves it on the LLVM IR).  Scalars
reach the kernels as Python ints (int64), arrays C-contiguous, so each kernel
compiles for one type signature.
"""
from kernels.numba_backend.op_add_round_half_up import add_round_half_up
from kernels.numba_backend.op_argmax import argmax
from kernels.numba_backend.op_avg_pool_round_half_up import avg_pool_round_half_up
from kernels.numba_backend.op_conv2d import conv2d
from kernels.numba_backend.op_linear import linear
from kernels.numba_backend.op_max_pool import max_pool

__all__ = ["conv2d", "linear", "add_round_half_up", "avg_pool_round_half_up", "max_pool", "argmax"]
