"""conv2d, Numba backend: same signature and bits as :func:`kernels.reference.conv2d`.

Design (portable, integer-only):

* parallel over output rows ``(n, oh)`` (``prange``), so any batch size keeps
  every thread busy;
* per row, an im2col patch matrix ``(OW, K)`` of ``x - input_zero_point`` in
  int16 (|value| <= 255; padding is stored as 0, which is exactly the
  reference's zero-point padding), laid out ``(kh, kw, c)`` like an OHWI weight
  row, so every output is one contiguous length-K dot product;
* weights widened once per call to int16 ``(O, K)``; the dot product
  accumulates in int32 (products <= 255*127, K <= 16577, so |dot| < 2^29) in a
  loop LLVM vectorizes (``pmaddwd``-style int16 x int16 -> int32);
* requantization through :func:`kernels.fixedpoint.requantize_round_half_up_scalar`.

The SIMD rungs (:mod:`kernels.numba_backend.microkernel`: AVX2, AVX-512 VNNI) replace the
patch + ``_row_dot`` stage with a register-blocked micro-kernel on the zero-point-padded input:
``acc = sum(x * w) - input_zero_point * sum(w[o])``, the same integer.
"""
from __future__ import annotations

import functools
import os

import numpy as np
from numba import njit, prange

from kernels import checks
from kernels.numba_backend import avx2, vnni
from kernels.numba_backend.microkernel import PreparedConv2d, PreparedConv2dAdd
from kernels.fixedpoint import requantize_round_half_up_scalar


@njit(cache=True, inline="always")
def _row_dot(patch, weight16, p, o, k_len):
    # patch (OW, K) int16, weight16 (O, K) int16 -> int32 dot of patch row p and weight row o;
    # |sum| < 2^29 (checks.MAX_REDUCTION), so the int32 accumulator is exact
    acc = np.int32(0)
    for k in range(k_len):
        acc = np.int32(acc + np.int32(patch[p, k]) * np.int32(weight16[o, k]))
    return acc


@njit(cache=True, parallel=True)
def _conv2d_kernel(x, weight16, kernel_h, kernel_w, bias, input_zero_point, output_multiplier,
                   output_shift, output_zero_point, stride, padding, act_min, act_max, out):
    # x (N, H, W, C) uint8; weight16 (O, K) int16 with K = KH*KW*C in (kh, kw, c) order;
    # out (N, OH, OW, O) uint8
    n_batch, height, width, channels = x.shape
    n_out, k_len = weight16.shape
    out_h, out_w = out.shape[1], out.shape[2]
    row_len = kernel_w * channels
    for task in prange(n_batch * out_h):
        n = task // out_h
        oh = task - n * out_h
        patch = np.zeros((out_w, k_len), dtype=np.int16)  # padding stays 0 == zp - zp
        for ow in range(out_w):
            for kh in range(kernel_h):
                ih = oh * stride - padding + kh
                if ih < 0 or ih >= height:
                    continue
                for kw in range(kernel_w):
                    iw = ow * stride - padding + kw
                    if iw < 0 or iw >= width:
                        continue
                    base = kh * row_len + kw * channels
                    for c in range(channels):
                        patch[ow, base + c] = np.int16(np.int16(x[n, ih, iw, c]) - input_zero_point)
        for ow in range(out_w):
            for o in range(n_out):
                acc = np.int64(_row_dot(patch, weight16, ow, o, k_len)) + np.int64(bias[o])
                v = requantize_round_half_up_scalar(acc, output_multiplier[o], output_shift[o]) + output_zero_point
                if v < act_min:
                    v = act_min
                elif v > act_max:
                    v = act_max
                out[n, oh, ow, o] = np.uint8(v)


# The ladder, best first: each rung gives the reference's bits. INTENGINE_ISA caps it (tests force
# every rung this CPU has); the older INTENGINE_DISABLE_VNNI=1 caps it below VNNI.
RUNGS = ("vnni512", "avx2", "portable")
_RUNG_AVAILABLE = {"vnni512": vnni.AVAILABLE, "avx2": avx2.AVAILABLE, "portable": True}


