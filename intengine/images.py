"""Image files -> the uint8 HWC input grid of a model; one-line errors on bad input.

Accepted: a regular ``.npy`` file (numeric dtype, never unpickled, header checked against the
file size before reading) holding one image, HWC or CHW:

* an integer array with values in 0..255 (any integer dtype) -- used as is;
* a float array with values in [0, 1] -- mapped onto the grid by ``round(255 * v)``
  (round half to even, NumPy's rule; the only float step, outside the hot loop).

A leading batch axis of length 1 is dropped.  CHW is recognised when the array matches the
model's (C, H, W) but not its (H, W, C).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from intengine.errors import IntengineError


def load_npy(path) -> np.ndarray:
    """The array in the ``.npy`` file ``path`` (never unpickled; header checked against the file
    size before reading; regular files only), with one-line IntengineErrors."""
    from intengine.npyfile import load_npy as _load

    p = Path(path)
    if p.suffix.lower() != ".npy" and not p.is_dir():
        raise IntengineError(f"image must be a .npy file, got {p.name}")
    return _load(p, "image file")


def to_grid(arr: np.ndarray, input_shape, name: str = "image") -> np.ndarray:
    """Validate ``arr`` against ``input_shape`` (H, W, C) and return a C-contiguous uint8 HWC array."""
    h, w, c = (int(v) for v in input_shape)
    if arr.dtype.kind not in "biuf":
        raise IntengineError(f"{name} has dtype {arr.dtype}; expected uint8 0..255 or float 0..1")
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2 and c == 1:
        arr = arr[:, :, None]
    if arr.shape == (h, w, c):
        hwc = arr
    elif arr.shape == (c, h, w):
        hwc = np.transpose(arr, (1, 2, 0))
    else:
        raise IntengineError(
            f"{name} has shape {arr.shape}; the model expects {(h, w, c)} (HWC) or {(c, h, w)} (CHW)")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(hwc)):
            raise IntengineError(f"{name} contains NaN or infinite values")
        lo, hi = float(hwc.min()), float(hwc.max())
        if lo < 0.0 or hi > 1.0:
            raise IntengineError(
                f"{name} is float with values in [{lo:g}, {hi:g}]; float images must lie in [0, 1]")
        grid = np.rint(hwc.astype(np.float64) * 255.0)
        return np.ascontiguousarray(grid.astype(np.uint8))
    if arr.dtype.kind == "b":
        raise IntengineError(f"{name} is boolean; expected uint8 0..255 or float 0..1")
    lo, hi = int(hwc.min()), int(hwc.max())
    if lo < 0 or hi > 255:
        raise IntengineError(f"{name} has integer values in [{lo}, {hi}]; expected 0..255")
    return np.ascontiguousarray(hwc.astype(np.uint8))


def load_image(path, input_shape) -> np.ndarray:
    """Load the ``.npy`` image at ``path`` as a uint8 (H, W, C) array for a model with ``input_shape``."""
    return to_grid(load_npy(path), input_shape, name=Path(path).name)
