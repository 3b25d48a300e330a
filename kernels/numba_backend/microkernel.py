"""The conv2d micro-kernel of the SIMD rungs (AVX2, AVX-512 VNNI), generated from an ISA description.

One idea for every rung. A *tile* is ``P`` consecutive output pixels of one output row times
``J * L`` output channels (``L`` int32 lanes per vector register). Each step broadcasts ``G``
input channels of one pixel (one 32-bit word) to all lanes and multiplies them with ``G`` input
channels of ``L`` output channels, accumulating ``G`` products per lane::

    acc[p, j] += dot_G(bcast(x[pixel p, channels g..g+G)), w[block, kh, kw*Cp/G + g/G, j, 0..L, 0..G))

over every kernel row ``kh`` and every ``(kw, channel group)`` of that row; the ``P * J``
accumulators stay in registers for the whole reduction (phi nodes of both loops), then a fused
epilogue requantizes, clamps and stores uint8 (``finish_tile``), or the sums go to a scratch
tile for the scalar tail epilogue (``accumulate_tile``: tiles cut by the row end or channel count).

The rungs differ only in the instruction and its operand types (:class:`Isa`):

* ``vnni512``: ``vpdpbusd zmm`` -- uint8 x int8 in groups of 4, accumulating (L = 16, G = 4);
  the padded input stays uint8.
* ``avx2``: ``vpmaddwd ymm`` -- int16 x int16 in pairs (L = 8, G = 2), then ``vpaddd``. The
  padding copy widens the input to int16 and the weights are stored as int16. (``vpmaddubsw``,
  uint8 x int8 -> int16 pairs, would saturate: 255 * 127 * 2 = 64770 > 32767. int16 pairs cannot:
  each pair sum is below 2^16.)

Layouts (prepared per weight tensor and ISA, cached): input NHWC padded once per call with
``input_zero_point`` to ``(N, H + 2p + slack, W + 2p, Cp)``, ``Cp = C`` rounded up to ``G`` (extra
channels 0, meeting zero weights); weights ``[Ob][KH][KW*Cp/G][J][L][G]``, ``O`` padded to ``L*J``.

Exactness. The micro-kernel sums ``x * w`` on raw input ``x`` (0..255); the zero-point term is
folded into the bias: ``bias_eff[o] = bias[o] - zp * sum_k w[o, k]`` (kept in int64: it may leave
int32). ``|sum x*w| <= 255 * 127 * K < 2^29`` for ``K <= kernels.checks.MAX_REDUCTION``, so no
int32 lane wraps. Epilogue per lane, in int64: ``((sum + bias_eff) * M + 2^(t-1)) >> t`` with
``t = 31 - shift``, evaluated as ``(sum * M + bias_term) >> t`` where ``bias_term = bias_eff * M +
2^(t-1)`` is precomputed per channel (the same integer; ``|sum * M| < 2^60``, ``|bias_term| <
2^63``), then ``+ output_zero_point`` and clamp -- the rule of :mod:`kernels.fixedpoint`, written
in vector IR; the equivalence tests hold every rung to the reference's bits.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.fixedpoint import requantize_round_half_up_scalar
from kernels.numba_backend.llvm_vector import I16, I32, I64, I8, array_data, clamp, splat, vector_ptr
from kernels.numba_backend.worksharing import COUNTER_STRIDE, fetch_add, victims, work_split


@dataclass(frozen=True)
class Isa:
    """One SIMD rung: the dot-product instruction and the operand layout it implies."""

    name: str
    lanes: int              # L: int32 accumulator lanes per vector register
    group: int              # G: input channels multiplied per lane and step (one 32-bit word)
    input_dtype: type       # the padded input buffer's element type
    weight_dtype: type      # the packed weights' element type
    registers: int          # vector registers: P*J accumulators + J weights + 2 temporaries fit
    variants: tuple         # register blocks (P, J), preferred first

    @property
    def acc_type(self):
        return ir.VectorType(I32, self.lanes)

    def weight_vector_type(self):
        return ir.VectorType(I8 if self.weight_dtype is np.int8 else I16, self.lanes * self.group)

    def emit_dot(self, builder, acc, word, weights):
        """``acc + dot_G(bcast(word), weights)`` per lane, for ``word`` an i32 of G packed inputs."""
        if self.name == "vnni512":
            vpdpbusd = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(self.acc_type, [self.acc_type] * 3), "llvm.x86.avx512.vpdpbusd.512")
            a = splat(builder, word, self.acc_type)
            return builder.call(vpdpbusd, [acc, a, builder.bitcast(weights, self.acc_type)])
        v16w = ir.VectorType(I16, 16)
        vpmaddwd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(self.acc_type, [v16w, v16w]), "llvm.x86.avx2.pmadd.wd")
        a = builder.bitcast(splat(builder, word, self.acc_type), v16w)
        return builder.add(acc, builder.call(vpmaddwd, [a, weights]))


VNNI512 = Isa("vnni512", lanes=16, group=4, input_dtype=np.uint8, weight_dtype=np.int8, registers=32,
              variants=((4, 4), (8, 2), (7, 2), (16, 1), (8, 1), (7, 1)))
# 16 ymm registers: P*J accumulators + J weight vectors + broadcast + product <= 16
AVX2 = Isa("avx2", lanes=8, group=2, input_dtype=np.int16, weight_dtype=np.int16, registers=16,
           variants=((2, 4), (4, 2), (6, 2), (8, 1), (7, 1), (4, 1)))
for _isa in (VNNI512, AVX2):
    assert all(p * j + j + 2 <= _isa.registers for p, j in _isa.variants), _isa.name


def host_features() -> dict:
    try:
        from llvmlite import binding

        return dict(binding.get_host_cpu_features())
    except Exception:  # pragma: no cover - unusual llvmlite builds
        return {}


def _dot_loop(builder, isa, a_ptr, a_off, a_stride, a_row_stride, b_ptr, b_off, b_row_stride, k_steps, kernel_h,
              P, J):
    """Emit, from zero accumulators, ``for kh < kernel_h: for kk < k_steps: acc[p, j] = dot(acc[p, j],
    a[a_off + kh*a_row_stride + p*a_stride + G*kk], b[b_off + kh*b_row_stride + (kk*J + j)*L*G])``
    (offsets in elements of each array); return the accumulators."""
    acc_t, b_t = isa.acc_type, isa.weight_vector_type()
    step = isa.lanes * isa.group
    zero = ir.Constant(acc_t, [0] * isa.lanes)
    entry = builder.block
    row_head = builder.append_basic_block("mk.row")
    head = builder.append_basic_block("mk.head")
    body = builder.append_basic_block("mk.body")
    row_end = builder.append_basic_block("mk.rowend")
    done = builder.append_basic_block("mk.done")
    builder.branch(row_head)

    builder.position_at_end(row_head)
    kh = builder.phi(I64)
    kh.add_incoming(ir.Constant(I64, 0), entry)
    row_accs = []
    for _ in range(P * J):
        phi = builder.phi(acc_t)
        phi.add_incoming(zero, entry)
        row_accs.append(phi)
    a_row = builder.add(a_off, builder.mul(kh, a_row_stride))
    b_row0 = builder.add(b_off, builder.mul(kh, b_row_stride))
    builder.cbranch(builder.icmp_signed("<", kh, kernel_h), head, done)

    builder.position_at_end(head)
    kk = builder.phi(I64)
    kk.add_incoming(ir.Constant(I64, 0), row_head)
    accs = []
    for value in row_accs:
        phi = builder.phi(acc_t)
        phi.add_incoming(value, row_head)
        accs.append(phi)
    builder.cbranch(builder.icmp_signed("<", kk, k_steps), body, row_end)

    builder.position_at_end(body)
    b_row = builder.add(b_row0, builder.mul(kk, ir.Constant(I64, step * J)))
    b_vecs = [builder.load(vector_ptr(builder, b_ptr, builder.add(b_row, ir.Constant(I64, step * j)), b_t), align=1)
              for j in range(J)]
    a_col = builder.add(a_row, builder.mul(kk, ir.Constant(I64, isa.group)))
    updated = []
    for p in range(P):
        off = builder.add(a_col, builder.mul(ir.Constant(I64, p), a_stride))
        word = builder.load(vector_ptr(builder, a_ptr, off, I32), align=1)
        for j in range(J):
            updated.append(isa.emit_dot(builder, accs[p * J + j], word, b_vecs[j]))
    kk.add_incoming(builder.add(kk, ir.Constant(I64, 1)), builder.block)
    for phi, value in zip(accs, updated):
        phi.add_incoming(value, builder.block)
    builder.branch(head)

    builder.position_at_end(row_end)
    kh.add_incoming(builder.add(kh, ir.Constant(I64, 1)), row_end)
    for phi, value in zip(row_accs, accs):
        phi.add_incoming(value, row_end)
    builder.branch(row_head)

    builder.position_at_end(done)
    return row_accs


def make_microkernels(isa: Isa, P: int, J: int):
    """``(accumulate_tile, finish_tile)`` intrinsics for a ``P`` pixel x ``J*L`` channel tile of ``isa``."""
    L = isa.lanes
    acc_t = isa.acc_type
    wide_t = ir.VectorType(I64, L)
    byte_t = ir.VectorType(I8, L)

    @intrinsic
    def accumulate_tile(typingctx, a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k_steps, kernel_h,
                        scratch, scratch_stride):
        """scratch[p, L*j : L*j + L] = the tile's int32 sums over all kernel rows (see ``_dot_loop``)."""
        sig = types.void(a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k_steps, kernel_h, scratch,
                         scratch_stride)

        def codegen(context, builder, signature, args):
            a_, a_off_, a_stride_, a_rs_, b_, b_off_, b_rs_, ks_, kh_, s_, s_stride_ = args
            ty = signature.args
            a_ptr = array_data(context, builder, ty[0], a_)
            b_ptr = array_data(context, builder, ty[4], b_)
            s_ptr = array_data(context, builder, ty[9], s_)
            accs = _dot_loop(builder, isa, a_ptr, a_off_, a_stride_, a_rs_, b_ptr, b_off_, b_rs_, ks_, kh_, P, J)
            for p in range(P):
                for j in range(J):
                    off = builder.add(builder.mul(ir.Constant(I64, p), s_stride_), ir.Constant(I64, L * j))
                    builder.store(accs[p * J + j], vector_ptr(builder, s_ptr, off, acc_t), align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def finish_tile(typingctx, a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k_steps, kernel_h,
                    out, out_off, out_pixel_stride, bias_term, multiplier, total_shift, channel0,
                    output_zero_point, act_min, act_max):
        """A full tile: all kernel rows, then requantize + clamp L channels at a time and store uint8.

        ``total_shift`` (int64, per channel) holds ``t``, or, where a negative first entry flags the
        layer "every t >= 32", ``31 - t`` (see :class:`PackedConvWeights`):
        then the epilogue takes ``y >> t = (y >> 32) >> (t - 32)`` -- the high dword of the
        int64 ``y = sum * M + bias_term`` (|y| < 2^63, so it fits int32), one 32-bit arithmetic
        shift, a 32-bit clamp -- instead of 64-bit shifts and compares. The same integer:
        floor(floor(y / 2^32) / 2^(t - 32)) = floor(y / 2^t)."""
        sig = types.void(a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k_steps, kernel_h,
                         out, out_off, out_pixel_stride, bias_term, multiplier, total_shift, channel0,
                         output_zero_point, act_min, act_max)

        def codegen(context, builder, signature, args):
            (a_, a_off_, a_stride_, a_rs_, b_, b_off_, b_rs_, ks_, kh_, o_, o_off_, o_stride_,
             bias_, mult_, tshift_, ch0_, zp_, lo_, hi_) = args
            ty = signature.args
            a_ptr = array_data(context, builder, ty[0], a_)
            b_ptr = array_data(context, builder, ty[4], b_)
            o_ptr = array_data(context, builder, ty[9], o_)
            bias_ptr = array_data(context, builder, ty[12], bias_)
            mult_ptr = array_data(context, builder, ty[13], mult_)
            tshift_ptr = array_data(context, builder, ty[14], tshift_)
            accs = _dot_loop(builder, isa, a_ptr, a_off_, a_stride_, a_rs_, b_ptr, b_off_, b_rs_, ks_, kh_, P, J)

            def products(j):
                # (sum + bias_eff) * M + 2^(t-1) == sum * M + bias_term: one multiply and one add per lane
                ch = builder.add(ch0_, ir.Constant(I64, L * j))
                bias_term = builder.load(vector_ptr(builder, bias_ptr, ch, wide_t), align=8)
                mult = builder.sext(builder.load(vector_ptr(builder, mult_ptr, ch, acc_t), align=4), wide_t)
                tshift = builder.load(vector_ptr(builder, tshift_ptr, ch, wide_t), align=8)
                return ([builder.add(builder.mul(builder.sext(accs[p * J + j], wide_t), mult), bias_term)
                         for p in range(P)], tshift)

            def store(p, j, r):
                off = builder.add(builder.add(o_off_, builder.mul(ir.Constant(I64, p), o_stride_)),
                                  ir.Constant(I64, L * j))
                builder.store(builder.trunc(r, byte_t), vector_ptr(builder, o_ptr, off, byte_t), align=1)

            half_t = ir.VectorType(I64, L // 2)
            c32 = ir.Constant(half_t, [32] * (L // 2))
            even_lanes = ir.Constant(ir.VectorType(I32, L // 2), list(range(0, L, 2)))
            odd_lanes = ir.Constant(ir.VectorType(I32, L // 2), list(range(1, L, 2)))
            # lane 2i <- high dword of even product i (dword 2i+1), lane 2i+1 <- high dword of odd product i
            interleave_high = ir.Constant(ir.VectorType(I32, L), [k + 1 if k % 2 == 0 else L + k for k in range(L)])

            def high_dwords(j):
                # y_high = (sum * M + bias_term) >> 32 as L int32 lanes, from two 32 x 32 -> 64 multiplies
                # (vpmuldq) of the even and the odd lanes in place: no widening of the accumulators, no
                # 64 x 64 multiply. The even lanes' low dwords and the odd lanes' high dwords are
                # sign-extended where they stand (shl/ashr, ashr): LLVM selects vpmuldq for either.
                ch = builder.add(ch0_, ir.Constant(I64, L * j))
                bias = builder.load(vector_ptr(builder, bias_ptr, ch, wide_t), align=8)
                bias_even = builder.shuffle_vector(bias, bias, even_lanes)
                bias_odd = builder.shuffle_vector(bias, bias, odd_lanes)
                m = builder.bitcast(builder.load(vector_ptr(builder, mult_ptr, ch, acc_t), align=4), half_t)
                m_even = builder.ashr(builder.shl(m, c32), c32)
                m_odd = builder.ashr(m, c32)
                out = []
                for p in range(P):
                    a = builder.bitcast(accs[p * J + j], half_t)
                    y_even = builder.add(builder.mul(builder.ashr(builder.shl(a, c32), c32), m_even), bias_even)
                    y_odd = builder.add(builder.mul(builder.ashr(a, c32), m_odd), bias_odd)
                    out.append(builder.shuffle_vector(builder.bitcast(y_even, acc_t), builder.bitcast(y_odd, acc_t),
                                                      interleave_high))
                return out

            fast = builder.icmp_signed("<", builder.load(tshift_ptr), ir.Constant(I64, 0))
            with builder.if_else(fast) as (high_dword, generic):
                with high_dword:
                    lo = splat(builder, builder.trunc(builder.sub(lo_, zp_), I32), acc_t)
                    hi = splat(builder, builder.trunc(builder.sub(hi_, zp_), I32), acc_t)
                    zp = splat(builder, builder.trunc(zp_, I32), acc_t)
                    for j in range(J):
                        coded = builder.load(vector_ptr(builder, tshift_ptr, builder.add(ch0_, ir.Constant(I64, L * j)),
                                                        wide_t), align=8)
                        shift32 = builder.trunc(builder.sub(ir.Constant(wide_t, [-1] * L), coded), acc_t)  # t - 32
                        for p, y_high in enumerate(high_dwords(j)):
                            r = clamp(builder, builder.ashr(y_high, shift32), lo, hi)
                            store(p, j, builder.add(r, zp))
                with generic:
                    # clamp before adding the zero point, in int64: the requantized value may exceed int32
                    lo = splat(builder, builder.sub(lo_, zp_), wide_t)
                    hi = splat(builder, builder.sub(hi_, zp_), wide_t)
                    zp = splat(builder, zp_, wide_t)
                    for j in range(J):
                        ys, tshift = products(j)
                        for p in range(P):
                            store(p, j, builder.add(clamp(builder, builder.ashr(ys[p], tshift), lo, hi), zp))
            return context.get_dummy_value()

        return sig, codegen

    return accumulate_tile, finish_tile


@njit(cache=True, inline="always")
def conv2d_row(tile, xf, padded_h, padded_w, wp, variant, tile_p, padded_c, kernel_h, k_steps,
               n_out, bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride, act_min, act_max, out, of,
               out_pad, tile_o, n_blocks, b_row_stride, n_tiles, n, oh, scratch):
    """Output row ``(n, oh)``: every tile of ``tile_p`` pixels x ``tile_o`` channels through ``tile``; tail
    tiles (partial in pixels or channels) get the scalar epilogue from the int32 sums in ``scratch``.
    ``out`` holds the output inside a border of ``out_pad`` pixels (see :func:`conv2d_tiles`)."""
    _, buf_h, buf_w, _ = out.shape
    out_w = buf_w - 2 * out_pad
    for t in range(n_tiles):
        ow0 = t * tile_p
        for ob in range(n_blocks):
            ch0 = ob * tile_o
            full = ow0 + tile_p <= out_w and ch0 + tile_o <= n_out
            a_off = ((n * padded_h + oh * stride) * padded_w + ow0 * stride) * padded_c
            o_off = ((n * buf_h + oh + out_pad) * buf_w + ow0 + out_pad) * n_out + ch0
            tile(variant, full, xf, a_off, stride * padded_c, padded_w * padded_c, wp,
                 ob * kernel_h * b_row_stride, b_row_stride, k_steps, kernel_h, scratch, tile_o, of, o_off, n_out,
                 bias_term, mult, tshift, ch0, output_zero_point, act_min, act_max)
            if not full:
                for p in range(min(tile_p, out_w - ow0)):
                    for jj in range(min(tile_o, n_out - ch0)):
                        o = ch0 + jj
                        acc = np.int64(scratch[p * tile_o + jj]) + np.int64(bias_eff[o])
                        v = requantize_round_half_up_scalar(acc, mult[o], shift[o]) + output_zero_point
                        if v < act_min:
                            v = act_min
                        elif v > act_max:
                            v = act_max
                        out[n, oh + out_pad, ow0 + p + out_pad, o] = np.uint8(v)


@njit(cache=True, inline="always")
def no_row_op(of, start, stop, n, oh, row_args):
    """The plain conv's row hook: nothing after a row (inlined away)."""
    pass


@njit(cache=True, inline="always")
def conv2d_tiles(tile, lanes, group, max_tile_size, xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c,
                 kernel_h, k_steps, n_out, bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride,
                 act_min, act_max, out, of, out_pad, row_op, row_args, split):
    """The driver loop every SIMD rung shares: output rows ``(n, oh)`` shared among the threads
    (:mod:`kernels.numba_backend.worksharing`: own share first, then the others' unclaimed chunks), each
    row through :func:`conv2d_row`.

    Inlined into each rung's cached kernel (``avx2._conv2d_avx2_kernel``, ...), so no cached
    signature holds a dispatcher type (Numba cannot cache those). ``tile``: the rung's dispatcher over
    its register blocks; ``xf``: the (N, Hp, Wp, Cp) padded input, flat; ``wp``: packed weights;
    ``out`` (N, OH + 2 out_pad, OW + 2 out_pad, O) uint8 and ``of``, the same memory flat (flat views come
    from the caller: Numba's reshape(-1) infers the size with float math): the output goes inside a
    border of ``out_pad`` pixels, which is never written (0: ``out`` is the output; > 0: ``out`` is the
    next conv's zero-point-padded input, its border filled by the caller); ``row_op(of, start, stop, n,
    oh, row_args)`` runs on output row ``(n, oh)``, flat range ``of[start:stop]``, right after the row is
    written (:func:`no_row_op`, or the residual add of a fused conv + add: ``op_add_round_half_up.add_row``);
    ``split``: ``(n_workers, grain)``, :func:`~kernels.numba_backend.worksharing.work_split` of the ``N * OH``
    rows (one argument: CPython passes a call of more than 30 arguments as ``*args``, which Numba cannot
    inline)."""
    n_workers, grain = split
    n_batch, buf_h, buf_w, _ = out.shape
    out_h, out_w = buf_h - 2 * out_pad, buf_w - 2 * out_pad
    tile_o = lanes * tile_j
    n_blocks = (n_out + tile_o - 1) // tile_o
    b_row_stride = k_steps * tile_o * group  # packed weight elements per kernel row of one channel block
    n_tiles = (out_w + tile_p - 1) // tile_p
    n_tasks = n_batch * out_h
    share = (n_tasks + n_workers - 1) // n_workers
    counters = np.zeros(n_workers * COUNTER_STRIDE, dtype=np.int64)
    for w in prange(n_workers):
        scratch = np.empty(max_tile_size, dtype=np.int32)
        for victim in range(victims(n_workers, grain, share)):
            v = (w + victim) % n_workers
            first_task, last_task = v * share, min((v + 1) * share, n_tasks)
            while True:
                first = first_task + fetch_add(counters, v * COUNTER_STRIDE, grain)
                if first >= last_task:
                    break
                for task in range(first, min(first + grain, last_task)):
                    n = task // out_h
                    conv2d_row(tile, xf, padded_h, padded_w, wp, variant, tile_p, padded_c, kernel_h,
                               k_steps, n_out, bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride,
                               act_min, act_max, out, of, out_pad, tile_o, n_blocks, b_row_stride, n_tiles, n,
                               task - n * out_h, scratch)
                    # the row just written, still in this core's cache
                    row = ((n * buf_h + task - n * out_h + out_pad) * buf_w + out_pad) * n_out
                    row_op(of, row, row + out_w * n_out, n, task - n * out_h, row_args)


class PreparedConv2d:
    """One conv layer on a SIMD rung, with everything that depends only on the layer and its input shape done
    once: the packed weights, the padding decision and the kernel's scalar arguments. A call costs the padding
    copy (where one is needed), a work split and the kernel: what the engine runs per layer.

    Arguments as :func:`kernels.reference.conv2d`'s, already validated (``kernels.checks.conv2d_args``);
    ``in_channels`` and ``out_width`` of the input and output it will be called with."""

    def __init__(self, isa, kernel, weight, bias, input_zero_point, output_multiplier, output_shift,
                 output_zero_point, stride, padding, act_min, act_max, in_channels, out_width):
        pk = PackedConvWeights(isa, weight, bias, input_zero_point, output_multiplier, output_shift, out_width)
        # Unpadded, already in the rung's element type and channel grouping, every tile full: a tile reads
        # pixels up to (OW - 1) * stride + KW - 1 = W - 1 of rows up to H - 1, all inside x, so the kernel
        # reads x itself (ResNet-50's 1x1 convolutions copied megabytes per image for nothing).
        self.direct = (padding == 0 and isa.input_dtype == np.uint8 and in_channels == pk.padded_c
                       and out_width % pk.tile_p == 0)
        # otherwise a 1x1 unpadded conv with stride s reads every s-th pixel: copy only those, run stride 1
        self.subsample = stride if not self.direct and pk.kernel_h == pk.kernel_w == 1 and padding == 0 else 1
        self.stride = stride // self.subsample
        # The same conditions with padding: the kernel can read a zero-point-padded input another conv wrote
        # (run_bordered) with no copy of its own: every tile full, so no tile reads past a padded row.
        self.reads_padded_input = (padding > 0 and isa.input_dtype == np.uint8 and in_channels == pk.padded_c
                                   and out_width % pk.tile_p == 0)
        self.isa, self.kernel, self.packed = isa, kernel, pk
        self.input_zero_point, self.padding = input_zero_point, padding
        self.args = (pk.packed, np.int64(pk.variant), np.int64(pk.tile_p), np.int64(pk.tile_j),
                     np.int64(pk.padded_c), np.int64(pk.kernel_h), np.int64(pk.k_steps), np.int64(pk.n_out),
                     pk.bias_eff, pk.bias_term, pk.mult, pk.shift, pk.tshift, np.int64(output_zero_point),
                     np.int64(self.stride), np.int64(act_min), np.int64(act_max))

    def _input(self, x):
        pk = self.packed
        return x if self.direct else pad_input(self.isa, x, self.input_zero_point, self.padding, pk.tile_p,
                                               self.stride, pk.padded_c, self.subsample)

    def reads_bordered(self, x_pad: int) -> bool:
        """Whether :meth:`run_bordered` can read an input stored inside a border of ``x_pad`` pixels in place:
        0 (a plain input), the layer's own padding where :attr:`reads_padded_input`, or any border for an
        unpadded layer that reads its input in place (:attr:`direct`: it starts ``x_pad`` pixels in)."""
        return x_pad == 0 or (x_pad == self.padding and self.reads_padded_input) or (self.padding == 0 and self.direct)

    def _source(self, x, x_pad):
        """(flat input the kernel reads, its rows per image, its pixels per row) for input ``x`` stored inside a
        border of ``x_pad`` pixels (see :meth:`reads_bordered`)."""
        if x_pad == 0:
            xp = self._input(x)
            return xp.reshape(-1), np.int64(xp.shape[1]), np.int64(xp.shape[2])
        if not self.reads_bordered(x_pad):
            raise ValueError("this conv layer copies its input: it cannot read a padded input in place")
        xf = x.reshape(-1)
        if x_pad != self.padding:  # an unpadded layer: its input starts at pixel (x_pad, x_pad) of each image
            xf = xf[(x_pad * x.shape[2] + x_pad) * x.shape[3]:]
        return xf, np.int64(x.shape[1]), np.int64(x.shape[2])

    def __call__(self, x, out):
        """conv2d of ``x`` (N, H, W, C) uint8, C-contiguous, into ``out`` (N, OH, OW, O) (not overlapping x)."""
        return self.run_bordered(x, 0, out, 0)

    def run_bordered(self, x, x_pad, out, out_pad):
        """conv2d of the input stored in ``x`` (N, H + 2 x_pad, W + 2 x_pad, C) inside a border of ``x_pad``
        pixels (0: none), into the interior of ``out`` (N, OH + 2 out_pad, OW + 2 out_pad, O); uint8,
        C-contiguous, not overlapping. The output border is never written: a buffer whose border holds the
        next conv's input zero point is that conv's padded input. ``x_pad`` as :meth:`reads_bordered` allows;
        a border read as this layer's padding must hold ``input_zero_point`` (as the engine fills it)."""
        xf, padded_h, padded_w = self._source(x, x_pad)
        self.kernel(xf, padded_h, padded_w, *self.args, out, out.reshape(-1), np.int64(out_pad),
                    *work_split(out.shape[0] * (out.shape[1] - 2 * out_pad)))
        return out


class PreparedConv2dAdd:
    """A prepared conv layer (:class:`PreparedConv2d`) whose output is one operand of a residual add: each
    output row is added to the other operand right after it is written, while it is in this core's cache
    (``op_add_round_half_up.add_row`` inside the rung's ``_conv2d_add_<rung>_kernel``), instead of a second
    pass over both tensors. ``add_params``: ``op_add_round_half_up.kernel_params`` with the conv's output as
    operand a. The same bits as the conv followed by the add: the add reads the conv's uint8 row as written."""

    def __init__(self, conv: PreparedConv2d, add_kernel, add_params):
        self.conv, self.add_kernel, self.add_params = conv, add_kernel, add_params
        self.reads_bordered = conv.reads_bordered

    def __call__(self, x, residual, conv_out, add_out):
        """``add_out = add(conv2d(x), residual)``, the conv's own output in ``conv_out`` (all C-contiguous
        uint8, ``residual`` and both outputs (N, OH, OW, O), none overlapping another)."""
        return self.run_bordered(x, 0, residual, 0, conv_out, add_out, 0)

    def run_bordered(self, x, x_pad, residual, residual_pad, conv_out, add_out, add_pad):
        """As a call, with the conv's input, the residual and the add's output each stored inside its own border
        (``x_pad`` as :meth:`PreparedConv2d.run_bordered`; ``residual`` (N, OH + 2 residual_pad, ...), its
        border never read; ``add_out`` (N, OH + 2 add_pad, ...), its border never written); ``conv_out``
        unpadded."""
        xf, padded_h, padded_w = self.conv._source(x, x_pad)
        n_batch, out_h, out_w, n_out = conv_out.shape
        add_args = (residual.reshape(-1), np.int64(residual_pad), add_out.reshape(-1), np.int64(add_pad),
                    np.int64(out_h), np.int64(out_w), np.int64(n_out)) + self.add_params
        self.add_kernel(xf, padded_h, padded_w, *self.conv.args, conv_out,
                        conv_out.reshape(-1), np.int64(0),  # out_pad 0: the add reads conv_out's rows flat
                        add_args, *work_split(n_batch * out_h))
        return add_out


def run_conv2d(isa, kernel, x, weight, bias, input_zero_point, output_multiplier, output_shift,
               output_zero_point, stride, padding, act_min, act_max, out):
    """conv2d into ``out`` on validated arguments through ``kernel`` (a rung's ``_conv2d_<rung>_kernel``),
    the layer prepared once (:func:`prepared_conv2d`)."""
    return prepared_conv2d(isa, kernel, weight, bias, input_zero_point, output_multiplier, output_shift,
                           output_zero_point, stride, padding, act_min, act_max, x.shape[3], out.shape[2])(x, out)


def choose_variant(isa: Isa, out_channels: int, out_width: int) -> int:
    """Index into ``isa.variants``: widest channel block dividing O, preferring P that divides OW (no tail)."""
    variants = isa.variants
    fits = [i for i, (P, J) in enumerate(variants) if out_channels % (isa.lanes * J) == 0]
    if not fits:  # channel tail handled by the scalar epilogue
        fits = [min(range(len(variants)), key=lambda i: (variants[i][1], -variants[i][0]))]
    for i in fits:
        if out_width % variants[i][0] == 0:
            return i
    return fits[0]


def max_tile(isa: Isa) -> int:
    """int32 scratch elements of the largest tile of ``isa``."""
    return max(P * J * isa.lanes for P, J in isa.variants)


class PackedConvWeights:
    """One conv layer's weights in ``isa``'s layout, with the folded bias and epilogue constants."""

    def __init__(self, isa: Isa, weight, bias, input_zero_point, output_multiplier, output_shift, out_width):
        n_out, kernel_h, kernel_w, channels = weight.shape
        L, G = isa.lanes, isa.group
        self.variant = choose_variant(isa, n_out, out_width)
        self.tile_p, self.tile_j = isa.variants[self.variant]
        tile_o = L * self.tile_j
        self.padded_c = (channels + G - 1) // G * G
        n_blocks = (n_out + tile_o - 1) // tile_o
        o_pad = n_blocks * tile_o
        w = np.zeros((o_pad, kernel_h, kernel_w, self.padded_c), dtype=isa.weight_dtype)
        w[:n_out, :, :, :channels] = weight
        k_steps = kernel_w * self.padded_c // G
        # [Ob][J][L][KH][k_steps][G] -> [Ob][KH][k_steps][J][L][G]
        self.packed = np.ascontiguousarray(
            w.reshape(n_blocks, self.tile_j, L, kernel_h, k_steps, G).transpose(0, 3, 4, 1, 2, 5)).reshape(-1)
        weight_sum = weight.reshape(n_out, -1).astype(np.int64).sum(axis=1)
        self.bias_eff = np.zeros(o_pad, dtype=np.int64)  # bias - zp*sum(w) may leave int32
        self.bias_eff[:n_out] = bias.astype(np.int64) - int(input_zero_point) * weight_sum
        self.mult = np.zeros(o_pad, dtype=np.int32)
        self.mult[:n_out] = output_multiplier
        self.shift = np.zeros(o_pad, dtype=np.int32)
        self.shift[:n_out] = output_shift
        t = (31 - self.shift.astype(np.int64)).astype(np.int64)  # total shift, in [1, 62]
        # bias_eff * M + 2^(t-1): |bias_eff| < 2^31 + 2^29 and M < 2^31 keep it below 2^63 - 2^61
        self.bias_term = self.bias_eff * self.mult.astype(np.int64) + np.left_shift(np.int64(1), t - 1)
        # finish_tile's epilogue constant per channel: where every t >= 32 (every shipped model: t >= 37)
        # 31 - t <= -1, so a negative first entry flags the high-dword form and -v - 1 = t - 32;
        # else t itself (>= 1: the int64 form). Padding channels (never in a full tile) get -1 / 1.
        if bool((t[:n_out] >= 32).all()):
            self.tshift = np.where(np.arange(o_pad) < n_out, 31 - t, -1).astype(np.int64)
        else:
            self.tshift = np.where(np.arange(o_pad) < n_out, t, 1).astype(np.int64)
        self.kernel_h, self.kernel_w, self.n_out = kernel_h, kernel_w, n_out
        self.k_steps = k_steps


_PREPARED: dict = {}
_PREPARED_MAX = 512


def prepared_conv2d(isa, kernel, weight, bias, input_zero_point, output_multiplier, output_shift,
                    output_zero_point, stride, padding, act_min, act_max, in_channels, out_width) -> PreparedConv2d:
    """:class:`PreparedConv2d`, cached per (isa, arrays, scalars, shapes)."""
    # Keyed on the arrays' identities. The entry keeps all four arrays alive, so no id in a live
    # key can be reused by another array; the arrays are treated as immutable (the engine never
    # writes them), so a hit means the same contents.
    arrays = (weight, bias, output_multiplier, output_shift)
    key = (isa.name,) + tuple(id(a) for a in arrays) + tuple(int(v) for v in (
        input_zero_point, output_zero_point, stride, padding, act_min, act_max, in_channels, out_width))
    hit = _PREPARED.get(key)
    if hit is not None and all(kept is a for kept, a in zip(hit[0], arrays)):
        return hit[1]
    prepared = PreparedConv2d(isa, kernel, weight, bias, input_zero_point, output_multiplier, output_shift,
                              output_zero_point, stride, padding, act_min, act_max, in_channels, out_width)
    if len(_PREPARED) >= _PREPARED_MAX:
        _PREPARED.clear()
    _PREPARED[key] = (arrays, prepared)
    return prepared


@njit(cache=True, inline="always")
def _fill_border(xpf, at, pixels, channels, padded_c, zp):
    # `pixels` border pixels from flat offset `at`: zp in the real channels, 0 in the padding channels
    if channels == padded_c:
        xpf[at:at + pixels * padded_c] = zp
    else:
        for p in range(pixels):
            for c in range(channels):
                xpf[at + p * padded_c + c] = zp
            for c in range(channels, padded_c):
                xpf[at + p * padded_c + c] = 0


@njit(cache=True, inline="always")
def _pad_image(xf, n, height, src_width, channels, padding, subsample, width, padded_h, padded_w, padded_c, zp,
               xpf):
    # image n into the padded layout (_pad_input_kernel), on flat arrays with integer offsets: a
    # contiguous row copy vectorizes (per-element 2-D indexing cost as much as the first layers' math)
    row_len = padded_w * padded_c
    left, right = padding * padded_c, (padding + width) * padded_c
    for i in range(padded_h):
        row = (n * padded_h + i) * row_len
        src_row = (i - padding) * subsample
        if i < padding or src_row >= height:  # border rows and the slack rows below the image
            _fill_border(xpf, row, padded_w, channels, padded_c, zp)
            continue
        src = (n * height + src_row) * src_width * channels
        _fill_border(xpf, row, padding, channels, padded_c, zp)
        if channels == padded_c and subsample == 1:
            xpf[row + left:row + right] = xf[src:src + right - left]
        else:
            step = subsample * channels
            if channels == 3 and padded_c == 4:  # the RGB stem: straight-line, a 3-trip inner loop cost 4x
                for w in range(width):
                    at, src_at = row + left + 4 * w, src + w * step
                    xpf[at] = xf[src_at]
                    xpf[at + 1] = xf[src_at + 1]
                    xpf[at + 2] = xf[src_at + 2]
                    xpf[at + 3] = 0
            else:  # a contiguous slice per pixel (an element loop over the channels did not vectorize)
                for w in range(width):
                    at, src_at = row + left + w * padded_c, src + w * step
                    xpf[at:at + channels] = xf[src_at:src_at + channels]
                    xpf[at + channels:at + padded_c] = 0
        _fill_border(xpf, row + right, padding, channels, padded_c, zp)


@njit(cache=True, parallel=True)
def _pad_input_kernel(xf, x_shape, input_zero_point, padding, subsample, xpf, xp_shape, n_workers, grain):
    # x (N, H, W, C) uint8 -> xp (N, Hp, Wp, Cp) uint8 or int16 (values 0..255 either way), both flat
    # (shapes as int64 arrays): xp[n, padding + i, padding + j, c] = x[n, i * subsample, j * subsample, c],
    # zp border (and slack rows), channels C..Cp-1 zero.
    n_batch, height, src_width, channels = x_shape[0], x_shape[1], x_shape[2], x_shape[3]
    padded_h, padded_w, padded_c = xp_shape[1], xp_shape[2], xp_shape[3]
    width = padded_w - 2 * padding
    zp = xpf.dtype.type(input_zero_point)
    share = (n_batch + n_workers - 1) // n_workers
    counters = np.zeros(n_workers * COUNTER_STRIDE, dtype=np.int64)
    for w in prange(n_workers):  # images shared among the threads (worksharing.py)
        for victim in range(victims(n_workers, grain, share)):
            v = (w + victim) % n_workers
            first_task, last_task = v * share, min((v + 1) * share, n_batch)
            while True:
                first = first_task + fetch_add(counters, v * COUNTER_STRIDE, grain)
                if first >= last_task:
                    break
                for n in range(first, min(first + grain, last_task)):
                    _pad_image(xf, n, height, src_width, channels, padding, subsample, width, padded_h,
                               padded_w, padded_c, zp, xpf)


_WORKSPACE = threading.local()


def _workspace(shape, dtype) -> np.ndarray:
    """A scratch array for the padded input, reused by later calls of this thread.

    Allocating a fresh multi-megabyte buffer per layer costs a page fault per 4 KiB on first
    touch (about a fifth of a ResNet-20 forward at batch 400); the padded input is dead when
    conv2d returns, so one growing byte buffer per thread serves every layer and dtype."""
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = np.empty(nbytes, dtype=np.uint8)
        _WORKSPACE.buf = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def pad_input(isa, x, input_zero_point, padding, tile_p, stride, padded_c, subsample=1) -> np.ndarray:
    """The zero-point-padded input in ``isa``'s element type, with slack rows for the last tile.

    ``subsample`` keeps every ``subsample``-th row and column: a 1x1 unpadded convolution with
    stride s reads only those, so it runs as stride 1 on a quarter of the copy (s = 2)."""
    n_batch, height, width, _ = x.shape
    height, width = (height + subsample - 1) // subsample, (width + subsample - 1) // subsample
    padded_w = width + 2 * padding
    # the last tile of a row may read up to tile_p*stride pixels past the row end: slack rows
    slack_rows = (tile_p * stride + padded_w - 1) // padded_w + 1
    xp = _workspace((n_batch, height + 2 * padding + slack_rows, padded_w, padded_c), isa.input_dtype)
    _pad_input_kernel(x.reshape(-1), np.array(x.shape, dtype=np.int64), np.int64(input_zero_point),
                      np.int64(padding), np.int64(subsample), xp.reshape(-1), np.array(xp.shape, dtype=np.int64),
                      *work_split(n_batch))
    return xp
