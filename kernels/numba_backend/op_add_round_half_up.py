"""add_round_half_up, Numba backend: same signature and bits as :func:`kernels.reference.add_round_half_up`.

Elementwise over the flattened tensors, parallel over chunks, 16 elements at a
time in explicit ``<16 x i64>`` LLVM vector IR (:func:`_add16`: the reference
formula lane by lane; LLVM lowers it to AVX-512 ``vpmullq``/``vpsraq`` where the
CPU has them and to narrower instructions elsewhere), the remainder with the
scalar formula.  Numba's auto-vectorizer leaves the scalar loop alone, and a
256 x 256 result table is still a scalar lookup per element; the vector form
is several times faster than either.  The two scaled terms are below 2^59 each
(|a - zp| < 2^8, M < 2^31, relative shift <= 20), so the int64 sum and its
rounding term (<= 2^61) cannot overflow.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels import checks
from kernels.numba_backend.llvm_vector import V16B, V16Q, array_data, clamp, splat, vector_ptr

_CHUNK = 4096


@njit(cache=True, inline="always")
def _add_one(av, bv, a_zero_point, a_scale, b_zero_point, b_scale, rounding, total_shift,
             output_zero_point, act_min, act_max):
    # a_scale = Ma << (a_shift - smin) < 2^51, likewise b_scale; total_shift = 31 - smin in [1, 62]
    v = (np.int64(av) - a_zero_point) * a_scale + (np.int64(bv) - b_zero_point) * b_scale
    r = ((v + rounding) >> total_shift) + output_zero_point
    if r < act_min:
        r = act_min
    elif r > act_max:
        r = act_max
    return np.uint8(r)


@intrinsic
def _add16(typingctx, a, b, out, i, a_zero_point, a_scale, b_zero_point, b_scale, rounding, total_shift,
           output_zero_point, act_min, act_max):
    """out[i:i+16] = the formula of _add_one on a[i:i+16], b[i:i+16], in <16 x i64> lanes."""
    sig = types.void(a, b, out, i, a_zero_point, a_scale, b_zero_point, b_scale, rounding, total_shift,
                     output_zero_point, act_min, act_max)

    def codegen(context, builder, signature, args):
        a_, b_, o_, i_ = args[:4]
        azp, ascale, bzp, bscale, rnd, tshift, ozp, lo, hi = (splat(builder, v, V16Q) for v in args[4:])
        ty = signature.args
        av = builder.zext(builder.load(vector_ptr(builder, array_data(context, builder, ty[0], a_), i_, V16B),
                                       align=1), V16Q)
        bv = builder.zext(builder.load(vector_ptr(builder, array_data(context, builder, ty[1], b_), i_, V16B),
                                       align=1), V16Q)
        v = builder.add(builder.mul(builder.sub(av, azp), ascale), builder.mul(builder.sub(bv, bzp), bscale))
        r = builder.add(builder.ashr(builder.add(v, rnd), tshift), ozp)
        r = builder.trunc(clamp(builder, r, lo, hi), V16B)
        builder.store(r, vector_ptr(builder, array_data(context, builder, ty[2], o_), i_, V16B), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, parallel=True)
def _add_vector_kernel(a, b, a_zero_point, a_scale, b_zero_point, b_scale, total_shift,
                       output_zero_point, act_min, act_max, out):
    # a, b, out (size,) uint8; chunks are multiples of 16, so only the last one has a scalar tail
    size = a.shape[0]
    rounding = np.int64(1) << (total_shift - np.int64(1))
    n_chunks = (size + _CHUNK - 1) // _CHUNK
    for chunk in prange(n_chunks):
        start = chunk * _CHUNK
        stop = min(size, start + _CHUNK)
        i = start
        while i + 16 <= stop:
            _add16(a, b, out, np.int64(i), a_zero_point, a_scale, b_zero_point, b_scale, rounding, total_shift,
                   output_zero_point, act_min, act_max)
            i += 16
        for k in range(i, stop):
            out[k] = _add_one(a[k], b[k], a_zero_point, a_scale, b_zero_point, b_scale, rounding,
                              total_shift, output_zero_point, act_min, act_max)


def add_round_half_up(a, b, a_zero_point, a_multiplier, a_shift, b_zero_point,
                      b_multiplier, b_shift, output_zero_point, act_min, act_max, out=None):
    """Residual add; see :func:`kernels.reference.add_round_half_up` for the definition."""
    (a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
     output_zero_point, act_min, act_max) = checks.add_args(
        a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
        output_zero_point, act_min, act_max)
    smin = min(a_shift, b_shift)
    out = checks.output_buffer(out, a.shape, a, b)
    _add_vector_kernel(a.reshape(-1), b.reshape(-1), a_zero_point, a_multiplier << (a_shift - smin),
                b_zero_point, b_multiplier << (b_shift - smin), 31 - smin,
                output_zero_point, act_min, act_max, out.reshape(-1))
    return out
