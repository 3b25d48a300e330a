"""conv2d on AVX-512 VNNI: a register-blocked ``vpdpbusd`` micro-kernel, bit-identical to the reference.

``vpdpbusd acc, a, b`` adds, in each of 16 int32 lanes ``i``,
``sum_{j<4} a[4i+j] * b[4i+j]`` (uint8 x int8, no saturation) to ``acc[i]``.
We broadcast four input channels of one pixel to all lanes and keep, per lane,
four input channels of one output channel, so one instruction is
1 pixel x 16 output channels x 4 input channels = 64 multiply-accumulates.

Layout (prepared per weight tensor, cached):

* input: NHWC padded once per call with ``input_zero_point`` to
  ``(N, H + 2p + slack, W + 2p, Cp)``, ``Cp = C`` rounded up to 4 (the extra
  channels are 0 and meet zero weights).  The padding value makes the
  ``(x - zp)`` term of the reference vanish, exactly as the reference pads.
* weights: ``[Ob][KH][KW*Cp/4][J][16][4]`` int8, ``O`` padded to ``16*J``.
* the micro-kernel computes a tile of ``P`` consecutive output pixels of one
  output row times ``16*J`` output channels, accumulators in ``P*J`` zmm
  registers, looping over the ``KH`` kernel rows of ``KW*Cp/4`` steps each (the
  accumulators never leave the registers), then runs the fused epilogue.

The zero-point term is folded into the bias: the micro-kernel computes
``sum x*w`` on raw uint8 ``x``; ``bias_eff[o] = bias[o] - zp * sum_k w[o, k]``.
Bounds: ``|sum x*w| <= 255 * 127 * K < 2^29`` for ``K <= 16577``
(``kernels.checks.MAX_REDUCTION``), so the int32 lanes never wrap; the folded
bias ``bias - zp * sum w`` may leave int32 and is kept in int64.  Epilogue (per
lane, int64): ``((sum + bias_eff) * M + 2^(t-1)) >> t`` with ``t = 31 - shift``,
evaluated as ``(sum * M + bias_term) >> t`` with ``bias_term = bias_eff * M +
2^(t-1)`` precomputed per channel (the same integer; ``|sum * M| < 2^60``,
``|bias_term| < 2^63``), ``+ output_zero_point``, clamp -- the rule of
:mod:`kernels.fixedpoint`, written once more here in vector IR (the scalar
tail path calls ``requantize_round_half_up_scalar``); the equivalence tests
hold the two to the same bits.

The intrinsics only compile on CPUs with AVX-512 VNNI; :data:`AVAILABLE`
says whether to use them, and ``INTENGINE_DISABLE_VNNI=1`` forces the
portable kernel (same bits) for testing.
"""
from __future__ import annotations

import os
import threading

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from kernels.fixedpoint import requantize_round_half_up_scalar
from kernels.numba_backend.llvm_vector import I32, I64, V16, V16B, V16Q, array_data, clamp, splat, vector_ptr


def _host_has_vnni() -> bool:
    try:
        from llvmlite import binding

        features = binding.get_host_cpu_features()
        return bool(features.get("avx512vnni", False)) and bool(features.get("avx512bw", False))
    except Exception:  # pragma: no cover - unusual llvmlite builds
        return False


AVAILABLE = _host_has_vnni() and os.environ.get("INTENGINE_DISABLE_VNNI", "") in ("", "0")


def _scratch_ptrs(builder, scratch, scratch_stride, P, J):
    """Pointers to the int32 scratch tile: row p (stride ``scratch_stride``), channels 16j..16j+15."""
    ptrs = []
    for p in range(P):
        for j in range(J):
            off = builder.add(builder.mul(ir.Constant(I64, p), scratch_stride), ir.Constant(I64, 16 * j))
            ptrs.append(vector_ptr(builder, scratch, off, V16))
    return ptrs


