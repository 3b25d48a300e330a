"""The ``numba-portable`` backend: the numba ops with every CPU-specific fast path switched off.

Same names, signatures and bits as the ``numba`` backend; on CPUs without
AVX-512 VNNI the two are the same code.  Tests run against both, so the
portable path stays correct on machines that have VNNI.
"""
from kernels.numba_backend.op_add_round_half_up import add_round_half_up
from kernels.numba_backend.op_argmax import argmax
from kernels.numba_backend.op_avg_pool_round_half_up import avg_pool_round_half_up
from kernels.numba_backend.op_conv2d import conv2d_portable as conv2d
from kernels.numba_backend.op_linear import linear
from kernels.numba_backend.op_max_pool import max_pool

__all__ = ["conv2d", "linear", "add_round_half_up", "avg_pool_round_half_up", "max_pool", "argmax"]
