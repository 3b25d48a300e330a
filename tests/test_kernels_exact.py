"""The reference kernels against exact rational math (fractions.Fraction), op by op.

Tolerances:
* conv2d, linear, add, avg pool: 0 LSB against the exact value of their
  definition with the *quantized* multipliers (``RHU(acc * M * 2^shift / 2^31)``);
* the same ops against the *real* multipliers they quantize: <= 1 LSB
  (requantization error: rounding <= 1/2 plus the multiplier's relative error
  <= 2^-31 times |value| <= 2^9);
* max pool and argmax: exact (comparisons only).
"""
from fractions import Fraction
from math import floor

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import kernels
from kernels.fixedpoint import quantize_multiplier
from kernel_cases import multipliers_for

REF = kernels.get_backend("reference")
SEED = st.integers(0, 2**32 - 1)


def rhu(value: Fraction) -> int:
    """Round half up (ties toward +infinity), exactly."""
    return floor(value + Fraction(1, 2))


def q31(m: int, shift: int) -> Fraction:
    return Fraction(int(m)) * Fraction(2) ** int(shift) / 2**31


def clamp(v, lo, hi):
    return min(max(v, lo), hi)


def brute_conv_acc(x, weight, bias, input_zero_point, stride, padding):
    """Python-int accumulator, loops straight from the definition (tiny shapes only)."""
    n, h, w, c = x.shape
    o, kh, kw, _ = weight.shape
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (w + 2 * padding - kw) // stride + 1
    acc = {}
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for k in range(o):
                    total = int(bias[k])
                    for di in range(kh):
                        for dj in range(kw):
                            y, xx = i * stride - padding + di, j * stride - padding + dj
                            if 0 <= y < h and 0 <= xx < w:
                                for ch in range(c):
                                    total += (int(x[b, y, xx, ch]) - input_zero_point) * int(weight[k, di, dj, ch])
                    acc[b, i, j, k] = total
    return acc, (n, oh, ow, o)


@given(
    seed=SEED,
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    c=st.integers(1, 5),
    o=st.integers(1, 4),
    k=st.sampled_from([1, 2, 3]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 2),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
)
def test_conv2d_exact(seed, h, w, c, o, k, stride, padding, input_zero_point, output_zero_point):
    assume(h + 2 * padding >= k and w + 2 * padding >= k)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(2, h, w, c), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k, k, c), dtype=np.int8)
    bias = rng.integers(-20000, 20000, size=o).astype(np.int32)
    acc, shape = brute_conv_acc(x, weight, bias, input_zero_point, stride, padding)
    acc_array = np.array([acc[i] for i in np.ndindex(shape)], np.int64).reshape(shape)
    m, s, reals = multipliers_for(acc_array, rng)
    out = REF.conv2d(x, weight, bias, input_zero_point, m, s, output_zero_point, stride, padding, 0, 255)
    assert out.shape == shape
    for idx in np.ndindex(shape):
        ch = idx[3]
        exact = rhu(acc[idx] * q31(m[ch], s[ch])) + output_zero_point
        assert int(out[idx]) == clamp(exact, 0, 255)  # 0 LSB
        real = acc[idx] * Fraction(float(reals[ch])) + output_zero_point
        if 0 < out[idx] < 255:
            assert abs(int(out[idx]) - real) <= 1  # <= 1 LSB vs the real multiplier


@given(
    seed=SEED,
    n=st.integers(1, 4),
    k=st.integers(1, 64),
    o=st.integers(1, 6),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
)
def test_linear_exact(seed, n, k, o, input_zero_point, output_zero_point):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, k), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k), dtype=np.int8)
    bias = rng.integers(-(2**31), 2**31, size=o, dtype=np.int64).astype(np.int32)
    acc = [[int(bias[j]) + sum((int(x[i, t]) - input_zero_point) * int(weight[j, t]) for t in range(k))
            for j in range(o)] for i in range(n)]
    m, s, reals = multipliers_for(np.array(acc, np.int64), rng)
    act_min, act_max = output_zero_point, 255  # fused ReLU
    out = REF.linear(x, weight, bias, input_zero_point, m, s, output_zero_point, act_min, act_max)
    for i in range(n):
        for j in range(o):
            exact = rhu(acc[i][j] * q31(m[j], s[j])) + output_zero_point
            assert int(out[i, j]) == clamp(exact, act_min, act_max)
            if act_min < out[i, j] < act_max:
                assert abs(int(out[i, j]) - (acc[i][j] * Fraction(float(reals[j])) + output_zero_point)) <= 1


