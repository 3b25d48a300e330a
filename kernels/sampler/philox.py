"""Philox4x32-10 (Salmon et al., SC'11): the counter-based PRNG behind all noise.

One call maps a 128-bit counter ``(c0, c1, c2, c3)`` and a 64-bit key
``(k0, k1)`` (all 32-bit words) to four 32-bit output words.  A round is::

    p0 = 0xD2511F53 * c0          # 32 x 32 -> 64 bit, exact in uint64
    p1 = 0xCD9E8D57 * c2
    (c0, c1, c2, c3) = (hi(p1) ^ c1 ^ k0, lo(p1), hi(p0) ^ c3 ^ k1, lo(p0))
    (k0, k1) = (k0 + 0x9E3779B9, k1 + 0xBB67AE85)  mod 2^32

and Philox4x32-10 applies ten rounds (the key is bumped between rounds).  It
is checked against Random123's known-answer vectors (``kat_vectors``).

Keying and counter layout (the contract: noise is a pure function of
``(seed, stream, image_index, sample_index, coordinate)``):

* key: the 64-bit seed, ``k0 = seed & 0xFFFFFFFF``, ``k1 = seed >> 32``;
* ``c0``: coordinate (CKS) or coordinate pair ``coordinate >> 1`` (table);
* ``c1``: sample index;  ``c2``: image index;
* ``c3``: ``stream << 24 | block``, ``stream < 256``; ``block`` is the
  per-output block counter of the CKS sampler (its variable number of words)
  and 0 for the table sampler.

All values are carried in uint64 holding 32-bit words: the 32 x 32 bit
products are < 2^64, so nothing overflows; additions are masked to 32 bits.
Everything here is integer-only; the Numba function is inlined into the
sampling kernels.  Bad arguments raise ``ValueError`` (``kernels`` does not
import ``intengine``; the engine turns them into ``IntengineError``).
"""
from __future__ import annotations

import numpy as np
from numba import njit


PHILOX_M0 = 0xD2511F53
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF

STREAM_BITS = 8
"""Streams are ``0 .. 2^8 - 1`` (certification uses 0 and 1)."""
BLOCK_BITS = 24
"""Per-output Philox blocks available to the CKS sampler: 2^24 blocks = 2^26 words."""
INDEX_LIMIT = 1 << 32
"""Coordinates, sample indices and image indices are ``0 .. 2^32 - 1``."""

_M0 = np.uint64(PHILOX_M0)
_M1 = np.uint64(PHILOX_M1)
_W0 = np.uint64(PHILOX_W0)
_W1 = np.uint64(PHILOX_W1)
_MASK = np.uint64(MASK32)
_S32 = np.uint64(32)


def resolve_seed(seed=None) -> int:
    """Return ``seed`` as a Python int in ``[0, 2^64)``; ``None`` draws one from the OS.

    Without a seed, ``np.random.SeedSequence().entropy`` (128 bits of OS
    entropy) is reduced to its low 64 bits; callers must report the value.
    """
    if seed is None:
        return int(np.random.SeedSequence().entropy) & ((1 << 64) - 1)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < (1 << 64):
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return seed


def seed_to_key(seed: int) -> tuple[int, int]:
    """64-bit seed -> Philox key words ``(k0, k1)`` = (low 32 bits, high 32 bits)."""
    seed = resolve_seed(seed)
    return seed & MASK32, seed >> 32


def stream_word(stream: int, block: int = 0) -> int:
    """Counter word ``c3 = stream << 24 | block``."""
    if not 0 <= stream < (1 << STREAM_BITS):
        raise ValueError(f"stream must be in [0, {1 << STREAM_BITS}), got {stream}")
    if not 0 <= block < (1 << BLOCK_BITS):
        raise ValueError(f"block must be in [0, {1 << BLOCK_BITS}), got {block}")
    return (stream << BLOCK_BITS) | block


# ---------------------------------------------------------------- references


def philox4x32_10_py(counter, key) -> tuple[int, int, int, int]:
    """Scalar reference on Python ints: ``counter`` 4 words, ``key`` 2 words -> 4 words."""
    c0, c1, c2, c3 = (int(c) & MASK32 for c in counter)
    k0, k1 = (int(k) & MASK32 for k in key)
    for _ in range(PHILOX_ROUNDS):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
        k0 = (k0 + PHILOX_W0) & MASK32
        k1 = (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox4x32_10_np(c0, c1, c2, c3, k0, k1) -> np.ndarray:
    """Vectorized NumPy reference: counter words broadcast together -> uint64 (4, ...) words.

    Inputs are anything ``np.asarray(..., dtype=np.uint64)`` accepts, each word
    in ``[0, 2^32)``; the output holds 32-bit words in uint64.
    """
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64) & _MASK for c in (c0, c1, c2, c3)))
    k0 = np.uint64(int(k0) & MASK32)
    k1 = np.uint64(int(k1) & MASK32)
    for _ in range(PHILOX_ROUNDS):
        p0 = _M0 * c0  # < 2^64: 32 x 32 bit product
        p1 = _M1 * c2
        c0, c1, c2, c3 = (p1 >> _S32) ^ c1 ^ k0, p1 & _MASK, (p0 >> _S32) ^ c3 ^ k1, p0 & _MASK
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return np.stack([c0, c1, c2, c3])


# --------------------------------------------------------------------- numba


@njit(cache=True, inline="always")
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Numba Philox4x32-10; every argument uint64 holding a 32-bit word; returns 4 words."""
    for _ in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        n0 = (p1 >> _S32) ^ c1 ^ k0
        n2 = (p0 >> _S32) ^ c3 ^ k1
        c1 = p1 & _MASK
        c3 = p0 & _MASK
        c0 = n0
        c2 = n2
        k0 = (k0 + _W0) & _MASK
        k1 = (k1 + _W1) & _MASK
    return c0, c1, c2, c3


@njit(cache=True)
def philox4x32_10_many(counters, k0, k1, out):
    """Numba batch: ``counters`` uint64 (n, 4), ``k0``/``k1`` uint64 -> ``out`` uint64 (n, 4)."""
    for i in range(counters.shape[0]):
        w0, w1, w2, w3 = philox4x32_10(counters[i, 0], counters[i, 1], counters[i, 2], counters[i, 3], k0, k1)
        out[i, 0] = w0
        out[i, 1] = w1
        out[i, 2] = w2
        out[i, 3] = w3
