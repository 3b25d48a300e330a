"""add_round_half_up, Numba backend: same signature and bits as :func:`kernels.reference.add_round_half_up`.

Elementwise over the flattened tensors, parallel over chunks, 16 elements at a
time in explicit LLVM vector IR (:func:`_add16`), the remainder with the scalar
formula. The vector form evaluates the reference's integer lane by lane, arranged
so that every CPU has cheap instructions for it:

* ``(a - a_zp) * (Ma << ea)`` as ``((a - a_zp) * Ma) << ea``: both factors are
  sign-extended int32, so the product is one ``vpmuldq`` (32 x 32 -> 64 bits,
  AVX2 and AVX-512 alike) instead of a 64 x 64 multiply that AVX2 lacks;
* the arithmetic shift ``(v + 2^(t-1)) >> t`` as a logical one on the
  non-negative ``w = v + 2^(t-1) + 2^62``: ``w >> t`` (logical) equals
  ``((v + 2^(t-1)) >> t) + 2^(62-t)`` exactly, since ``2^62`` is a multiple of ``2^t``
  (``t <= 62``), and AVX2 has ``vpsrlq`` but no 64-bit ``vpsraq``.

The *high-dword form* (``_add16_high``, taken where it applies: every shipped model) does less work per
lane. With ``k = max(0, 32 - t)``, pre-shift both operands in int32 lanes, ``d = (x - zp) << (exp + k)``
(exact while ``exp + k <= 22``: ``|d| <= 255 * 2^22 < 2^30``), multiply ``d * M`` as two in-place
``vpmuldq`` over the even and the odd lanes (no widening to int64 lanes), add ``2^(t+k-1)``, and keep
only the high dword of each 64-bit sum: ``floor(y / 2^(t+k)) = floor(floor(y / 2^32) / 2^(t+k-32))``,
so one 32-bit arithmetic shift and a 32-bit clamp finish it. Bounds: ``|d * M| < 2^61``, so
``|y| < 2^62 + 2^61`` (the rounding term is at most ``2^61``, at ``t = 62``). Where ``exp + k > 22``
(shifts of unusual size), the int64 form below runs.

Bounds: each scaled term is below 2^59 (|a - zp| < 2^8, M < 2^31, relative shift
<= 20), so |v| < 2^60, the rounding term is at most 2^61, and
``0 < w < 2^62 + 2^60 + 2^61 < 2^63``: no int64 lane wraps. Numba's auto-vectorizer
leaves the scalar loop alone, and a 256 x 256 result table is still a scalar lookup
per element; the vector form is several times faster than either.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from kernels import checks
from llvmlite import ir

from kernels.numba_backend.llvm_vector import I32, I64, V16, V16B, V16Q, array_data, clamp, splat, vector_ptr
from kernels.numba_backend.worksharing import COUNTER_STRIDE, fetch_add, victims, work_split

V8Q = ir.VectorType(I64, 8)
# lane 2i <- dword 2i+1 of the even products (a high dword), lane 2i+1 <- dword 2i+1 of the odd ones
_INTERLEAVE_HIGH = ir.Constant(ir.VectorType(I32, 16), [k + 1 if k % 2 == 0 else 16 + k for k in range(16)])

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
def _add16(typingctx, a, b, out, i, a_zero_point, a_multiplier, a_exp, b_zero_point, b_multiplier, b_exp,
           total_shift, output_zero_point, act_min, act_max):
    """out[i:i+16] = the formula of _add_one on a[i:i+16], b[i:i+16] (see the module doc for the form)."""
    sig = types.void(a, b, out, i, a_zero_point, a_multiplier, a_exp, b_zero_point, b_multiplier, b_exp,
                     total_shift, output_zero_point, act_min, act_max)

    def codegen(context, builder, signature, args):
        a_, b_, o_, i_ = args[:4]
        azp, am, aexp, bzp, bm, bexp, tshift, ozp, lo, hi = args[4:]
        ty = signature.args

        def scaled(arr, ty_arr, zp, multiplier, exp):
            # ((x - zp) * M) << exp with both factors sign-extended int32: one vpmuldq per 4 lanes
            x = builder.zext(builder.load(vector_ptr(builder, array_data(context, builder, ty_arr, arr), i_, V16B),
                                          align=1), V16)
            d = builder.sext(builder.sub(x, splat(builder, builder.trunc(zp, I32), V16)), V16Q)
            m = builder.sext(splat(builder, builder.trunc(multiplier, I32), V16), V16Q)
            return builder.shl(builder.mul(d, m), splat(builder, exp, V16Q))

        v = builder.add(scaled(a_, ty[0], azp, am, aexp), scaled(b_, ty[1], bzp, bm, bexp))
        # w = v + 2^(t-1) + 2^62 > 0; logical w >> t == ((v + 2^(t-1)) >> t) + 2^(62-t)
        one = ir.Constant(I64, 1)
        offset = builder.add(builder.shl(one, builder.sub(tshift, one)), ir.Constant(I64, 1 << 62))
        w = builder.add(v, splat(builder, offset, V16Q))
        r = builder.lshr(w, splat(builder, tshift, V16Q))
        # back to the signed result, minus the offset's 2^(62-t), plus the output zero point, in one add
        back = builder.sub(ozp, builder.shl(one, builder.sub(ir.Constant(I64, 62), tshift)))
        r = builder.add(r, splat(builder, back, V16Q))
        r = builder.trunc(clamp(builder, r, splat(builder, lo, V16Q), splat(builder, hi, V16Q)), V16B)
        builder.store(r, vector_ptr(builder, array_data(context, builder, ty[2], o_), i_, V16B), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _add16_high(typingctx, a, b, out, i, a_zero_point, a_multiplier, a_exp, b_zero_point, b_multiplier, b_exp,
                shift_high, rounding, output_zero_point, act_min, act_max):
    """out[i:i+16] = the formula of _add_one, in the high-dword form (see the module doc): ``a_exp``,
    ``b_exp`` here include the pre-shift ``k`` and ``shift_high = t + k - 32 >= 0``."""
    sig = types.void(a, b, out, i, a_zero_point, a_multiplier, a_exp, b_zero_point, b_multiplier, b_exp,
                     shift_high, rounding, output_zero_point, act_min, act_max)

    def codegen(context, builder, signature, args):
        a_, b_, o_, i_ = args[:4]
        azp, am, aexp, bzp, bm, bexp, sh, rnd, ozp, lo, hi = args[4:]
        ty = signature.args
        c32 = ir.Constant(V8Q, [32] * 8)

        def products(arr, ty_arr, zp, multiplier, exp):
            # d = (x - zp) << exp in int32 lanes (|d| < 2^31), then d * M for the even and the odd lanes
            # in place: two vpmuldq, no widening
            x = builder.zext(builder.load(vector_ptr(builder, array_data(context, builder, ty_arr, arr), i_, V16B),
                                          align=1), V16)
            d = builder.shl(builder.sub(x, splat(builder, builder.trunc(zp, I32), V16)),
                            splat(builder, builder.trunc(exp, I32), V16))
            d = builder.bitcast(d, V8Q)
            m = splat(builder, builder.sext(builder.trunc(multiplier, I32), I64), V8Q)  # sign-extended: vpmuldq
            return (builder.mul(builder.ashr(builder.shl(d, c32), c32), m), builder.mul(builder.ashr(d, c32), m))

        ae, ao = products(a_, ty[0], azp, am, aexp)
        be, bo = products(b_, ty[1], bzp, bm, bexp)
        r = splat(builder, rnd, V8Q)
        y_even = builder.add(builder.add(ae, be), r)
        y_odd = builder.add(builder.add(ao, bo), r)
        high = builder.shuffle_vector(builder.bitcast(y_even, V16), builder.bitcast(y_odd, V16), _INTERLEAVE_HIGH)
        v = builder.ashr(high, splat(builder, builder.trunc(sh, I32), V16))
        zp32 = builder.trunc(ozp, I32)
        v = clamp(builder, v, splat(builder, builder.sub(builder.trunc(lo, I32), zp32), V16),
                  splat(builder, builder.sub(builder.trunc(hi, I32), zp32), V16))
        v = builder.trunc(builder.add(v, splat(builder, zp32, V16)), V16B)
        builder.store(v, vector_ptr(builder, array_data(context, builder, ty[2], o_), i_, V16B), align=1)
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True, inline="always")
def _add_chunk(a, b, out, start, stop, a_zero_point, a_multiplier, a_exp, a_scale, b_zero_point, b_multiplier, b_exp,
               b_scale, rounding, total_shift, output_zero_point, act_min, act_max, pre_shift):
    # out[start:stop]: 16 lanes at a time, then the scalar tail; pre_shift >= 0 selects the high-dword form
    i = start
    if pre_shift >= 0:
        shift_high = total_shift + pre_shift - 32
        rounding_high = np.int64(1) << (total_shift + pre_shift - 1)
        while i + 16 <= stop:
            _add16_high(a, b, out, np.int64(i), a_zero_point, a_multiplier, a_exp + pre_shift, b_zero_point,
                        b_multiplier, b_exp + pre_shift, shift_high, rounding_high, output_zero_point, act_min,
                        act_max)
            i += 16
    while i + 16 <= stop:
        _add16(a, b, out, np.int64(i), a_zero_point, a_multiplier, a_exp, b_zero_point, b_multiplier, b_exp,
               total_shift, output_zero_point, act_min, act_max)
        i += 16
    for k in range(i, stop):
        out[k] = _add_one(a[k], b[k], a_zero_point, a_scale, b_zero_point, b_scale, rounding,
                          total_shift, output_zero_point, act_min, act_max)


@njit(cache=True, inline="always")
def add_row(of, start, stop, n, oh, add_args):
    """The row hook of a fused conv + add (``microkernel.conv2d_tiles``): row ``(n, oh)`` of the add's output
    from ``of[start:stop]`` (the conv's output row, operand a) and the same row of ``b``. ``add_args = (b,
    b_pad, out, out_pad, OH, OW, C) +`` :func:`kernel_params` (flat: Numba's parallel lowering refuses nested
    tuples): ``b`` and ``out`` flat (N, OH + 2 pad, OW + 2 pad, C) with their own borders of ``b_pad`` /
    ``out_pad`` pixels (0: unpadded), which are never read or written."""
    (b, b_pad, out, out_pad, height, width, channels, a_zero_point, a_multiplier, a_exp, a_scale, b_zero_point,
     b_multiplier, b_exp, b_scale, rounding, total_shift, output_zero_point, act_min, act_max, pre_shift) = add_args
    length = stop - start
    b_at = ((n * (height + 2 * b_pad) + oh + b_pad) * (width + 2 * b_pad) + b_pad) * channels
    out_at = ((n * (height + 2 * out_pad) + oh + out_pad) * (width + 2 * out_pad) + out_pad) * channels
    _add_chunk(of[start:stop], b[b_at:b_at + length], out[out_at:out_at + length], 0, length, a_zero_point,
               a_multiplier, a_exp, a_scale, b_zero_point, b_multiplier, b_exp, b_scale, rounding, total_shift,
               output_zero_point, act_min, act_max, pre_shift)


def kernel_params(a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift, output_zero_point,
                  act_min, act_max) -> tuple:
    """The scalars (int64) that ``_add_chunk`` takes after its arrays, for validated add parameters: with
    ``smin = min(a_shift, b_shift)``, ``a_exp = a_shift - smin``, ``a_scale = Ma << a_exp`` (< 2^51), likewise
    for b, ``total_shift = 31 - smin`` in [1, 62], its rounding term, and the high-dword pre-shift (-1: the
    int64 form). The one place they are derived: the op, its prepared call and the fused conv use them."""
    smin = min(a_shift, b_shift)
    a_exp, b_exp, total_shift = a_shift - smin, b_shift - smin, 31 - smin
    return tuple(np.int64(v) for v in (
        a_zero_point, a_multiplier, a_exp, a_multiplier << a_exp, b_zero_point, b_multiplier, b_exp,
        b_multiplier << b_exp, 1 << (total_shift - 1), total_shift, output_zero_point, act_min, act_max,
        high_dword_pre_shift(a_exp, b_exp, total_shift)))


@njit(cache=True, parallel=True)
def _add_vector_kernel(a, b, out, a_zero_point, a_multiplier, a_exp, a_scale, b_zero_point, b_multiplier, b_exp,
                       b_scale, rounding, total_shift, output_zero_point, act_min, act_max, pre_shift, n_workers,
                       grain):
    # a, b, out (size,) uint8, the scalars from kernel_params; chunks are multiples of 16, so only the
    # last one has a scalar tail
    size = a.shape[0]
    n_chunks = (size + _CHUNK - 1) // _CHUNK
    share = (n_chunks + n_workers - 1) // n_workers
    counters = np.zeros(n_workers * COUNTER_STRIDE, dtype=np.int64)
    for w in prange(n_workers):  # chunks shared among the threads (worksharing.py)
        for victim in range(victims(n_workers, grain, share)):
            v = (w + victim) % n_workers
            first_task, last_task = v * share, min((v + 1) * share, n_chunks)
            while True:
                first = first_task + fetch_add(counters, v * COUNTER_STRIDE, grain)
                if first >= last_task:
                    break
                for chunk in range(first, min(first + grain, last_task)):
                    _add_chunk(a, b, out, chunk * _CHUNK, min(size, (chunk + 1) * _CHUNK), a_zero_point,
                               a_multiplier, a_exp, a_scale, b_zero_point, b_multiplier, b_exp, b_scale, rounding,
                               total_shift, output_zero_point, act_min, act_max, pre_shift)


def high_dword_pre_shift(a_exp: int, b_exp: int, total_shift: int) -> int:
    """``k`` of the high-dword form (module doc), or -1 where it does not apply: the smallest ``k >= 0``
    with ``t + k >= 32``, allowed while ``(x - zp) << (exp + k)`` stays below 2^30 in magnitude
    (``255 << 22 < 2^30``)."""
    k = max(0, 32 - total_shift)
    return k if max(a_exp, b_exp) + k <= _MAX_HIGH_EXP else -1


_MAX_HIGH_EXP = 22


def prepare_add_round_half_up(a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
                              output_zero_point, act_min, act_max):
    """:func:`add_round_half_up` with these parameters as a callable ``run(a, b, out) -> out``.

    The parameters are checked here, once (the same checks); ``run`` checks nothing: ``a``, ``b`` and ``out``
    must be uint8 arrays of one shape, C-contiguous, ``out`` not overlapping the inputs. For a caller that
    runs one validated node many times (the engine); same bits as :func:`add_round_half_up`."""
    empty = np.zeros(0, np.uint8)
    (_, _, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
     output_zero_point, act_min, act_max) = checks.add_args(
        empty, empty, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
        output_zero_point, act_min, act_max)
    params = kernel_params(a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
                           output_zero_point, act_min, act_max)

    def run(a, b, out):
        _add_vector_kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1), *params,
                           *work_split((a.size + _CHUNK - 1) // _CHUNK))
        return out

    return run


def add_round_half_up(a, b, a_zero_point, a_multiplier, a_shift, b_zero_point,
                      b_multiplier, b_shift, output_zero_point, act_min, act_max, out=None):
    """Residual add; see :func:`kernels.reference.add_round_half_up` for the definition."""
    (a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
     output_zero_point, act_min, act_max) = checks.add_args(
        a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
        output_zero_point, act_min, act_max)
    out = checks.output_buffer(out, a.shape, a, b)
    _add_vector_kernel(a.reshape(-1), b.reshape(-1), out.reshape(-1),
                       *kernel_params(a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
                                      output_zero_point, act_min, act_max),
                       *work_split((a.size + _CHUNK - 1) // _CHUNK))
    return out


add_round_half_up.prepare = prepare_add_round_half_up