def _dot_loop(builder, a_ptr, a_off, a_stride, a_row_stride, b_ptr, b_off, b_row_stride, k4, kernel_h, P, J):
    """Emit, from zero accumulators, ``for kh < kernel_h: for kk < k4: acc[p, j] = vpdpbusd(acc[p, j],
    bcast(a[a_off + kh*a_row_stride + p*a_stride + 4kk]), b[b_off + kh*b_row_stride + (kk*J + j)*64])``.

    The accumulators stay in registers across kernel rows (phi nodes of both loops); return them."""
    vnni = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(V16, [V16, V16, V16]), "llvm.x86.avx512.vpdpbusd.512")
    zero = ir.Constant(V16, [0] * 16)
    entry = builder.block
    row_head = builder.append_basic_block("vnni.row")
    head = builder.append_basic_block("vnni.head")
    body = builder.append_basic_block("vnni.body")
    row_end = builder.append_basic_block("vnni.rowend")
    done = builder.append_basic_block("vnni.done")
    builder.branch(row_head)

    builder.position_at_end(row_head)
    kh = builder.phi(I64)
    kh.add_incoming(ir.Constant(I64, 0), entry)
    row_accs = []
    for _ in range(P * J):
        phi = builder.phi(V16)
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
        phi = builder.phi(V16)
        phi.add_incoming(value, row_head)
        accs.append(phi)
    builder.cbranch(builder.icmp_signed("<", kk, k4), body, row_end)

    builder.position_at_end(body)
    b_row = builder.add(b_row0, builder.mul(kk, ir.Constant(I64, 64 * J)))
    b_vecs = [builder.load(vector_ptr(builder, b_ptr, builder.add(b_row, ir.Constant(I64, 64 * j)), V16), align=1)
              for j in range(J)]
    a_col = builder.add(a_row, builder.mul(kk, ir.Constant(I64, 4)))
    updated = []
    for p in range(P):
        off = builder.add(a_col, builder.mul(ir.Constant(I64, p), a_stride))
        word = builder.load(vector_ptr(builder, a_ptr, off, I32), align=1)
        a_vec = splat(builder, word, V16)
        for j in range(J):
            updated.append(builder.call(vnni, [accs[p * J + j], a_vec, b_vecs[j]]))
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


def _make_microkernels(P, J):
    @intrinsic
    def accumulate_tile(typingctx, a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k4, kernel_h,
                        scratch, scratch_stride):
        """scratch[p, 16j:16j+16] = the tile's int32 sums over all kernel rows (see ``_dot_loop``)."""
        sig = types.void(a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k4, kernel_h, scratch,
                         scratch_stride)

        def codegen(context, builder, signature, args):
            a_, a_off_, a_stride_, a_rs_, b_, b_off_, b_rs_, k4_, kh_, s_, s_stride_ = args
            ty = signature.args
            a_ptr = array_data(context, builder, ty[0], a_)
            b_ptr = array_data(context, builder, ty[4], b_)
            s_ptr = array_data(context, builder, ty[9], s_)
            accs = _dot_loop(builder, a_ptr, a_off_, a_stride_, a_rs_, b_ptr, b_off_, b_rs_, k4_, kh_, P, J)
            for ptr, value in zip(_scratch_ptrs(builder, s_ptr, s_stride_, P, J), accs):
                builder.store(value, ptr, align=4)
            return context.get_dummy_value()

        return sig, codegen

    @intrinsic
    def finish_tile(typingctx, a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k4, kernel_h,
                    out, out_off, out_pixel_stride, bias_term, multiplier, total_shift, channel0,
                    output_zero_point, act_min, act_max):
        """A full tile: all kernel rows, then requantize + clamp 16 channels at a time and store uint8."""
        sig = types.void(a, a_off, a_stride, a_row_stride, b, b_off, b_row_stride, k4, kernel_h,
                         out, out_off, out_pixel_stride, bias_term, multiplier, total_shift, channel0,
                         output_zero_point, act_min, act_max)

        def codegen(context, builder, signature, args):
            (a_, a_off_, a_stride_, a_rs_, b_, b_off_, b_rs_, k4_, kh_, o_, o_off_, o_stride_,
             bias_, mult_, tshift_, ch0_, zp_, lo_, hi_) = args
            ty = signature.args
            a_ptr = array_data(context, builder, ty[0], a_)
            b_ptr = array_data(context, builder, ty[4], b_)
            o_ptr = array_data(context, builder, ty[9], o_)
            bias_ptr = array_data(context, builder, ty[12], bias_)
            mult_ptr = array_data(context, builder, ty[13], mult_)
            tshift_ptr = array_data(context, builder, ty[14], tshift_)
            accs = _dot_loop(builder, a_ptr, a_off_, a_stride_, a_rs_, b_ptr, b_off_, b_rs_, k4_, kh_, P, J)
            # clamp before adding the zero point, in int64: the requantized value may exceed int32
            lo = splat(builder, builder.sub(lo_, zp_), V16Q)
            hi = splat(builder, builder.sub(hi_, zp_), V16Q)
            zp = splat(builder, zp_, V16Q)
            for j in range(J):
                ch = builder.add(ch0_, ir.Constant(I64, 16 * j))

                # (sum + bias_eff) * M + 2^(t-1) == sum * M + bias_term: one multiply and one add
                # per lane (LLVM emits vpmullq for the product of two sign-extended int32 lanes)
                bias_term = builder.load(vector_ptr(builder, bias_ptr, ch, V16Q), align=8)
                mult = builder.sext(builder.load(vector_ptr(builder, mult_ptr, ch, V16), align=4), V16Q)
                tshift = builder.load(vector_ptr(builder, tshift_ptr, ch, V16Q), align=8)
                for p in range(P):
                    acc = builder.sext(accs[p * J + j], V16Q)
                    r = builder.ashr(builder.add(builder.mul(acc, mult), bias_term), tshift)
                    r = clamp(builder, r, lo, hi)
                    r = builder.trunc(builder.add(r, zp), V16B)
                    off = builder.add(builder.add(o_off_, builder.mul(ir.Constant(I64, p), o_stride_)),
                                      ir.Constant(I64, 16 * j))
                    builder.store(r, vector_ptr(builder, o_ptr, off, V16B), align=1)
            return context.get_dummy_value()

        return sig, codegen

    return accumulate_tile, finish_tile


