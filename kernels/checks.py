"""Argument checks shared by every backend, so that both reject the same inputs.

The kernels themselves never see an argument these checks would reject; the
bounds here are the ones the overflow arguments in the op docstrings rely on.
Violations raise ``ValueError`` with a one-line message (``kernels`` must not
import ``intengine``; the engine turns them into ``IntengineError``).
"""
from __future__ import annotations

import numpy as np

from kernels.fixedpoint import check_multiplier

# |x - zp| <= 255 and |w| <= 127, so one product is at most 32385 in magnitude.
# Keeping the dot product below 2^29 lets the fast kernels accumulate in int32
# and keeps |bias + dot| < 2^31 + 2^29, which the requantization bound needs.
MAX_PRODUCT = 255 * 127
MAX_REDUCTION = (2**29) // MAX_PRODUCT  # 16577 >= 3*3*512 (ResNet-50) and 2048 (its linear layer)


def _fail(message: str):
    raise ValueError(message)


def check_array(name: str, a, dtype, ndim: int) -> np.ndarray:
    """Return ``a`` as a C-contiguous array after checking dtype and rank (no silent casts)."""
    if not isinstance(a, np.ndarray):
        _fail(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.dtype != dtype:
        _fail(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype.name}")
    if a.ndim != ndim:
        _fail(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return np.ascontiguousarray(a)


def output_buffer(out, shape: tuple, *inputs: np.ndarray) -> np.ndarray:
    """``out`` checked as a destination (uint8, C-contiguous, writeable, ``shape``, no overlap with
    ``inputs``: the fast kernels read inputs while writing), or a new uint8 array when None."""
    shape = tuple(int(v) for v in shape)
    if out is None:
        return np.empty(shape, dtype=np.uint8)
    if not isinstance(out, np.ndarray) or out.dtype != np.uint8:
        _fail("out must be a uint8 numpy array")
    if out.shape != shape:
        _fail(f"out must have shape {shape}, got {out.shape}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        _fail("out must be C-contiguous and writeable")
    if any(np.may_share_memory(out, a) for a in inputs):
        _fail("out must not overlap the inputs")
    return out


def check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    """Return ``value`` as a Python int after checking ``lo <= value <= hi``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        _fail(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        upper = "inf" if hi is None else hi
        _fail(f"{name} must be in [{lo}, {upper}], got {value}")
    return value


def check_activation_range(act_min, act_max) -> tuple[int, int]:
    act_min = check_int("act_min", act_min, 0, 255)
    act_max = check_int("act_max", act_max, 0, 255)
    if act_min > act_max:
        _fail(f"act_min ({act_min}) must not exceed act_max ({act_max})")
    return act_min, act_max


def check_weight(weight: np.ndarray) -> None:
    if weight.size and int(weight.min()) < -127:
        _fail("weight must be in [-127, 127] (symmetric int8); found -128")


def check_per_channel(name: str, a, channels: int) -> np.ndarray:
    a = check_array(name, a, np.int32, 1)
    if a.shape[0] != channels:
        _fail(f"{name} must have {channels} entries (one per output channel), got {a.shape[0]}")
    return a


def check_requant(output_multiplier, output_shift, channels: int):
    output_multiplier = check_per_channel("output_multiplier", output_multiplier, channels)
    output_shift = check_per_channel("output_shift", output_shift, channels)
    check_multiplier(output_multiplier, output_shift)
    return output_multiplier, output_shift


def check_scalar_requant(prefix: str, multiplier, shift) -> tuple[int, int]:
    multiplier = check_int(f"{prefix}multiplier", multiplier, 0, 2**31 - 1)
    shift = check_int(f"{prefix}shift", shift, -31, 30)
    check_multiplier(multiplier, shift)
    return multiplier, shift


def check_reduction(k: int) -> None:
    if k > MAX_REDUCTION:
        _fail(f"reduction length {k} exceeds {MAX_REDUCTION} (int32 accumulator bound)")


def conv2d_args(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                output_zero_point, stride, padding, act_min, act_max):
    """Validate conv2d arguments; return them normalized plus ``(OH, OW)``."""
    x = check_array("x", x, np.uint8, 4)
    weight = check_array("weight", weight, np.int8, 4)
    n, h, w, c = x.shape
    o, kh, kw, wc = weight.shape
    if wc != c:
        _fail(f"weight has {wc} input channels but x has {c}")
    if kh < 1 or kw < 1 or o < 1:
        _fail(f"weight shape {weight.shape} is empty")
    check_weight(weight)
    check_reduction(kh * kw * c)
    bias = check_per_channel("bias", bias, o)
    output_multiplier, output_shift = check_requant(output_multiplier, output_shift, o)
    input_zero_point = check_int("input_zero_point", input_zero_point, 0, 255)
    output_zero_point = check_int("output_zero_point", output_zero_point, 0, 255)
    stride = check_int("stride", stride, 1)
    padding = check_int("padding", padding, 0)
    act_min, act_max = check_activation_range(act_min, act_max)
    if h + 2 * padding < kh or w + 2 * padding < kw:
        _fail(f"kernel {kh}x{kw} is larger than the padded input {h + 2 * padding}x{w + 2 * padding}")
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    return (x, weight, bias, input_zero_point, output_multiplier, output_shift,
            output_zero_point, stride, padding, act_min, act_max, oh, ow)


def linear_args(x, weight, bias, input_zero_point, output_multiplier, output_shift,
                output_zero_point, act_min, act_max):
    x = check_array("x", x, np.uint8, 2)
    weight = check_array("weight", weight, np.int8, 2)
    o, k = weight.shape
    if x.shape[1] != k:
        _fail(f"weight has {k} inputs but x has {x.shape[1]} features")
    if o < 1:
        _fail("weight has no output channels")
    check_weight(weight)
    check_reduction(k)
    bias = check_per_channel("bias", bias, o)
    output_multiplier, output_shift = check_requant(output_multiplier, output_shift, o)
    input_zero_point = check_int("input_zero_point", input_zero_point, 0, 255)
    output_zero_point = check_int("output_zero_point", output_zero_point, 0, 255)
    act_min, act_max = check_activation_range(act_min, act_max)
    return (x, weight, bias, input_zero_point, output_multiplier, output_shift,
            output_zero_point, act_min, act_max)


def add_args(a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
             output_zero_point, act_min, act_max):
    if not isinstance(a, np.ndarray) or not isinstance(b, np.ndarray):
        _fail("a and b must be numpy arrays")
    a = check_array("a", a, np.uint8, a.ndim)
    b = check_array("b", b, np.uint8, b.ndim)
    if a.shape != b.shape:
        _fail(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    a_zero_point = check_int("a_zero_point", a_zero_point, 0, 255)
    b_zero_point = check_int("b_zero_point", b_zero_point, 0, 255)
    a_multiplier, a_shift = check_scalar_requant("a_", a_multiplier, a_shift)
    b_multiplier, b_shift = check_scalar_requant("b_", b_multiplier, b_shift)
    if abs(a_shift - b_shift) > 20:
        _fail(f"|a_shift - b_shift| must be <= 20, got {abs(a_shift - b_shift)}")
    output_zero_point = check_int("output_zero_point", output_zero_point, 0, 255)
    act_min, act_max = check_activation_range(act_min, act_max)
    return (a, b, a_zero_point, a_multiplier, a_shift, b_zero_point, b_multiplier, b_shift,
            output_zero_point, act_min, act_max)


def avg_pool_args(x, kernel, stride, input_zero_point, output_multiplier, output_shift,
                  output_zero_point, act_min, act_max):
    x = check_array("x", x, np.uint8, 4)
    n, h, w, c = x.shape
    kernel = check_int("kernel", kernel, 1)
    stride = check_int("stride", stride, 1)
    if kernel > h or kernel > w:
        _fail(f"pool kernel {kernel} is larger than the input {h}x{w}")
    check_reduction(kernel * kernel)
    input_zero_point = check_int("input_zero_point", input_zero_point, 0, 255)
    output_multiplier, output_shift = check_scalar_requant("output_", output_multiplier, output_shift)
    output_zero_point = check_int("output_zero_point", output_zero_point, 0, 255)
    act_min, act_max = check_activation_range(act_min, act_max)
    oh = (h - kernel) // stride + 1
    ow = (w - kernel) // stride + 1
    return (x, kernel, stride, input_zero_point, output_multiplier, output_shift,
            output_zero_point, act_min, act_max, oh, ow)


def max_pool_args(x, kernel, stride, padding):
    x = check_array("x", x, np.uint8, 4)
    n, h, w, c = x.shape
    kernel = check_int("kernel", kernel, 1)
    stride = check_int("stride", stride, 1)
    # padding < kernel keeps at least one real element in every window
    padding = check_int("padding", padding, 0, kernel - 1)
    if h + 2 * padding < kernel or w + 2 * padding < kernel:
        _fail(f"pool kernel {kernel} is larger than the padded input")
    oh = (h + 2 * padding - kernel) // stride + 1
    ow = (w + 2 * padding - kernel) // stride + 1
    return x, kernel, stride, padding, oh, ow


def argmax_args(logits):
    logits = check_array("logits", logits, np.uint8, 2)
    if logits.shape[1] < 1:
        _fail("logits must have at least one class")
    return logits
