"""LLVM IR helpers for the hand-vectorized kernels (the SIMD conv2d micro-kernels, the residual add).

Vector types and operations here are generic LLVM IR (no target intrinsics): LLVM lowers a
``<16 x i64>`` add or multiply to whatever the host has (two zmm registers with AVX-512, more
instructions on narrower CPUs), so code built from these helpers runs on every CPU.
"""
from __future__ import annotations

from llvmlite import ir

I64 = ir.IntType(64)
I32 = ir.IntType(32)
I8 = ir.IntType(8)
V16 = ir.VectorType(I32, 16)    # 16 x int32: one zmm register
V16Q = ir.VectorType(I64, 16)   # 16 x int64: two zmm registers
V16B = ir.VectorType(I8, 16)    # 16 x uint8: one xmm register
I16 = ir.IntType(16)


def array_data(context, builder, ty, value):
    """The data pointer of a Numba array argument."""
    return context.make_array(ty)(context, builder, value).data


def splat(builder, scalar, vty):
    """A vector of type ``vty`` with every lane equal to ``scalar``."""
    v = builder.insert_element(ir.Constant(vty, ir.Undefined), scalar, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined), ir.Constant(ir.VectorType(I32, vty.count),
                                                                                 [0] * vty.count))


def clamp(builder, v, lo, hi):
    """Lane-wise ``min(max(v, lo), hi)`` (signed)."""
    v = builder.select(builder.icmp_signed("<", v, lo), lo, v)
    return builder.select(builder.icmp_signed(">", v, hi), hi, v)


def vector_ptr(builder, base, offset, vty):
    """``base + offset`` (an element pointer) as a pointer to ``vty`` (a vector or a wider integer)."""
    return builder.bitcast(builder.gep(base, [offset]), vty.as_pointer())
