"""kernels.fixedpoint: TFLite golden values, exact rounding, int32 limits, NumPy == Numba."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    check_multiplier,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_scalar,
    quantize_multiplier,
    quantize_multipliers,
    requantize_round_half_up,
    requantize_round_half_up_scalar,
)


@pytest.mark.parametrize(
    "real, expected",
    [
        (0.25, (1073741824, -1)),
        (0.75, (1610612736, 0)),
        (1.25, (1342177280, 1)),
        (2.0**-32, (1073741824, -31)),
        (0.5, (1073741824, 0)),
        (1.0, (1073741824, 1)),
        (0.0, (0, 0)),
        (2.0**-33, (0, 0)),  # shift -32 is not representable
        (1e-300, (0, 0)),
        (2.0**29, (1073741824, 30)),
        (2.0**30, (INT32_MAX, 30)),  # shift 31 saturates
        (2.0**30 - 0.125, (INT32_MAX, 30)),  # mantissa rounds up to 1.0, then shift 31 saturates
        (1e300, (INT32_MAX, 30)),
    ],
)
def test_quantize_multiplier_golden(real, expected):
    assert quantize_multiplier(real) == expected


def test_quantize_multiplier_rounds_mantissa_up_to_one():
    # the largest double below 1 rounds to 2^31, which renormalizes to (2^30, shift + 1)
    assert quantize_multiplier(np.nextafter(1.0, 0.0)) == (1073741824, 1)


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(ValueError):
        quantize_multiplier(bad)


@given(st.floats(min_value=2.0**-32, max_value=2.0**29, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_is_within_half_ulp(real):
    m, shift = quantize_multiplier(real)
    assert 2**30 <= m < 2**31 and -31 <= shift <= 30
    approx = Fraction(m) * Fraction(2) ** shift / 2**31
    # |approx - real| <= 2^-32 relative to the mantissa interval [0.5, 1): half an ulp of Q0.31
    assert abs(approx - Fraction(real)) <= Fraction(2) ** (shift - 32)


def test_quantize_multipliers_vectorized():
    reals = [0.25, 0.75, 1.25, 0.0, 2.0**-32]
    m, s = quantize_multipliers(reals)
    assert m.dtype == np.int32 and s.dtype == np.int32
    assert [(int(a), int(b)) for a, b in zip(m, s)] == [quantize_multiplier(r) for r in reals]


def test_multiply_golden():
    m, s = quantize_multiplier(0.00097656)
    assert multiply_by_quantized_multiplier(np.array([10000], np.int32), m, s).tolist() == [10]
    m, s = quantize_multiplier(1e-5)
    got = multiply_by_quantized_multiplier(np.array([INT32_MAX, INT32_MIN], np.int32), m, s)
    assert got.dtype == np.int32 and got.tolist() == [21475, -21475]
    assert multiply_by_quantized_multiplier_scalar(INT32_MAX, m, s) == 21475
    assert multiply_by_quantized_multiplier_scalar(INT32_MIN, m, s) == -21475


def test_multiply_saturates_to_int32():
    m, s = quantize_multiplier(2.0**29)  # (2^30, 30): exactly x * 2^29
    x = np.array([INT32_MAX, INT32_MIN, 1, -1, 0], np.int32)
    assert multiply_by_quantized_multiplier(x, m, s).tolist() == [INT32_MAX, INT32_MIN, 2**29, -(2**29), 0]
    assert multiply_by_quantized_multiplier_scalar(INT32_MAX, m, s) == INT32_MAX
    assert multiply_by_quantized_multiplier_scalar(INT32_MIN, m, s) == INT32_MIN


def test_ties_round_toward_plus_infinity():
    m, s = quantize_multiplier(0.5)  # exact: (2^30, 0)
    x = np.array([-5, -3, -1, 1, 3, 5], np.int32)
    # x / 2 = -2.5, -1.5, -0.5, 0.5, 1.5, 2.5 -> ties go up
    assert multiply_by_quantized_multiplier(x, m, s).tolist() == [-2, -1, 0, 1, 2, 3]
    assert [multiply_by_quantized_multiplier_scalar(int(v), m, s) for v in x] == [-2, -1, 0, 1, 2, 3]


def test_extreme_shifts():
    # shift -31: total shift 62, the rounding term is 2^61
    m, s = 2**31 - 1, -31
    x = np.array([INT32_MAX, INT32_MIN, 0], np.int32)
    expected = [int((Fraction(int(v)) * m / 2**62 + Fraction(1, 2)).__floor__()) for v in x]
    assert multiply_by_quantized_multiplier(x, m, s).tolist() == expected
    assert multiply_by_quantized_multiplier(x, 0, 0).tolist() == [0, 0, 0]


def _exact(acc, m, shift):
    value = Fraction(acc) * m * Fraction(2) ** shift / 2**31
    return int((value + Fraction(1, 2)).__floor__())


@given(
    st.integers(INT32_MIN, INT32_MAX),
    st.integers(2**30, 2**31 - 1),
    st.integers(-31, 30),
)
def test_requantize_equals_exact_rounding(acc, m, shift):
    expected = _exact(acc, m, shift)
    assert int(requantize_round_half_up(np.int64(acc), m, shift)) == expected
    assert requantize_round_half_up_scalar(acc, m, shift) == expected
    saturated = min(max(expected, INT32_MIN), INT32_MAX)
    assert int(multiply_by_quantized_multiplier(np.array([acc], np.int32), m, shift)[0]) == saturated
    assert multiply_by_quantized_multiplier_scalar(acc, m, shift) == saturated


@given(st.integers(-(2**31 + 2**29), 2**31 + 2**29), st.integers(-31, 30))
def test_requantize_wide_accumulator_bound(acc, shift):
    # the ops feed |acc| < 2^31 + 2^29 (int32 bias + bounded dot product): no int64 overflow
    m = 2**31 - 1
    assert int(requantize_round_half_up(np.int64(acc), m, shift)) == _exact(acc, m, shift)
    assert requantize_round_half_up_scalar(acc, m, shift) == _exact(acc, m, shift)


def test_per_channel_broadcast():
    m, s = quantize_multipliers([0.5, 0.25, 2.0])
    acc = np.array([[3, 3, 3], [-3, -3, -3]], np.int32)
    assert multiply_by_quantized_multiplier(acc, m, s).tolist() == [[2, 1, 6], [-1, -1, -6]]


@pytest.mark.parametrize("m, s", [(2**30 - 1, 0), (2**30, 31), (2**30, -32), (5, 0), (0, 3)])
def test_check_multiplier_rejects(m, s):
    with pytest.raises(ValueError):
        check_multiplier(m, s)
