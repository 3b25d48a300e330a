"""conv2d on AVX-512 VNNI (vpdpbusd, uint8 x int8): the shared micro-kernel
(:mod:`kernels.numba_backend.microkernel`) for this ISA.

Same signature and bits as :func:`kernels.reference.conv2d`. Compiled only where the CPU has AVX-512 VNNI
and BW (the intrinsic does not lower elsewhere); :mod:`kernels.numba_backend.op_conv2d` picks the rung.
"""
from __future__ import annotations

from numba import njit

from kernels.numba_backend.microkernel import (conv2d_tiles, host_features, make_microkernels, max_tile,
                                               no_row_op, run_conv2d)
from kernels.numba_backend.microkernel import VNNI512 as ISA
from kernels.numba_backend.op_add_round_half_up import add_row

_features = host_features()
AVAILABLE = bool(_features.get("avx512vnni", False) and _features.get("avx512bw", False))

# One intrinsic pair per register block of ISA.variants (the order is the variant index). Numba
# caches only module-level functions (not factory closures, not kernels taking a dispatcher
# argument: both recompile at every start), so each rung spells out its blocks and its tile
# dispatcher; the IR they run and the driver loop (conv2d_tiles, inlined) live in microkernel.py.
_acc_4_4, _fin_4_4 = make_microkernels(ISA, 4, 4)
_acc_8_2, _fin_8_2 = make_microkernels(ISA, 8, 2)
_acc_7_2, _fin_7_2 = make_microkernels(ISA, 7, 2)
_acc_16_1, _fin_16_1 = make_microkernels(ISA, 16, 1)
_acc_8_1, _fin_8_1 = make_microkernels(ISA, 8, 1)
_acc_7_1, _fin_7_1 = make_microkernels(ISA, 7, 1)
_MAX_TILE = max_tile(ISA)
_LANES, _GROUP = ISA.lanes, ISA.group  # plain ints: compile-time constants in the kernels


@njit(cache=True, inline="always")  # a call per tile would cost as much as a small tile's math
def _tile(variant, full, xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h, scratch,
          tile_stride, of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi):
    # One tile over all kernel rows; a full tile runs the fused epilogue and writes uint8 output,
    # a partial one leaves its int32 sums in scratch for the scalar tail epilogue.
    if variant == 0:
        if full:
            _fin_4_4(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_4_4(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 1:
        if full:
            _fin_8_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_8_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 2:
        if full:
            _fin_7_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_7_2(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 3:
        if full:
            _fin_16_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_16_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    elif variant == 4:
        if full:
            _fin_8_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_8_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)
    else:
        if full:
            _fin_7_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             of, o_off, o_stride, bias_term, mult, tshift, ch0, zp, lo, hi)
        else:
            _acc_7_1(xf, a_off, a_stride, a_row_stride, wp, b_off, b_row_stride, k_steps, kernel_h,
             scratch, tile_stride)


@njit(cache=True, parallel=True)
def _conv2d_vnni_kernel(xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c, kernel_h, k_steps, n_out,
                        bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride, act_min, act_max, out, of,
                        out_pad, n_workers, grain):
    conv2d_tiles(_tile, _LANES, _GROUP, _MAX_TILE, xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c,
                 kernel_h, k_steps, n_out, bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride,
                 act_min, act_max, out, of, out_pad, no_row_op, (0,), (n_workers, grain))


@njit(cache=True, parallel=True)
def _conv2d_add_vnni_kernel(xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c, kernel_h, k_steps,
                            n_out, bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride, act_min, act_max,
                            out, of, out_pad, add_args, n_workers, grain):
    # the conv, then the residual add of each output row while the row is in cache (add_row, add_args)
    conv2d_tiles(_tile, _LANES, _GROUP, _MAX_TILE, xf, padded_h, padded_w, wp, variant, tile_p, tile_j, padded_c,
                 kernel_h, k_steps, n_out, bias_eff, bias_term, mult, shift, tshift, output_zero_point, stride,
                 act_min, act_max, out, of, out_pad, add_row, add_args, (n_workers, grain))


def conv2d_vnni(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                output_zero_point, stride, padding, act_min, act_max, out):
    """conv2d into ``out`` (N, OH, OW, O) on validated arguments: the reference's bits."""
    return run_conv2d(ISA, _conv2d_vnni_kernel, x, weight, bias, input_zero_point, output_multiplier, output_shift,
                      output_zero_point, stride, padding, act_min, act_max, out)