def available_rungs() -> tuple[str, ...]:
    """The rungs this CPU can run, best first."""
    return tuple(r for r in RUNGS if _RUNG_AVAILABLE[r])


def _selected_rung() -> str:
    cap = os.environ.get("INTENGINE_ISA", "auto").strip().lower() or "auto"
    if cap != "auto" and cap not in RUNGS:
        raise ValueError(f"INTENGINE_ISA must be one of auto, {', '.join(RUNGS)}; got {cap!r}")
    if os.environ.get("INTENGINE_DISABLE_VNNI", "") not in ("", "0") and cap in ("auto", "vnni512"):
        cap = "avx2"
    allowed = RUNGS if cap == "auto" else RUNGS[RUNGS.index(cap):]
    return next(r for r in allowed if _RUNG_AVAILABLE[r])


SELECTED = _selected_rung()
"""The rung :func:`conv2d` runs on this CPU (chosen once, at import)."""


def _rung_conv2d(rung):
    def conv2d_on_rung(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                       output_zero_point, stride, padding, act_min, act_max, out=None):
        return _conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                       output_zero_point, stride, padding, act_min, act_max, out, rung=rung)
    conv2d_on_rung.__name__ = conv2d_on_rung.__qualname__ = f"conv2d_{rung}"
    conv2d_on_rung.__doc__ = f":func:`conv2d` forced onto the {rung} rung (the reference's bits)."
    return conv2d_on_rung


conv2d = _rung_conv2d(SELECTED)
conv2d.__name__ = conv2d.__qualname__ = "conv2d"
conv2d.__doc__ = f"""Quantized conv2d; see :func:`kernels.reference.conv2d` for the definition.

Runs the best rung of the ladder this CPU has (here: {SELECTED}); every rung gives the reference's bits."""
conv2d_portable = _rung_conv2d("portable")
conv2d_avx2 = _rung_conv2d("avx2")
conv2d_vnni512 = _rung_conv2d("vnni512")


def _rung_kernels(rung):
    """(ISA, conv kernel, conv + add kernel) of a SIMD rung, looked up by name when a layer is prepared."""
    module, short = (vnni, "vnni") if rung == "vnni512" else (avx2, "avx2")
    return module.ISA, getattr(module, f"_conv2d_{short}_kernel"), getattr(module, f"_conv2d_add_{short}_kernel")


def prepare_conv2d(weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point, stride,
                   padding, act_min, act_max, input_shape, rung=None):
    """One layer of :func:`conv2d` as a callable ``run(x, out) -> out`` for inputs of ``input_shape`` (H, W, C).

    The arguments are checked here, once (the same checks as :func:`conv2d`); ``run`` checks nothing: ``x``
    must be uint8 (N, H, W, C), C-contiguous, and ``out`` uint8 (N, OH, OW, O), C-contiguous, not overlapping
    ``x``. For a caller that runs one validated layer many times (the engine): same bits as :func:`conv2d`,
    without its per-call Python work (checks, cache lookups; about 1.1 ms per ResNet-20 forward in all)."""
    rung = rung or SELECTED
    if not _RUNG_AVAILABLE[rung]:
        raise ValueError(f"this CPU cannot run the {rung} conv2d rung (available: {', '.join(available_rungs())})")
    (_, weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point, stride, padding,
     act_min, act_max, _, out_w) = checks.conv2d_args(
        np.zeros((0,) + tuple(int(v) for v in input_shape), np.uint8), weight, bias, input_zero_point,
        output_multiplier, output_shift, output_zero_point, stride, padding, act_min, act_max)
    scalars = (output_zero_point, stride, padding, act_min, act_max)
    if rung in ("vnni512", "avx2"):
        isa, kernel, _ = _rung_kernels(rung)
        return PreparedConv2d(isa, kernel, weight, bias, input_zero_point, output_multiplier,
                              output_shift, *scalars, weight.shape[3], out_w)
    n_out, kernel_h, kernel_w, channels = weight.shape
    weight16 = weight.reshape(n_out, kernel_h * kernel_w * channels).astype(np.int16)

    def run_portable(x, out):
        _conv2d_kernel(x, weight16, kernel_h, kernel_w, bias, input_zero_point, output_multiplier, output_shift,
                       *scalars, out)
        return out

    return run_portable