@given(
    seed=SEED,
    size=st.integers(1, 200),
    a_zero_point=st.integers(0, 255),
    b_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    a_real=st.floats(2.0**-8, 8.0),
    b_real=st.floats(2.0**-8, 8.0),
)
def test_add_exact(seed, size, a_zero_point, b_zero_point, output_zero_point, a_real, b_real):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=size, dtype=np.uint8)
    b = rng.integers(0, 256, size=size, dtype=np.uint8)
    am, ash = quantize_multiplier(a_real)
    bm, bsh = quantize_multiplier(b_real)
    out = REF.add_round_half_up(a, b, a_zero_point, am, ash, b_zero_point, bm, bsh, output_zero_point, 0, 255)
    for i in range(size):
        da, db = int(a[i]) - a_zero_point, int(b[i]) - b_zero_point
        exact = rhu(da * q31(am, ash) + db * q31(bm, bsh)) + output_zero_point
        assert int(out[i]) == clamp(exact, 0, 255)  # 0 LSB
        if 0 < out[i] < 255:
            real = da * Fraction(a_real) + db * Fraction(b_real) + output_zero_point
            assert abs(int(out[i]) - real) <= 1  # <= 1 LSB vs the real scales


def test_add_ties_go_up():
    # s_a/s_out = s_b/s_out = 1/2: (a - zp + b - zp)/2 hits every .5 tie, negative ones included
    a = np.arange(256, dtype=np.uint8)
    b = np.full(256, 3, np.uint8)
    m, s = quantize_multiplier(0.5)
    out = REF.add_round_half_up(a, b, 128, m, s, 0, m, s, 128, 0, 255)
    expected = [clamp(floor(Fraction(int(v) - 128 + 3, 2) + Fraction(1, 2)) + 128, 0, 255) for v in a]
    assert out.tolist() == expected


@given(
    seed=SEED,
    h=st.integers(1, 8),
    c=st.integers(1, 4),
    kernel=st.integers(1, 8),
    stride=st.integers(1, 3),
    input_zero_point=st.integers(0, 255),
    output_zero_point=st.integers(0, 255),
    ratio=st.floats(0.5, 2.0),
)
def test_avg_pool_exact(seed, h, c, kernel, stride, input_zero_point, output_zero_point, ratio):
    assume(kernel <= h)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(2, h, h, c), dtype=np.uint8)
    real = ratio / kernel**2  # s_in / (s_out * kernel^2)
    m, s = quantize_multiplier(real)
    out = REF.avg_pool_round_half_up(x, kernel, stride, input_zero_point, m, s, output_zero_point, 0, 255)
    oh = (h - kernel) // stride + 1
    assert out.shape == (2, oh, oh, c)
    for n, i, j, ch in np.ndindex(out.shape):
        window = x[n, i * stride:i * stride + kernel, j * stride:j * stride + kernel, ch]
        acc = int(window.astype(np.int64).sum()) - kernel * kernel * input_zero_point
        assert int(out[n, i, j, ch]) == clamp(rhu(acc * q31(m, s)) + output_zero_point, 0, 255)
        if 0 < out[n, i, j, ch] < 255:
            mean = Fraction(acc, kernel * kernel)  # the average of (x - zp) over the window
            assert abs(int(out[n, i, j, ch]) - (mean * Fraction(ratio) + output_zero_point)) <= 1


@given(seed=SEED, h=st.integers(1, 7), kernel=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 3))
def test_max_pool_exact(seed, h, kernel, stride, padding):
    assume(padding < kernel <= h + 2 * padding)
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(1, h, h, 3), dtype=np.uint8)
    out = REF.max_pool(x, kernel, stride, padding)
    for _, i, j, ch in np.ndindex(out.shape):
        taps = [int(x[0, y, z, ch])
                for y in range(i * stride - padding, i * stride - padding + kernel)
                for z in range(j * stride - padding, j * stride - padding + kernel)
                if 0 <= y < h and 0 <= z < h]
        assert int(out[0, i, j, ch]) == max(taps)


@given(st.lists(st.lists(st.integers(0, 5), min_size=3, max_size=3), min_size=1, max_size=20))
def test_argmax_exact(rows):
    logits = np.array(rows, np.uint8)
    assert REF.argmax(logits).tolist() == [row.index(max(row)) for row in rows]