# Register-block variants (P pixels x J*16 channels): P*J accumulators + J weight
# vectors + 1 broadcast must fit in the 32 zmm registers.
VARIANTS = ((4, 4), (8, 2), (7, 2), (16, 1), (8, 1), (7, 1))
_acc_4_4, _fin_4_4 = _make_microkernels(4, 4)
_acc_8_2, _fin_8_2 = _make_microkernels(8, 2)
_acc_7_2, _fin_7_2 = _make_microkernels(7, 2)
_acc_16_1, _fin_16_1 = _make_microkernels(16, 1)
_acc_8_1, _fin_8_1 = _make_microkernels(8, 1)
_acc_7_1, _fin_7_1 = _make_microkernels(7, 1)
_MAX_TILE = max(P * 16 * J for P, J in VARIANTS)


def choose_variant(out_channels: int, out_width: int) -> int:
    """Index into VARIANTS: widest channel block dividing O, preferring P that divides OW (no tail tiles)."""
    fits = [i for i, (P, J) in enumerate(VARIANTS) if out_channels % (16 * J) == 0]
    if not fits:
        fits = [VARIANTS.index((16, 1))]  # channel tail handled by the scalar epilogue
    for i in fits:
        if out_width % VARIANTS[i][0] == 0:
            return i
    return fits[0]


@njit(cache=True, inline="always")  # a call per tile would cost as much as a small tile's math
def _tile(variant, full, xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h, scratch,
          tile_stride, of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi):
    # One tile over all kernel rows; a full tile runs the fused epilogue and writes uint8 output,
    # a partial one leaves its int32 sums in scratch for the scalar tail epilogue.
    if variant == 0:
        if full:
            _fin_4_4(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_4_4(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     scratch, tile_stride)
    elif variant == 1:
        if full:
            _fin_8_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_8_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     scratch, tile_stride)
    elif variant == 2:
        if full:
            _fin_7_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_7_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     scratch, tile_stride)
    elif variant == 3:
        if full:
            _fin_16_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                      of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_16_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                      scratch, tile_stride)
    elif variant == 4:
        if full:
            _fin_8_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_8_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     scratch, tile_stride)
    else:
        if full:
            _fin_7_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_7_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k4, kernel_h,
                     scratch, tile_stride)