def prepare_conv2d_add(weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point, stride,
                       padding, act_min, act_max, input_shape, add, conv_is_a=True, rung=None):
    """A conv layer whose output is one operand of a residual add, as one callable
    ``run(x, residual, conv_out, add_out) -> add_out``: ``add_out = add_round_half_up(conv2d(x), residual,
    *add)`` (``conv_is_a``; else the conv's output is operand b), ``conv_out`` receives the conv's output.

    ``add``: the add's parameters after its two inputs. Everything is checked here, once, as by the ops;
    ``run`` checks nothing (arrays as in :func:`prepare_conv2d`, ``residual`` and ``add_out`` of the conv
    output's shape, no two overlapping). On the SIMD rungs each conv output row is added while it is in
    cache (:class:`~kernels.numba_backend.microkernel.PreparedConv2dAdd`); the bits are those of the two
    ops in sequence (the equivalence tests check it)."""
    from kernels.numba_backend.op_add_round_half_up import prepare_add_round_half_up, kernel_params

    rung = rung or SELECTED
    conv = prepare_conv2d(weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point,
                          stride, padding, act_min, act_max, input_shape, rung=rung)
    a_zp, a_m, a_s, b_zp, b_m, b_s, out_zp, add_min, add_max = add
    if not conv_is_a:  # the add's formula is symmetric in its operands: make the conv's output operand a
        a_zp, a_m, a_s, b_zp, b_m, b_s = b_zp, b_m, b_s, a_zp, a_m, a_s
    add_run = prepare_add_round_half_up(a_zp, a_m, a_s, b_zp, b_m, b_s, out_zp, add_min, add_max)  # checks
    if not isinstance(conv, PreparedConv2d):
        def run_portable(x, residual, conv_out, add_out):
            return add_run(conv(x, conv_out), residual, add_out)
        return run_portable
    add_kernel = _rung_kernels(rung)[2]
    params = kernel_params(a_zp, a_m, a_s, b_zp, b_m, b_s, out_zp, add_min, add_max)
    return PreparedConv2dAdd(conv, add_kernel, params)


for _rung, _conv in (("portable", conv2d_portable), ("avx2", conv2d_avx2), ("vnni512", conv2d_vnni512),
                     (SELECTED, conv2d)):
    _conv.prepare = functools.partial(prepare_conv2d, rung=_rung)
    _conv.prepare_add = functools.partial(prepare_conv2d_add, rung=_rung)


def _conv2d(x, weight, bias, input_zero_point, output_multiplier, output_shift,
            output_zero_point, stride, padding, act_min, act_max, out, rung):
    if not _RUNG_AVAILABLE[rung]:
        raise ValueError(f"this CPU cannot run the {rung} conv2d rung (available: {', '.join(available_rungs())})")
    (x, weight, bias, input_zero_point, output_multiplier, output_shift, output_zero_point,
     stride, padding, act_min, act_max, oh, ow) = checks.conv2d_args(
        x, weight, bias, input_zero_point, output_multiplier, output_shift,
        output_zero_point, stride, padding, act_min, act_max)
    n_out, kernel_h, kernel_w, channels = weight.shape
    out = checks.output_buffer(out, (x.shape[0], oh, ow, n_out), x)
    if rung == "vnni512":
        return vnni.conv2d_vnni(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                                output_zero_point, stride, padding, act_min, act_max, out)
    if rung == "avx2":
        return avx2.conv2d_avx2(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                                output_zero_point, stride, padding, act_min, act_max, out)
    weight16 = weight.reshape(n_out, kernel_h * kernel_w * channels).astype(np.int16)
    _conv2d_kernel(x, weight16, kernel_h, kernel_w, bias, input_zero_point, output_multiplier,
                   output_shift, output_zero_point, stride, padding, act_min, act_max, out)
    return out
