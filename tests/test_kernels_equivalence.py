"""Numba backend == NumPy reference, bit for bit, for every op (gemmlowp's rule: the fast path makes no difference).

Random cases come from hypothesis (shapes incl. channel counts that are not a
multiple of 16, kernels 1/3/7, strides, paddings, zero points 0..255,
per-channel multipliers picked from the accumulator's range, fused ReLU);
directed cases cover rounding ties, int32 limits, weights at -127 and all-255
inputs.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import kernels
from kernels.checks import MAX_REDUCTION
from kernels.fixedpoint import quantize_multiplier, quantize_multipliers
from kernel_cases import (
    BACKEND_NAMES,
    conv_acc,
    interior_count,
    linear_acc,
    predicted_interior,
    random_conv_case,
    random_linear_case,
)

REF = kernels.get_backend("reference")
FAST = kernels.get_backend("numba")  # VNNI conv where the CPU has it
FAST_BACKENDS = [kernels.get_backend(name) for name in BACKEND_NAMES if name != "reference"]

CHANNELS = st.sampled_from([1, 2, 3, 5, 8, 16, 17, 31, 33, 64])
ACT_KIND = st.sampled_from(["full", "relu", "range"])
SEED = st.integers(0, 2**32 - 1)


def _assert_same(op, *args):
    expected = getattr(REF, op)(*args)
    for fast in FAST_BACKENDS:
        got = getattr(fast, op)(*args)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        prepare = getattr(getattr(fast, op), "prepare", None)
        if prepare is not None:  # the engine's path: the same layer prepared once, called unchecked
            n_inputs = 1 if op == "conv2d" else 2
            inputs = [np.ascontiguousarray(a) for a in args[:n_inputs]]
            extra = {"input_shape": inputs[0].shape[1:]} if op == "conv2d" else {}
            out = np.full(expected.shape, 77, dtype=np.uint8)
            assert prepare(*args[n_inputs:], **extra)(*inputs, out) is out
            np.testing.assert_array_equal(out, expected)
    return expected


def _assert_requantization_decides(out, acc, reals, output_zero_point, act_min, act_max):
    # Guard against a comparison of clamps only: wherever the exact real-valued result
    # is inside the clamp range (by > 1 LSB), the output must be too.
    inside = predicted_interior(acc, reals, output_zero_point, act_min, act_max)
    assert np.all((out[inside] > act_min) & (out[inside] < act_max))
    return int(np.count_nonzero(inside))


@pytest.mark.parametrize("c, k, stride, padding", [(3, 3, 1, 1), (16, 3, 1, 1), (32, 3, 2, 1), (17, 1, 2, 0), (8, 7, 2, 3)])
def test_case_generator_mostly_unclamped(c, k, stride, padding):
    # the random cases exercise requantization, not just the clamp: over many draws
    # (all zero points, fused ReLU included) most outputs are strictly inside the range
    rng = np.random.default_rng(c * 31 + k)
    fractions = []
    for _ in range(20):
        zp_in, zp_out = (int(v) for v in rng.integers(0, 256, size=2))
        args, _, _ = random_conv_case(rng, 2, 9, 9, c, 8, k, stride, padding, zp_in, zp_out, "full")
        out = REF.conv2d(*args)
        fractions.append(interior_count(out, 0, 255) / out.size)
    assert np.median(fractions) > 0.5 and min(fractions) > 0.0, fractions


def test_registry_has_same_ops():
    for name in BACKEND_NAMES:
        backend = kernels.BACKENDS[name]
        for op in kernels.OPS:
            assert callable(getattr(backend, op))
    assert list(kernels.BACKENDS) == list(BACKEND_NAMES)


@given(
    seed=SEED,
    n=st.integers(1, 3),
    h=st.integers(1, 10),
    w=st.integers(1, 10),
    c=CHANNELS,
    o=st.integers(1, 20),
    k=st.sampled_from([1, 3, 7]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 3),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    act_kind=ACT_KIND,
)
def test_conv2d(seed, n, h, w, c, o, k, stride, padding, input_zero_point, output_zero_point, act_kind):
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    args, acc, reals = random_conv_case(rng, n, h, w, c, o, k, stride, padding, input_zero_point,
                                        output_zero_point, act_kind)
    out = _assert_same("conv2d", *args)
    _assert_requantization_decides(out, acc, reals, output_zero_point, args[9], args[10])


@given(
    seed=SEED,
    n=st.integers(1, 6),
    k=st.integers(1, 300),
    o=st.integers(1, 24),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    act_kind=ACT_KIND,
)
def test_linear(seed, n, k, o, input_zero_point, output_zero_point, act_kind):
    rng = np.random.default_rng(seed)
    args, acc, reals = random_linear_case(rng, n, k, o, input_zero_point, output_zero_point, act_kind)
    out = _assert_same("linear", *args)
    _assert_requantization_decides(out, acc, reals, output_zero_point, args[7], args[8])


@given(
    seed=SEED,
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    a_zero_point=st.integers(0, 255),
    b_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    a_log2=st.floats(-8.0, 3.0),
    b_log2=st.floats(-8.0, 3.0),
    act_kind=ACT_KIND,
)
def test_add(seed, shape, a_zero_point, b_zero_point, output_zero_point, a_log2, b_log2, act_kind):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = rng.integers(0, 256, size=shape, dtype=np.uint8)
    am, ash = quantize_multiplier(2.0**a_log2)
    bm, bsh = quantize_multiplier(2.0**b_log2)
    act_min, act_max = (0, 255) if act_kind == "full" else (output_zero_point, 255) if act_kind == "relu" \
        else tuple(sorted(int(v) for v in rng.integers(0, 256, size=2)))
    _assert_same("add_round_half_up", a, b, a_zero_point, am, ash, b_zero_point, bm, bsh,
                 output_zero_point, act_min, act_max)


def test_add_large_tensor_and_extreme_shift_gap():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, size=(3, 17, 19, 33), dtype=np.uint8)  # several parallel chunks
    b = rng.integers(0, 256, size=a.shape, dtype=np.uint8)
    for ma, sa, mb, sb in [(2**31 - 1, 10, 2**30, -10), (2**30, -31, 2**31 - 1, -11), (2**30 + 7, 0, 2**30 + 9, 0)]:
        _assert_same("add_round_half_up", a, b, 255, ma, sa, 0, mb, sb, 128, 0, 255)


@given(
    seed=SEED,
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=CHANNELS,
    kernel=st.integers(1, 9),
    stride=st.integers(1, 3),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    ratio=st.floats(0.5, 2.0),
    act_kind=ACT_KIND,
)
def test_avg_pool(seed, n, h, w, c, kernel, stride, input_zero_point, output_zero_point, ratio, act_kind):
    assume(kernel <= h and kernel <= w)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    m, s = quantize_multiplier(ratio / kernel**2)
    act_min, act_max = (0, 255) if act_kind == "full" else (output_zero_point, 255) if act_kind == "relu" \
        else tuple(sorted(int(v) for v in rng.integers(0, 256, size=2)))
    _assert_same("avg_pool_round_half_up", x, kernel, stride, input_zero_point, m, s,
                 output_zero_point, act_min, act_max)


def test_global_avg_pool_resnet_shape():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, size=(4, 8, 8, 64), dtype=np.uint8)
    m, s = quantize_multiplier(1 / 64)
    out = _assert_same("avg_pool_round_half_up", x, 8, 1, 0, m, s, 0, 0, 255)
    assert out.shape == (4, 1, 1, 64)


@given(
    seed=SEED,
    n=st.integers(1, 3),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=CHANNELS,
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    padding=st.integers(0, 3),
)
def test_max_pool(seed, n, h, w, c, kernel, stride, padding):
    assume(padding < kernel and kernel <= h + 2 * padding and kernel <= w + 2 * padding)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    _assert_same("max_pool", x, kernel, stride, padding)


def test_max_pool_padding_never_wins():
    x = np.zeros((1, 3, 3, 2), np.uint8)  # all zeros: a zero padding would tie, -inf never does
    for backend in (REF, FAST):
        assert backend.max_pool(x, 3, 2, 1).tolist() == np.zeros((1, 2, 2, 2), np.uint8).tolist()


@given(seed=SEED, n=st.integers(1, 40), classes=st.integers(1, 12), levels=st.integers(1, 256))
def test_argmax(seed, n, classes, levels):
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, levels, size=(n, classes)).astype(np.uint8)  # few levels: many ties
    got = _assert_same("argmax", logits)
    assert got.dtype == np.int32


def test_argmax_ties_go_to_lowest_class():
    logits = np.array([[5, 9, 9, 1], [7, 7, 7, 7], [0, 0, 0, 255]], np.uint8)
    for backend in (REF, FAST):
        assert backend.argmax(logits).tolist() == [1, 0, 3]


# --------------------------------------------------------------------------- directed cases


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_conv_rounding_ties_go_up(backend):
    # 1x1 conv, one channel, weight 1, real multiplier 1/2 exactly: acc odd -> exact .5 ties
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    weight = np.ones((1, 1, 1, 1), np.int8)
    m, s = quantize_multipliers([0.5])
    for input_zero_point in (0, 255, 128):
        out = kernels.get_backend(backend).conv2d(
            x, weight, np.zeros(1, np.int32), input_zero_point, m, s, 128, 1, 0, 0, 255)
        acc = x.astype(np.int64) - input_zero_point
        expected = np.clip(np.floor_divide(acc + 1, 2) + 128, 0, 255)  # floor(acc/2 + 1/2): ties toward +inf
        np.testing.assert_array_equal(out.astype(np.int64), expected)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_linear_ties_with_per_channel_shifts(backend):
    # real multipliers 2^-1 .. 2^-4: acc = 2^(j-1) * odd hits a tie in channel j
    x = np.array([[1], [3], [5], [8 + 4], [255]], np.uint8)
    weight = np.ones((4, 1), np.int8)
    m, s = quantize_multipliers([2.0**-1, 2.0**-2, 2.0**-3, 2.0**-4])
    out = kernels.get_backend(backend).linear(x, weight, np.zeros(4, np.int32), 0, m, s, 0, 0, 255)
    acc = x.astype(np.int64)
    expected = np.stack([np.floor_divide(acc[:, 0] + 2 ** (j - 1), 2**j) for j in range(1, 5)], axis=1)
    np.testing.assert_array_equal(out.astype(np.int64), expected)


def test_conv_extreme_accumulator():
    # largest |dot| the checks allow for a ResNet-50 shape (3x3x512 = 4608): all-255 input,
    # zero point 0, weights at -127, int32-limit biases; the int32 dot must not wrap
    x = np.full((2, 3, 3, 512), 255, np.uint8)
    weight = np.full((3, 3, 3, 512), -127, np.int8)
    bias = np.array([-(2**31), 2**31 - 1, 0], np.int32)
    acc = conv_acc(x, weight, bias, 0, 1, 1)
    assert acc.min() < -(2**31) and int(np.abs(acc - bias).max()) == 255 * 127 * 4608
    for real in (2.0**-24, 2.0**-8, 0.9):
        m, s = quantize_multipliers([real] * 3)
        out = _assert_same("conv2d", x, weight, bias, 0, m, s, 128, 1, 1, 0, 255)
        assert out.shape == (2, 3, 3, 3)
    m, s = quantize_multipliers([2.0**-24] * 3)
    out = REF.conv2d(x, weight, bias, 0, m, s, 128, 1, 1, 0, 255)
    assert 0 < out[0, 1, 1, 2] < 128  # the bias-0 channel is decided by requantization, not the clamp


def test_linear_longest_reduction():
    # K = MAX_REDUCTION, all-255 inputs, weights -127: |dot| just below 2^29
    k = MAX_REDUCTION
    x = np.full((2, k), 255, np.uint8)
    weight = np.full((2, k), -127, np.int8)
    weight[1] = 127
    bias = np.array([-(2**31), 2**31 - 1], np.int32)
    assert np.abs(linear_acc(x, weight, np.zeros(2, np.int32), 0)).max() < 2**29
    for m, s in [(2**31 - 1, -31), (2**31 - 1, -20), (2**30, 30)]:
        _assert_same("linear", x, weight, bias, 0, np.full(2, m, np.int32), np.full(2, s, np.int32), 100, 0, 255)


@pytest.mark.parametrize("c", [1, 3, 15, 17, 33, 65])
def test_conv_channels_not_multiple_of_16(c):
    rng = np.random.default_rng(c)
    args, _, _ = random_conv_case(rng, 2, 7, 6, c, 19, 3, 2, 1, 37, 99, "relu")
    _assert_same("conv2d", *args)


@pytest.mark.parametrize("op, args", [
    ("conv2d", (np.zeros((1, 3, 3, 2), np.uint8), np.full((1, 1, 1, 2), -128, np.int8),
                np.zeros(1, np.int32), 0, np.array([2**30], np.int32), np.zeros(1, np.int32), 0, 1, 0, 0, 255)),
    ("conv2d", (np.zeros((1, 3, 3, 2), np.float32), np.zeros((1, 1, 1, 2), np.int8),
                np.zeros(1, np.int32), 0, np.array([2**30], np.int32), np.zeros(1, np.int32), 0, 1, 0, 0, 255)),
    ("conv2d", (np.zeros((1, 3, 3, 2), np.uint8), np.zeros((1, 5, 5, 2), np.int8),
                np.zeros(1, np.int32), 0, np.array([2**30], np.int32), np.zeros(1, np.int32), 0, 1, 0, 0, 255)),
    ("linear", (np.zeros((1, 4), np.uint8), np.zeros((2, 4), np.int8), np.zeros(2, np.int32), 0,
                np.array([2**30, 5], np.int32), np.zeros(2, np.int32), 0, 0, 255)),
    ("linear", (np.zeros((1, MAX_REDUCTION + 1), np.uint8), np.zeros((1, MAX_REDUCTION + 1), np.int8),
                np.zeros(1, np.int32), 0, np.array([2**30], np.int32), np.zeros(1, np.int32), 0, 0, 255)),
    ("add_round_half_up", (np.zeros(3, np.uint8), np.zeros(3, np.uint8), 0, 2**30, 10, 0, 2**30, -11, 0, 0, 255)),
    ("add_round_half_up", (np.zeros(3, np.uint8), np.zeros(4, np.uint8), 0, 2**30, 0, 0, 2**30, 0, 0, 0, 255)),
    ("avg_pool_round_half_up", (np.zeros((1, 2, 2, 1), np.uint8), 3, 1, 0, 2**30, 0, 0, 0, 255)),
    ("max_pool", (np.zeros((1, 4, 4, 1), np.uint8), 2, 2, 2)),
    ("argmax", (np.zeros((2, 0), np.uint8),)),
    ("conv2d", (np.zeros((1, 3, 3, 2), np.uint8), np.zeros((1, 1, 1, 2), np.int8),
                np.zeros(1, np.int32), 0, np.array([2**30], np.int32), np.zeros(1, np.int32), 0, 1, 0, 200, 100)),
])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_both_backends_reject_the_same_bad_arguments(backend, op, args):
    with pytest.raises(ValueError):
        getattr(kernels.get_backend(backend), op)(*args)


def test_thread_count_makes_no_difference():
    import numba

    rng = np.random.default_rng(11)
    args, _, _ = random_conv_case(rng, 5, 9, 7, 17, 12, 3, 1, 1, 77, 120, "relu")
    expected = REF.conv2d(*args)
    previous = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            for fast in FAST_BACKENDS:
                np.testing.assert_array_equal(fast.conv2d(*args), expected)
    finally:
        numba.set_num_threads(previous)


# The VNNI conv fills full tiles (P pixels x 16*J channels, O a multiple of 16) through
# a fused vector epilogue and only tails through the scalar one; these shapes reach both.
@given(
    seed=SEED,
    n=st.integers(1, 2),
    h=st.integers(1, 9),
    w=st.integers(7, 33),
    c=st.sampled_from([3, 4, 16, 20, 32, 64]),
    o=st.sampled_from([16, 32, 48, 64, 96, 128]),
    k=st.sampled_from([1, 3, 7]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 3),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    act_kind=ACT_KIND,
)
def test_conv2d_full_channel_blocks(seed, n, h, w, c, o, k, stride, padding, input_zero_point,
                                    output_zero_point, act_kind):
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    args, acc, reals = random_conv_case(rng, n, h, w, c, o, k, stride, padding, input_zero_point,
                                        output_zero_point, act_kind)
    out = _assert_same("conv2d", *args)
    _assert_requantization_decides(out, acc, reals, output_zero_point, args[9], args[10])


@pytest.mark.parametrize("h, c, o, k, stride, padding", [
    (32, 3, 16, 3, 1, 1), (32, 16, 16, 3, 1, 1), (32, 16, 32, 3, 2, 1), (32, 16, 32, 1, 2, 0),
    (16, 32, 32, 3, 1, 1), (16, 32, 64, 3, 2, 1), (8, 64, 64, 3, 1, 1),          # ResNet-20
    (56, 3, 64, 7, 2, 3), (14, 64, 256, 1, 1, 0), (7, 512, 2048, 1, 1, 0), (14, 256, 256, 3, 1, 1),  # ResNet-50-like
])
def test_conv2d_resnet_layer_shapes(h, c, o, k, stride, padding):
    rng = np.random.default_rng(h * 1000 + c + o)
    args, acc, reals = random_conv_case(rng, 2, h, h, c, o, k, stride, padding, 11, 128, "relu")
    out = _assert_same("conv2d", *args)
    assert _assert_requantization_decides(out, acc, reals, 128, args[9], args[10]) > out.size // 4


@pytest.mark.parametrize("h, w, c, o, k, stride, direct", [
    (14, 14, 64, 256, 1, 1, True), (16, 16, 16, 32, 1, 2, True),   # ResNet-50 1x1, the ResNet-20 shortcut
    (17, 17, 8, 16, 3, 2, True),                                   # unpadded 3x3 stride 2: OW = 8
    (9, 9, 16, 16, 1, 1, False),                                   # OW = 9: a partial tile, copied
    (8, 8, 6, 16, 1, 1, False),                                    # C = 6 is not a multiple of 4, copied
])
def test_conv2d_unpadded_input_read_in_place(monkeypatch, h, w, c, o, k, stride, direct):
    # An unpadded conv whose tiles are all full reads x itself on the uint8 rung (no copy): same bits,
    # and the copy still runs where a tile would read past a row or the channels need padding.
    from kernels.numba_backend import microkernel, vnni

    rng = np.random.default_rng(h + c + o)
    args, _, _ = random_conv_case(rng, 3, h, w, c, o, k, stride, 0, 7, 128, "relu")
    copies = []
    real_pad = microkernel.pad_input
    monkeypatch.setattr(microkernel, "pad_input", lambda *a, **kw: copies.append(a) or real_pad(*a, **kw))
    _assert_same("conv2d", *args)
    if vnni.AVAILABLE:
        copies.clear()
        kernels.get_backend("numba-vnni512").conv2d(*args)
        assert (not copies) == direct


def test_best_rung_is_selected_and_every_rung_is_tested():
    from kernels.numba_backend import avx2, op_conv2d, vnni

    rungs = op_conv2d.available_rungs()
    assert rungs[-1] == "portable" and op_conv2d.SELECTED in rungs
    assert ("vnni512" in rungs) == vnni.AVAILABLE and ("avx2" in rungs) == avx2.AVAILABLE
    if os.environ.get("INTENGINE_ISA", "auto") in ("", "auto") and not os.environ.get("INTENGINE_DISABLE_VNNI"):
        assert op_conv2d.SELECTED == rungs[0]
    assert {f"numba-{r}" for r in rungs} <= set(BACKEND_NAMES)
    for name in ("numba-vnni512", "numba-avx2"):
        if name[len("numba-"):] not in rungs:
            with pytest.raises(ValueError, match="CPU feature"):
                kernels.get_backend(name)


@pytest.mark.parametrize("cap, want", [("portable", "portable"), ("avx2", "avx2"), ("vnni512", "vnni512"),
                                       ("auto", None)])
def test_intengine_isa_caps_the_ladder(cap, want):
    from kernels.numba_backend import op_conv2d

    rungs = op_conv2d.available_rungs()
    if want is not None and want not in rungs:
        pytest.skip(f"this CPU has no {want} rung (available: {', '.join(rungs)})")
    env = dict(os.environ, INTENGINE_ISA=cap)
    env.pop("INTENGINE_DISABLE_VNNI", None)
    code = "from kernels.numba_backend import op_conv2d; print(op_conv2d.SELECTED)"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.strip() == (want or rungs[0])
    bad = subprocess.run([sys.executable, "-c", code], env=dict(env, INTENGINE_ISA="sse9"), capture_output=True,
                         text=True)
    assert bad.returncode != 0 and "INTENGINE_ISA must be one of" in bad.stderr


@pytest.mark.parametrize("isa_name", ["VNNI512", "AVX2"])
def test_full_register_blocks_for_resnet_shapes(isa_name):
    # the micro-kernel's fused epilogue handles full tiles; ResNet layer shapes must not fall to the tail
    from kernels.numba_backend import microkernel

    isa = getattr(microkernel, isa_name)
    for out_channels, out_width in [(16, 32), (32, 16), (64, 8), (64, 56), (256, 14), (2048, 7), (128, 28)]:
        P, J = isa.variants[microkernel.choose_variant(isa, out_channels, out_width)]
        assert out_channels % (isa.lanes * J) == 0 and out_width % P == 0, (out_channels, out_width, P, J)
    for P, J in isa.variants:  # accumulators + weight vectors + broadcast + product fit the register file
        assert P * J + J + 2 <= isa.registers


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b != "reference"])
def test_conv2d_int32_limits(backend):
    # the largest reduction the kernels accept (checks.MAX_REDUCTION), every product at its extreme
    # (255 * -127 and 255 * 127): the int32 lanes hold |sum| < 2^29 without wrapping, on every rung
    from kernels import checks

    channels = checks.MAX_REDUCTION // 9
    x = np.full((1, 3, 5, channels), 255, dtype=np.uint8)
    weight = np.full((16, 3, 3, channels), -127, dtype=np.int8)
    weight[1::2] = 127
    weight[2, :, :, ::3] = 0
    bias = np.array([2**31 - 1, -(2**31)] * 8, dtype=np.int32)
    mult, shift = quantize_multipliers(np.full(16, 2.0**-22))
    for input_zero_point in (0, 255):
        args = (x, weight, bias, input_zero_point, mult, shift, 128, 1, 1, 0, 255)
        np.testing.assert_array_equal(kernels.get_backend(backend).conv2d(*args), REF.conv2d(*args))


@pytest.mark.parametrize("a_shift, b_shift, form", [
    (-1, -1, "high, k = 0"),        # t = 32: no pre-shift
    (0, 0, "high, k = 1"),
    (1, 21, "high, at the limit"),  # exp + k = 20 + 2 = 22
    (2, 22, "int64 fallback"),      # exp + k = 20 + 3 = 23
    (-31, -11, "high, k = 0"),      # t = 62, the largest total shift
    (30, 10, "int64 fallback"),     # t = 21, k = 11
])
def test_add_high_dword_form_and_its_fallback(a_shift, b_shift, form):
    # The numba add takes the 32-bit "high dword" form unless a pre-shifted operand could reach 2^30;
    # every byte pair at the extremes of both multipliers, on each side of that limit.
    from kernels.numba_backend.op_add_round_half_up import high_dword_pre_shift

    smin = min(a_shift, b_shift)
    k = high_dword_pre_shift(a_shift - smin, b_shift - smin, 31 - smin)
    assert (k >= 0) == form.startswith("high")
    pairs = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), axis=-1).reshape(-1, 2)
    a = pairs[:, 0].astype(np.uint8).reshape(1, 256, 256, 1)
    b = pairs[:, 1].astype(np.uint8).reshape(a.shape)
    for a_zp, b_zp, ma, mb in [(0, 255, 2**31 - 1, 2**31 - 1), (255, 0, 2**30, 2**31 - 1), (128, 3, 2**30 + 1, 2**30)]:
        _assert_same("add_round_half_up", a, b, a_zp, ma, a_shift, b_zp, mb, b_shift, 128, 0, 255)


@pytest.mark.parametrize("act_kind", ["full", "relu", "range"])
def test_add_covers_every_byte_pair(act_kind):
    # The numba add runs 16 lanes at a time with a scalar tail; every (a, b) pair appears here
    # and the size (2 * 65536 + 13) is not a multiple of 16, so the tail runs too.
    pairs = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij"), axis=-1).reshape(-1, 2)
    pairs = np.concatenate([pairs, pairs, pairs[-13:]])
    rng = np.random.default_rng(5)
    order = rng.permutation(len(pairs))
    a = pairs[order, 0].astype(np.uint8).reshape(1, 1, -1, 1)
    b = pairs[order, 1].astype(np.uint8).reshape(a.shape)
    act_min, act_max = {"full": (0, 255), "relu": (90, 255), "range": (30, 200)}[act_kind]
    for ma, sa, mb, sb in [(2**31 - 1, 0, 2**30, -1), (2**30 + 12345, -3, 2**31 - 7, -2), (2**30, -4, 2**30 + 999, -2)]:
        out = _assert_same("add_round_half_up", a, b, 77, ma, sa, 140, mb, sb, 90, act_min, act_max)
        assert len(np.unique(out)) > 16  # decided by the arithmetic, not by the clamp alone


def test_vnni_pack_cache_sees_new_multipliers_for_the_same_weights():
    # The VNNI conv caches packed weights per (weight, bias, multiplier, shift) array; new
    # multiplier arrays next to the same weight and bias must not reuse a stale entry.
    rng = np.random.default_rng(21)
    args, _, _ = random_conv_case(rng, 2, 8, 16, 16, 32, 3, 1, 1, 9, 120, "full")
    x, weight, bias, zp, mult, shift = args[:6]
    for factor in (1, 2, 4):
        shifted = (shift - factor).astype(np.int32)  # fresh array each time; old ones are freed
        _assert_same("conv2d", x, weight, bias, zp, mult.copy(), shifted, *args[6:])


@pytest.mark.parametrize("backend", list(kernels.BACKENDS))
def test_out_argument_of_conv2d_and_add(backend):
    """``out=`` writes the same bits into the given buffer (the engine reuses buffers across calls)."""
    ops = kernels.get_backend(backend)
    rng = np.random.default_rng(8)
    args, _, _ = random_conv_case(rng, 3, 9, 9, 8, 16, 3, 2, 1, 4, 100, "relu")
    want = ops.conv2d(*args)
    buf = np.full(want.shape, 7, dtype=np.uint8)
    assert ops.conv2d(*args, out=buf) is buf
    np.testing.assert_array_equal(buf, want)
    a, b = want, rng.integers(0, 256, want.shape, dtype=np.uint8)
    add_args = (3, 2**30 + 5, -1, 200, 2**31 - 9, -2, 11, 0, 255)
    want_add = ops.add_round_half_up(a, b, *add_args)
    dest = np.zeros_like(a)
    assert ops.add_round_half_up(a, b, *add_args, out=dest) is dest
    np.testing.assert_array_equal(dest, want_add)
    for bad, match in ((np.empty(want.shape, np.int8), "uint8"), (np.empty(want.shape[1:], np.uint8), "shape"),
                       (np.empty(want.shape[::-1], np.uint8).T, "contiguous"), (a, "overlap")):
        with pytest.raises(ValueError, match=match):
            ops.add_round_half_up(a, b, *add_args, out=bad)
    inside_x = args[0].reshape(-1)[: want.size].reshape(want.shape)  # a view of the input
    with pytest.raises(ValueError, match="overlap"):
        ops.conv2d(*args, out=inside_x)



@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b != "reference"])
@pytest.mark.parametrize("shifts", [
    [-1] * 16,                 # t = 32 for every channel: the high-dword epilogue at its boundary
    [-31] * 8 + [-5] * 8,      # t = 62 (the largest) and 36
    [0] * 16,                  # t = 31: the int64 epilogue
    [-9] * 15 + [0],           # one channel at t = 31 sends the whole layer to the int64 form
    [3, -2] * 8,               # multipliers above 1 (t = 28) beside t = 33
])
def test_conv2d_epilogue_forms(backend, shifts):
    # SIMD rungs requantize full tiles in one of two forms (microkernel.finish_tile): the high dword
    # of sum*M + bias_term when every channel's total shift t = 31 - shift is >= 32, else int64.
    # Inputs near the zero point and small weights keep |acc| ~ 2^9, so that with these shifts
    # (real multipliers 2^-32 .. 2^3) most outputs fall inside the clamp range.
    rng = np.random.default_rng(abs(hash(tuple(shifts))) % 2**32)
    zp_in = 100
    x = rng.integers(zp_in - 3, zp_in + 4, (2, 6, 16, 8)).astype(np.uint8)
    weight = rng.integers(-3, 4, (16, 3, 3, 8)).astype(np.int8)
    weight[:, 0, 0, 0] = -127  # the extreme weight, once per channel
    bias = rng.integers(-300, 301, 16).astype(np.int32)
    mult = rng.integers(2**30, 2**31, 16).astype(np.int32)
    shift = np.array(shifts, dtype=np.int32)
    decided = 0
    for act_min, act_max, zp in [(0, 255, 128), (7, 200, 7)]:
        args = (x, weight, bias, zp_in, mult, shift, zp, 1, 1, act_min, act_max)
        want = REF.conv2d(*args)
        decided += interior_count(want, act_min, act_max)
        np.testing.assert_array_equal(kernels.get_backend(backend).conv2d(*args), want)
    assert decided > want.size // 4  # the arithmetic decides, not the clamp


@pytest.mark.parametrize("backend", [b for b in BACKEND_NAMES if b.startswith("numba")])
def test_prepare_checks_its_arguments_once(backend):
    # prepare() runs the op's own checks (so a prepared call needs none): the same one-line errors
    ops = kernels.get_backend(backend)
    m, s = np.full(4, 2**30, np.int32), np.zeros(4, np.int32)
    weight = np.zeros((4, 3, 3, 2), np.int8)
    with pytest.raises(ValueError, match="-128"):
        ops.conv2d.prepare(np.full_like(weight, -128), np.zeros(4, np.int32), 0, m, s, 0, 1, 1, 0, 255,
                           input_shape=(5, 5, 2))
    with pytest.raises(ValueError, match="input channels"):
        ops.conv2d.prepare(weight, np.zeros(4, np.int32), 0, m, s, 0, 1, 1, 0, 255, input_shape=(5, 5, 3))
    with pytest.raises(ValueError, match="a_shift - b_shift"):
        ops.add_round_half_up.prepare(0, 2**30, 10, 0, 2**30, -11, 0, 0, 255)


@given(
    seed=SEED,
    n=st.integers(1, 3),
    h=st.integers(1, 12),
    c=CHANNELS,
    o=st.integers(1, 40),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 1),
    a_log2=st.floats(-8.0, 3.0),
    b_log2=st.floats(-8.0, 3.0),
    conv_is_a=st.booleans(),
    act_kind=ACT_KIND,
)
def test_conv2d_fused_with_residual_add(seed, n, h, c, o, k, stride, padding, a_log2, b_log2, conv_is_a, act_kind):
    # conv2d.prepare_add (the engine's conv + residual add, each output row added while in cache) gives the
    # reference conv2d followed by the reference add, bit for bit, with the conv's output as either operand
    assume(h + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    args, _, _ = random_conv_case(rng, n, h, h, c, o, k, stride, padding, int(rng.integers(0, 256)),
                                  int(rng.integers(0, 256)), act_kind)
    conv = REF.conv2d(*args)
    residual = rng.integers(0, 256, size=conv.shape, dtype=np.uint8)
    am, ash = quantize_multiplier(2.0**a_log2)
    bm, bsh = quantize_multiplier(2.0**b_log2)
    assume(abs(ash - bsh) <= 20)
    add = (int(rng.integers(0, 256)), am, ash, int(rng.integers(0, 256)), bm, bsh, int(rng.integers(0, 256)), 0, 255)
    want = REF.add_round_half_up(conv, residual, *add) if conv_is_a else REF.add_round_half_up(residual, conv, *add)
    for fast in FAST_BACKENDS:
        run = fast.conv2d.prepare_add(*args[1:], input_shape=args[0].shape[1:], add=add, conv_is_a=conv_is_a)
        conv_out, add_out = np.full_like(conv, 77), np.full_like(conv, 77)
        assert run(args[0], residual, conv_out, add_out) is add_out
        np.testing.assert_array_equal(conv_out, conv)
        np.testing.assert_array_equal(add_out, want)


def _padded_chain(fast, args_a, args_b):
    """Prepared conv A writing inside conv B's zero-point border, then B reading it in place (where B can):
    (A's padded buffer after the write, B's output or None)."""
    x = args_a[0]
    conv_a = fast.conv2d.prepare(*args_a[1:], input_shape=x.shape[1:])
    a_shape = REF.conv2d(*args_a).shape
    conv_b = fast.conv2d.prepare(*args_b[1:], input_shape=a_shape[1:])
    pad, zp = args_b[8], args_b[3]
    padded = np.full((a_shape[0], a_shape[1] + 2 * pad, a_shape[2] + 2 * pad, a_shape[3]), zp, np.uint8)
    assert conv_a.run_bordered(x, 0, padded, pad) is padded
    if not conv_b.reads_padded_input:
        with pytest.raises(ValueError, match="padded input"):
            conv_b.run_bordered(padded, pad, np.empty(REF.conv2d(REF.conv2d(*args_a), *args_b[1:]).shape, np.uint8), 0)
        return padded, None
    out = np.full(REF.conv2d(REF.conv2d(*args_a), *args_b[1:]).shape, 77, np.uint8)
    assert conv_b.run_bordered(padded, pad, out, 0) is out
    return padded, out


@given(
    seed=SEED,
    n=st.integers(1, 3),
    h=st.integers(1, 10),
    w=st.sampled_from([1, 3, 7, 8, 14, 16, 17, 32]),  # mostly widths the tiles divide: B reads in place
    c=CHANNELS,
    o=st.sampled_from([4, 8, 12, 16, 17, 32, 64]),
    o_b=st.sampled_from([4, 16, 32, 33]),
    k_a=st.sampled_from([1, 3]),
    stride_b=st.sampled_from([1, 1, 2]),
    padding_b=st.sampled_from([1, 1, 2]),
    act_kind=ACT_KIND,
)
def test_conv2d_writes_the_next_convs_padded_input(seed, n, h, w, c, o, o_b, k_a, stride_b, padding_b, act_kind):
    # A conv writes its output inside the next conv's zero-point border (run_bordered: the engine's
    # handoff between the two convs of a residual block) and the next conv reads that buffer in place
    # (run_bordered) where its tiles allow; the border is never written, the interior is A's output and B
    # gives the reference's bits; where B needs its own copy, it refuses the border.
    rng = np.random.default_rng(seed)
    args_a, _, _ = random_conv_case(rng, n, h, w, c, o, k_a, 1, (k_a - 1) // 2, int(rng.integers(0, 256)),
                                    int(rng.integers(0, 256)), act_kind)
    assume(h + 2 * padding_b >= 3 and w + 2 * padding_b >= 3)
    args_b, _, _ = random_conv_case(rng, n, h, w, o, o_b, 3, stride_b, padding_b, args_a[6],
                                    int(rng.integers(0, 256)), act_kind)
    want_a = REF.conv2d(*args_a)
    want_b = REF.conv2d(want_a, *args_b[1:])
    for fast in FAST_BACKENDS:
        prepared = fast.conv2d.prepare(*args_a[1:], input_shape=args_a[0].shape[1:])
        if not hasattr(prepared, "run_bordered"):  # the portable rung: plain calls only
            continue
        padded, out = _padded_chain(fast, args_a, args_b)
        p = padding_b
        np.testing.assert_array_equal(padded[:, p:p + h, p:p + w], want_a)
        border = padded.copy()
        border[:, p:p + h, p:p + w] = args_b[3]
        assert (border == args_b[3]).all(), "run_bordered wrote into the border"
        if out is not None:
            np.testing.assert_array_equal(out, want_b)


def _bordered(rng, a, pad, fill=None):
    """``a`` (N, H, W, C) inside a border of ``pad`` pixels holding ``fill`` (None: random bytes)."""
    n, h, w, c = a.shape
    shape = (n, h + 2 * pad, w + 2 * pad, c)
    out = rng.integers(0, 256, shape, dtype=np.uint8) if fill is None else np.full(shape, fill, np.uint8)
    out[:, pad:pad + h, pad:pad + w] = a
    return out


@given(
    seed=SEED,
    n=st.integers(1, 3),
    h=st.integers(1, 10),
    w=st.sampled_from([3, 7, 8, 16, 16, 17, 32, 32]),  # mostly widths the tiles divide: in-place reads
    c=st.sampled_from([3, 4, 8, 16, 16, 17, 32]),
    o=st.sampled_from([4, 16, 17, 32, 64]),
    k=st.sampled_from([1, 3]),
    stride=st.sampled_from([1, 2]),
    padding=st.sampled_from([0, 1, 1, 2]),
    x_border=st.sampled_from([False, True, True]),
    residual_pad=st.sampled_from([0, 1, 2]),
    add_pad=st.sampled_from([0, 1, 2]),
    conv_is_a=st.booleans(),
    act_kind=ACT_KIND,
)
def test_conv2d_add_reads_and_writes_through_borders(seed, n, h, w, c, o, k, stride, padding, x_border, residual_pad,
                                                     add_pad, conv_is_a, act_kind):
    # The engine's bordered activations: a fused conv + add (run_bordered) reads its input inside a border
    # (the conv's own zero-point padding, or any border for an unpadded conv that reads in place), its
    # residual inside another (random bytes there: never read) and writes the sum inside a third (never
    # written): the reference conv and add's bits; a conv that must copy its input refuses a border.
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    args, _, _ = random_conv_case(rng, n, h, w, c, o, k, stride, padding, int(rng.integers(0, 256)),
                                  int(rng.integers(0, 256)), act_kind)
    conv = REF.conv2d(*args)
    residual = rng.integers(0, 256, size=conv.shape, dtype=np.uint8)
    am, ash = quantize_multiplier(2.0 ** rng.uniform(-8, 3))
    bm, bsh = quantize_multiplier(2.0 ** rng.uniform(-8, 3))
    assume(abs(ash - bsh) <= 20)
    add = (int(rng.integers(0, 256)), am, ash, int(rng.integers(0, 256)), bm, bsh, int(rng.integers(0, 256)), 0, 255)
    want = REF.add_round_half_up(conv, residual, *add) if conv_is_a else REF.add_round_half_up(residual, conv, *add)
    x_pad = (padding or int(rng.integers(1, 3))) if x_border else 0
    x = _bordered(rng, args[0], x_pad, args[3] if padding else None)  # an unpadded conv must not read the border
    for fast in FAST_BACKENDS:
        run = fast.conv2d.prepare_add(*args[1:], input_shape=args[0].shape[1:], add=add, conv_is_a=conv_is_a)
        if not hasattr(run, "run_bordered"):  # the portable rung: plain calls only
            continue
        conv_out = np.full_like(conv, 77)
        add_out = _bordered(rng, np.full_like(conv, 77), add_pad, 77)
        res = _bordered(rng, residual, residual_pad)
        if not run.reads_bordered(x_pad):
            assert x_pad and not run.conv.direct
            with pytest.raises(ValueError, match="padded input"):
                run.run_bordered(x, x_pad, res, residual_pad, conv_out, add_out, add_pad)
            continue
        assert run.run_bordered(x, x_pad, res, residual_pad, conv_out, add_out, add_pad) is add_out
        np.testing.assert_array_equal(conv_out, conv)
        oh, ow = conv.shape[1:3]
        np.testing.assert_array_equal(add_out[:, add_pad:add_pad + oh, add_pad:add_pad + ow], want)
        border = add_out.copy()
        border[:, add_pad:add_pad + oh, add_pad:add_pad + ow] = 77
        assert (border == 77).all(), "run_bordered wrote into the output border"
        plain = fast.conv2d.prepare(*args[1:], input_shape=args[0].shape[1:])
        out = _bordered(rng, np.full_like(conv, 77), add_pad, 77)
        assert plain.run_bordered(x, x_pad, out, add_pad) is out
        np.testing.assert_array_equal(out[:, add_pad:add_pad + oh, add_pad:add_pad + ow], conv)


def test_conv2d_reads_bordered_resnet20_shortcuts():
    # ResNet-20's 1x1 stride-2 shortcuts read the block input in place one border in on the vnni512 rung
    rng = np.random.default_rng(8)
    for size, c, o in ((32, 16, 32), (16, 32, 64)):
        args, _, _ = random_conv_case(rng, 2, size, size, c, o, 1, 2, 0, 100, 120, "full")
        want = REF.conv2d(*args)
        for name in ("numba-vnni512", "numba-avx2"):
            if name not in BACKEND_NAMES:
                continue
            conv = kernels.get_backend(name).conv2d.prepare(*args[1:], input_shape=args[0].shape[1:])
            assert conv.reads_bordered(1) == (name == "numba-vnni512"), name
            if conv.reads_bordered(1):
                out = np.full_like(want, 77)
                np.testing.assert_array_equal(conv.run_bordered(_bordered(rng, args[0], 1), 1, out, 0), want)


def test_conv2d_padded_handoff_on_resnet20_shapes():
    # the three residual-block shapes read their padded input in place on the vnni512 rung (uint8 input,
    # every tile full); the AVX2 rung (int16 input) always copies
    rng = np.random.default_rng(5)
    for size, channels in ((32, 16), (16, 32), (8, 64)):
        args_a, _, _ = random_conv_case(rng, 2, size, size, channels, channels, 3, 1, 1, 100, 120, "relu")
        args_b, _, _ = random_conv_case(rng, 2, size, size, channels, channels, 3, 1, 1, 120, 90, "full")
        want = REF.conv2d(REF.conv2d(*args_a), *args_b[1:])
        for name in BACKEND_NAMES:
            if name in ("numba-vnni512", "numba-avx2"):
                fast = kernels.get_backend(name)
                _, out = _padded_chain(fast, args_a, args_b)
                assert (out is not None) == (name == "numba-vnni512"), name
                if out is not None:
                    np.testing.assert_array_equal(out, want)


def _border_counts(calls):
    """(outputs stored inside a border, convs reading a bordered input, fused adds reading a bordered residual)."""
    calls = [c for c in calls if c is not None]
    return (sum(c.out_border is not None for c in calls), sum(c.in_pad > 0 for c in calls),
            sum(c.residual_pad > 0 for c in calls))


# ResNet-20 on the vnni512 rung: every tensor a padded conv reads is stored inside its border except the
# network input: the stem's output, the nine first convs' and eight block outputs (the last feeds the pool);
# read in place by 9 + 9 padded convs and the two 1x1 stride-2 shortcuts, and as the residual of the seven
# identity blocks
RESNET20_BORDERS = (18, 20, 7)


def test_engine_hands_padded_buffers_between_convs():
    # the engine's bordered activations (run_bordered) on every numba rung: the reference's bits at growing
    # and shrinking batches (a reused buffer keeps its border); on vnni512 every tensor a padded conv reads
    # except the network input is written inside that conv's zero-point border
    from intengine.engine import load_model

    model = load_model(Path(__file__).resolve().parents[1] / "models" / "resnet20_sigma0.25.int8")
    x = np.random.default_rng(4).integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    want = model.forward(x, "reference")
    for name in BACKEND_NAMES:
        if not name.startswith("numba"):
            continue
        for batch in (3, 1, 7, 2):
            np.testing.assert_array_equal(model.forward(x[:batch], name), want[:batch], err_msg=f"{name} {batch}")
        rung = kernels.numba_backend.op_conv2d.SELECTED if name == "numba" else name[len("numba-"):]
        counts = _border_counts(model._prepared[name])
        assert counts == (RESNET20_BORDERS if rung == "vnni512" else (0, 0, 0)), (name, counts)


@pytest.mark.parametrize("setting,fused_adds,borders", [("0", 0, (0, 0, 0)), ("none", 0, (0, 0, 0)),
                                                        ("add", 9, (0, 0, 0)), ("all", 9, RESNET20_BORDERS)])
def test_engine_fuse_switch(monkeypatch, setting, fused_adds, borders):
    # INTENGINE_FUSE (benchmarks' A/B): none runs every node on its own, add only fuses conv + add, all
    # (the default) also stores activations inside their readers' zero-point border; the bits never change
    from intengine.engine import load_model

    monkeypatch.setenv("INTENGINE_FUSE", setting)
    model = load_model(Path(__file__).resolve().parents[1] / "models" / "resnet20_sigma0.25.int8")
    x = np.random.default_rng(6).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    backend = "numba-vnni512" if "numba-vnni512" in BACKEND_NAMES else "numba"
    np.testing.assert_array_equal(model.forward(x, backend), model.forward(x, "reference"))
    calls = [c for c in model._prepared[backend] if c is not None]
    assert sum(c.kind == "conv+add" for c in calls) == fused_adds
    if "numba-vnni512" in BACKEND_NAMES:  # borders need the vnni512 rung's uint8 input
        assert _border_counts(calls) == borders


def test_engine_fuses_every_resnet20_residual_add():
    from intengine.engine import load_model

    model = load_model(Path(__file__).resolve().parents[1] / "models" / "resnet20_sigma0.25.int8")
    x = np.random.default_rng(3).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    want = model.forward(x, "reference")
    for name in BACKEND_NAMES:
        if name.startswith("numba"):
            np.testing.assert_array_equal(model.forward(x, name), want)
            kinds = [call.kind for call in model._prepared[name] if call is not None]
            assert kinds.count("conv+add") == kinds.count("done") == 9  # one per residual block
