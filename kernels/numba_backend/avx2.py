"""conv2d on AVX2 (vpmaddwd, int16 x int16 pairs): the shared micro-kernel
(:mod:`kernels.numba_backend.microkernel`) for this ISA.

Same signature and bits as :func:`kernels.reference.conv2d`. Compiled only where the CPU has AVX2 (any
x86-64 from 2013 on, AMD Zen included); :mod:`kernels.numba_backend.op_conv2d` picks the rung.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from kernels.fixedpoint import requantize_round_half_up_scalar
from kernels.numba_backend.microkernel import (AVX2 as ISA, host_features, make_microkernels, max_tile, pad_input,
                                               packed_weights)

_features = host_features()
AVAILABLE = bool(_features.get("avx2", False))

# One intrinsic pair per register block of ISA.variants (the order is the variant index). Numba
# caches only module-level functions (not factory closures, not kernels taking a dispatcher
# argument: both recompile at every start), so each rung spells out its blocks, its dispatcher
# and its driver loop; the IR they run is generated once, in microkernel.py.
_acc_2_4, _fin_2_4 = make_microkernels(ISA, 2, 4)
_acc_4_2, _fin_4_2 = make_microkernels(ISA, 4, 2)
_acc_6_2, _fin_6_2 = make_microkernels(ISA, 6, 2)
_acc_8_1, _fin_8_1 = make_microkernels(ISA, 8, 1)
_acc_7_1, _fin_7_1 = make_microkernels(ISA, 7, 1)
_acc_4_1, _fin_4_1 = make_microkernels(ISA, 4, 1)
_MAX_TILE = max_tile(ISA)
_LANES, _GROUP = ISA.lanes, ISA.group  # plain ints: compile-time constants in the kernels


@njit(cache=True, inline="always")  # a call per tile would cost as much as a small tile's math
def _tile(variant, full, xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h, scratch,
          tile_stride, of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi):
    # One tile over all kernel rows; a full tile runs the fused epilogue and writes uint8 output,
    # a partial one leaves its int32 sums in scratch for the scalar tail epilogue.
    if variant == 0:
        if full:
            _fin_2_4(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_2_4(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 1:
        if full:
            _fin_4_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_4_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 2:
        if full:
            _fin_6_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_6_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 3:
        if full:
            _fin_8_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_8_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 4:
        if full:
            _fin_7_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_7_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    else:
        if full:
            _fin_4_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_4_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)


@njit(cache=True, parallel=True)
def _conv2d_avx2_kernel(xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c, kernel_h, k_steps, n_out,
                        bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride,
                        act_min, act_max, out, of):
    # xf: the (N, Hp, Wp, Cp) padded input, flat; wp packed weights (microkernel's layout);
    # out (N, OH, OW, O) uint8 and of, the same memory flat (flat views come from the
    # caller: Numba's reshape(-1) infers the size with float math)
    n_batch, out_h, out_w, _ = out.shape
    tile_o = _LANES * tile_j
    n_blocks = (n_out + tile_o - 1) // tile_o
    b_row_stride = k_steps * tile_o * _GROUP  # packed weight elements per kernel row of one channel block
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
                      ob * kernel_h * b_row_stride, b_row_stride, k_steps, kernel_h, scratch, tile_o, of, o_off, n_out,
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


def conv2d_avx2(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                output_zero_point, stride, padding, act_min, act_max, out):
    """conv2d into ``out`` (N, OH, OW, O) on validated arguments: the reference's bits."""
    pk = packed_weights(ISA, weight, bias, input_zero_point, output_multiplier, output_shift, out.shape[2])
    # a 1x1 unpadded conv with stride s reads every s-th pixel: copy only those, run stride 1
    subsample = stride if pk.kernel_h == pk.kernel_w == 1 and padding == 0 else 1
    stride //= subsample
    xp = pad_input(ISA, x, input_zero_point, padding, pk.tile_p, stride, pk.padded_c, subsample)
    _conv2d_avx2_kernel(xp.reshape(-1), np.int64(xp.shape[1]), np.int64(xp.shape[2]), pk.packed,
                        np.int64(pk.variant), np.int64(pk.tile_p), np.int64(pk.tile_j),
                        np.int64(pk.padded_c), np.int64(pk.kernel_h), np.int64(pk.k_steps), np.int64(pk.n_out),
                        pk.bias_eff, pk.bias_term, pk.mult, pk.shift, pk.tshift, np.int64(output_zero_point),
                        np.int64(stride), np.int64(act_min), np.int64(act_max), out, out.reshape(-1))
    return out
