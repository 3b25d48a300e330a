"""Philox4x32-10: Random123 known-answer vectors; Python, NumPy and Numba give the same bits; seeds."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.sampler.philox import (
    philox4x32_10_many,
    philox4x32_10_np,
    philox4x32_10_py,
    resolve_seed,
    seed_to_key,
    stream_word,
)

# Random123 kat_vectors, "philox4x32 10": counter[4] key[2] -> output[4].
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
words = st.integers(0, 2**32 - 1)


def _numba(counters, key):
    counters = np.asarray(counters, dtype=np.uint64).reshape(-1, 4)
    out = np.zeros_like(counters)
    philox4x32_10_many(counters, np.uint64(key[0]), np.uint64(key[1]), out)
    return out


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answers(counter, key, expected):
    assert philox4x32_10_py(counter, key) == expected
    assert tuple(int(w) for w in philox4x32_10_np(*counter, *key)) == expected
    assert tuple(int(w) for w in _numba([counter], key)[0]) == expected


@settings(max_examples=60)
@given(st.tuples(words, words, words, words), st.tuples(words, words))
def test_three_implementations_agree(counter, key):
    expected = philox4x32_10_py(counter, key)
    assert tuple(int(w) for w in philox4x32_10_np(*counter, *key)) == expected
    assert tuple(int(w) for w in _numba([counter], key)[0]) == expected


def test_vectorized_matches_numba_on_many_counters():
    rng = np.random.default_rng(5)
    counters = rng.integers(0, 2**32, size=(5000, 4), dtype=np.uint64)
    key = (0x01234567, 0x89ABCDEF)
    ref = philox4x32_10_np(counters[:, 0], counters[:, 1], counters[:, 2], counters[:, 3], *key).T
    np.testing.assert_array_equal(_numba(counters, key), ref)
    assert ref.max() < 2**32


def test_output_words_look_uniform():
    # 4 x 2^16 words of consecutive counters: mean and each bit's frequency near 1/2.
    c0 = np.arange(1 << 16, dtype=np.uint64)
    w = philox4x32_10_np(c0, 0, 0, 0, 7, 9).ravel()
    bits = (w[:, None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)
    freq = bits.mean(axis=0)
    assert np.all(np.abs(freq - 0.5) < 5 * 0.5 / np.sqrt(w.size))


def test_resolve_seed():
    assert resolve_seed(0) == 0
    assert resolve_seed(2**64 - 1) == 2**64 - 1
    assert resolve_seed(np.uint64(12345)) == 12345
    a, b = resolve_seed(None), resolve_seed(None)
    assert 0 <= a < 2**64 and 0 <= b < 2**64 and a != b
    for bad in (-1, 2**64, 1.5, "7", True):
        with pytest.raises(ValueError):
            resolve_seed(bad)


def test_seed_to_key_and_stream_word():
    assert seed_to_key(0x0123456789ABCDEF) == (0x89ABCDEF, 0x01234567)
    assert stream_word(1) == 1 << 24
    assert stream_word(255, 5) == (255 << 24) | 5
    with pytest.raises(ValueError):
        stream_word(256)
    with pytest.raises(ValueError):
        stream_word(0, 1 << 24)