@njit(cache=True, parallel=True)
def _pad_input_kernel(x, input_zero_point, padding, xp):
    # x (N, H, W, C) -> xp (N, Hp, Wp, Cp): zp border (and slack rows), channels C..Cp-1 zero.
    # Row-wise slice copies: a per-byte inside/outside test cost as much as a small conv layer.
    n_batch, height, width, channels = x.shape
    zp = np.uint8(input_zero_point)
    for n in prange(n_batch):
        for i in range(xp.shape[1]):
            row = xp[n, i]
            if i < padding or i >= padding + height:
                row[:, :channels] = zp
            else:
                row[:padding, :channels] = zp
                row[padding:padding + width, :channels] = x[n, i - padding]
                row[padding + width:, :channels] = zp
            if channels < xp.shape[3]:
                row[:, channels:] = 0


@njit(cache=True, parallel=True)
def _conv2d_vnni_kernel(xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c, kernel_h, kernel_w, n_out,
                        bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride,
                        act_min, act_max, out, of):
    # xf: the (N, Hp, Wp, Cp) padded input, flat; wp packed weights (see module doc);
    # out (N, OH, OW, O) uint8 and of, the same memory flat (flat views come from the
    # caller: Numba's reshape(-1) infers the size with float math)
    n_batch, out_h, out_w, _ = out.shape
    tile_o = 16 * tile_j
    n_blocks = (n_out + tile_o - 1) // tile_o
    k4 = kernel_w * padded_c // 4
    b_row_stride = k4 * tile_o * 4  # packed weight bytes per kernel row of one channel block
    n_tiles = (out_w + tile_p - 1) // tile_p
    for task in prange(n_batch * out_h):
        scratch = np.empty(_MAX_TILE, dtype=np.int32)
        n = task // out_h
        oh = task - n * out_h
        for t in range(n_tiles):
            ow0 = t * tile_p
            for ob in range(n_blocks):
                ch0 = ob * tile_o
                full = ow0 + tile_p <= out_w and ch0 + tile_o <= n_out
                a_off = ((n * padded_h + oh * stride) * padded_w + ow0 * stride) * padded_c
                o_off = ((n * out_h + oh) * out_w + ow0) * n_out + ch0
                _tile(variant, full, xf, a_off, stride * padded_c, padded_w * padded_c, wp,
                      ob * kernel_h * b_row_stride, b_row_stride, k4, kernel_h, scratch, tile_o, of, o_off, n_out,
                      bias_term, mult, tshift, ch0, output_zero_point, act_min, act_max)
                if not full:  # tail tile: scalar epilogue on the valid pixels and channels
                    for p in range(min(tile_p, out_w - ow0)):
                        for jj in range(min(tile_o, n_out - ch0)):
                            o = ch0 + jj
                            acc = np.int64(scratch[p * tile_o + jj]) + np.int64(bias_eff[o])
                            v = requantize_round_half_up_scalar(acc, mult[o], shift[o]) + output_zero_point
                            if v < act_min:
                                v = act_min
                            elif v > act_max:
                                v = act_max
                            out[n, oh, ow0 + p, o] = np.uint8(v)


