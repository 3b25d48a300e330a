"""Public sampler API: ``make_sampler``, ``Sampler``, ``sample_discrete_gaussian``.

Index layout (both methods): noise value ``n[sample, coordinate]`` of image
``image_index`` on ``stream`` is a pure function of
``(seed, stream, image_index, sample, coordinate)``; batch size, chunking
(``sample_start``) and thread count never change it.  Limits: ``stream`` in
``[0, 256)``; image index, sample index and coordinate in ``[0, 2^32)``.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from kernels.sampler.cks import BLOCK_LIMIT, CksParams, cks_add_noise_clip_numba, cks_fill_numba
from kernels.sampler.params import FAIL, as_sigma_sq
from kernels.sampler.philox import INDEX_LIMIT, resolve_seed, seed_to_key, stream_word
from kernels.sampler.table import AliasTable, table_add_noise_clip_numba, table_fill_numba

METHODS = ("table", "cks")

_tables: dict[Fraction, AliasTable] = {}
_samplers: dict[tuple[Fraction, str], "Sampler"] = {}


def alias_table(sigma_sq) -> AliasTable:
    """The alias table of ``sigma_sq``, built once per process (in-memory cache)."""
    sigma_sq = as_sigma_sq(sigma_sq)
    if sigma_sq not in _tables:
        _tables[sigma_sq] = AliasTable(sigma_sq)
    return _tables[sigma_sq]


def _check_array(name, a, dtype, ndim):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d {np.dtype(dtype).name} numpy array")
    if not a.flags.c_contiguous or (name in ("out", "failed") and not a.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous array")


def _check_index(name, value, limit):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not 0 <= int(value) < limit:
        raise ValueError(f"{name} must be in [0, {limit}), got {value}")
    return int(value)


class Sampler:
    """Integer-only N_Z(0, sigma_sq) noise for the certification loop.

    ``method="table"``: alias table with failure bin (``kernels.sampler.table``);
    ``method="cks"``: exact Canonne-Kamath-Steinke sampler (``kernels.sampler.cks``).
    Building (float/decimal only there) happens in ``make_sampler``; the
    Numba kernels behind ``fill`` and ``add_noise_clip`` are integer-only.
    """

    def __init__(self, sigma_sq, method: str = "table"):
        if method not in METHODS:
            raise ValueError(f"unknown sampler method {method!r}; choose 'table' or 'cks'")
        self.sigma_sq = as_sigma_sq(sigma_sq)
        self.method = method
        if method == "table":
            self.table = alias_table(self.sigma_sq)
            self._params = (
                self.table.threshold,
                self.table.primary,
                self.table.alias,
                self.table.shift_u64,
                self.table.rmask_u64,
            )
        else:
            self.cks = CksParams(self.sigma_sq)
            p = self.cks
            self._params = (
                np.int64(p.num),
                np.int64(p.den),
                np.int64(p.t),
                np.int64(p.y_max),
                np.int64(p.b_acc),
                np.uint64(BLOCK_LIMIT),
            )

    def __repr__(self):
        return f"Sampler(sigma_sq={self.sigma_sq}, method={self.method!r})"

    def _prefix(self, seed, stream, image_index, sample_start, B, d):
        k0, k1 = seed_to_key(seed)
        c3 = stream_word(_check_index("stream", stream, 256))
        image_index = _check_index("image_index", image_index, INDEX_LIMIT)
        sample_start = _check_index("sample_start", sample_start, INDEX_LIMIT)
        if sample_start + B > INDEX_LIMIT:
            raise ValueError(f"sample indices must stay below 2^32, got {sample_start} + {B}")
        if d > INDEX_LIMIT:
            raise ValueError(f"at most 2^32 coordinates, got {d}")
        return (np.uint64(k0), np.uint64(k1), np.uint64(c3), np.uint64(image_index), np.uint64(sample_start))

    def fill(self, seed, stream, image_index, sample_start, out, failed) -> None:
        """``out`` int32 (B, d) <- noise of samples ``sample_start .. +B-1``; ``failed`` uint8 (B,).

        A coordinate that hit the failure bin holds ``FAIL`` (``INT32_MIN``) and sets
        ``failed[i] = 1`` for its sample; CKS sets it only if an output ran out of
        Philox words (never in practice).
        """
        _check_array("out", out, np.int32, 2)
        _check_array("failed", failed, np.uint8, 1)
        if failed.shape[0] != out.shape[0]:
            raise ValueError(f"failed must have shape ({out.shape[0]},), got {failed.shape}")
        head = self._prefix(seed, stream, image_index, sample_start, out.shape[0], out.shape[1])
        if self.method == "table":
            table_fill_numba(*head, *self._params, out, failed)
        else:
            cks_fill_numba(*head, *self._params, out, failed)

    def add_noise_clip(self, x_flat, seed, stream, image_index, sample_start, out, failed) -> None:
        """``out`` uint8 (B, d) <- ``clip(x_flat + n, 0, 255)``; ``failed`` uint8 (B,) as in ``fill``.

        ``x_flat`` uint8 (d,) is the clean image, flattened in the model's input
        layout; coordinate ``j`` is ``x_flat[j]``.  A failed coordinate holds 0
        (its sample must be counted as "not the top class").
        """
        _check_array("x_flat", x_flat, np.uint8, 1)
        _check_array("out", out, np.uint8, 2)
        _check_array("failed", failed, np.uint8, 1)
        if out.shape[1] != x_flat.shape[0] or failed.shape[0] != out.shape[0]:
            raise ValueError(
                f"shapes disagree: x_flat {x_flat.shape}, out {out.shape}, failed {failed.shape}"
            )
        head = self._prefix(seed, stream, image_index, sample_start, out.shape[0], out.shape[1])
        if self.method == "table":
            table_add_noise_clip_numba(*head, x_flat, *self._params, out, failed)
        else:
            cks_add_noise_clip_numba(*head, x_flat, *self._params, out, failed)


def make_sampler(sigma_sq, method: str = "table") -> Sampler:
    """The ``Sampler`` for ``(sigma_sq, method)``, cached per process."""
    key = (as_sigma_sq(sigma_sq), method)
    if key not in _samplers:
        _samplers[key] = Sampler(*key)
    return _samplers[key]


def sample_discrete_gaussian(sigma_sq, size, seed, stream=0, method="table") -> np.ndarray:
    """int32 array of shape ``size`` with N_Z(0, sigma_sq) noise (raw API).

    ``sigma_sq``: ``Fraction`` or ``(num, den)``.  ``size``: int or tuple.  The
    last axis is the coordinate, the leading axes (flattened, C order) the
    sample index; image index 0.  So ``size=(B, d)`` equals ``Sampler.fill``
    with ``image_index=0, sample_start=0`` and ``size=n`` is one sample of ``n``
    coordinates.  ``seed=None`` draws one from the OS (use ``resolve_seed`` first
    to know it).  Table sampler failures appear as ``FAIL = INT32_MIN``
    (probability below ``(28 sigma + 4) / 2^64`` per value).
    """
    seed = resolve_seed(seed)
    shape = (int(size),) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if any(s < 0 for s in shape):
        raise ValueError(f"size must be nonnegative, got {size!r}")
    d = shape[-1] if shape else 1
    B = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    out = np.empty((B, d), dtype=np.int32)
    failed = np.empty(B, dtype=np.uint8)
    if out.size:
        make_sampler(sigma_sq, method).fill(seed, stream, 0, 0, out, failed)
    return out.reshape(shape)


__all__ = ["FAIL", "METHODS", "Sampler", "alias_table", "make_sampler", "sample_discrete_gaussian"]