class PackedConvWeights:
    """Weights of one conv layer in the VNNI layout, with the folded bias and epilogue constants."""

    def __init__(self, weight, bias, input_zero_point, output_multiplier, output_shift, out_width):
        n_out, kernel_h, kernel_w, channels = weight.shape
        self.variant = choose_variant(n_out, out_width)
        self.tile_p, self.tile_j = VARIANTS[self.variant]
        tile_o = 16 * self.tile_j
        self.padded_c = (channels + 3) // 4 * 4
        n_blocks = (n_out + tile_o - 1) // tile_o
        o_pad = n_blocks * tile_o
        w = np.zeros((o_pad, kernel_h, kernel_w, self.padded_c), dtype=np.int8)
        w[:n_out, :, :, :channels] = weight
        k4 = kernel_w * self.padded_c // 4
        # [Ob][J][16][KH][k4][4] -> [Ob][KH][k4][J][16][4]
        self.packed = np.ascontiguousarray(
            w.reshape(n_blocks, self.tile_j, 16, kernel_h, k4, 4).transpose(0, 3, 4, 1, 2, 5)).reshape(-1)
        weight_sum = weight.reshape(n_out, -1).astype(np.int64).sum(axis=1)
        self.bias_eff = np.zeros(o_pad, dtype=np.int64)  # bias - zp*sum(w) may leave int32
        self.bias_eff[:n_out] = bias.astype(np.int64) - int(input_zero_point) * weight_sum
        self.mult = np.zeros(o_pad, dtype=np.int32)
        self.mult[:n_out] = output_multiplier
        self.shift = np.zeros(o_pad, dtype=np.int32)
        self.shift[:n_out] = output_shift
        self.tshift = (31 - self.shift.astype(np.int64)).astype(np.int64)
        # bias_eff * M + 2^(t-1): |bias_eff| < 2^31 + 2^29 and M < 2^31 keep it below 2^63 - 2^61
        self.bias_term = self.bias_eff * self.mult.astype(np.int64) + np.left_shift(np.int64(1), self.tshift - 1)
        self.kernel_h, self.kernel_w, self.n_out = kernel_h, kernel_w, n_out


_WORKSPACE = threading.local()


def _workspace(shape) -> np.ndarray:
    """A uint8 scratch array of ``shape`` for the padded input, reused by later calls of this thread.

    Allocating a fresh multi-megabyte buffer per layer costs a page fault per 4 KiB on first
    touch (about a fifth of a ResNet-20 forward at batch 400); the padded input is dead when
    conv2d returns, so one growing buffer per thread serves every layer."""
    size = int(np.prod(shape))
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=np.uint8)
        _WORKSPACE.buf = buf
    return buf[:size].reshape(shape)


_PACK_CACHE: dict = {}
_PACK_CACHE_MAX = 512


def _packed(weight, bias, input_zero_point, output_multiplier, output_shift, out_width):
    # Keyed on the arrays' identities. The entry keeps all four arrays alive, so no id in a live
    # key can be reused by another array; the arrays are treated as immutable (the engine never
    # writes them), so a hit means the same contents.
    arrays = (weight, bias, output_multiplier, output_shift)
    key = tuple(id(a) for a in arrays) + (int(input_zero_point), out_width)
    hit = _PACK_CACHE.get(key)
    if hit is not None and all(kept is a for kept, a in zip(hit[0], arrays)):
        return hit[1]
    packed = PackedConvWeights(weight, bias, input_zero_point, output_multiplier, output_shift, out_width)
    if len(_PACK_CACHE) >= _PACK_CACHE_MAX:
        _PACK_CACHE.clear()
    _PACK_CACHE[key] = (arrays, packed)
    return packed


def conv2d_vnni(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                output_zero_point, stride, padding, act_min, act_max, out):
    """VNNI conv2d on already-validated arguments into ``out`` (N, OH, OW, O); same bits as the reference."""
    n_batch, height, width, _ = x.shape
    pk = _packed(weight, bias, input_zero_point, output_multiplier, output_shift, out.shape[2])
    padded_w = width + 2 * padding
    # the last tile of a row may read up to tile_p*stride pixels past the row end: slack rows
    slack_rows = (pk.tile_p * stride + padded_w - 1) // padded_w + 1
    xp = _workspace((n_batch, height + 2 * padding + slack_rows, padded_w, pk.padded_c))
    _pad_input_kernel(x, np.int64(input_zero_point), np.int64(padding), xp)
    _conv2d_vnni_kernel(xp.reshape(-1), np.int64(xp.shape[1]), np.int64(xp.shape[2]), pk.packed,
                        np.int64(pk.variant), np.int64(pk.tile_p), np.int64(pk.tile_j),
                        np.int64(pk.padded_c), np.int64(pk.kernel_h), np.int64(pk.kernel_w), np.int64(pk.n_out),
                        pk.bias_eff, pk.bias_term, pk.mult, pk.shift, pk.tshift, np.int64(output_zero_point),
                        np.int64(stride), np.int64(act_min), np.int64(act_max), out, out.reshape(-1))
    return out
