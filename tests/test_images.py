"""Image loading: .npy HWC/CHW, uint8 or float 0..1, one-line errors; the shipped examples."""
from pathlib import Path

import numpy as np
import pytest

from intengine.errors import IntengineError
from intengine.images import load_image, to_grid

SHAPE = (32, 32, 3)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _save(tmp_path, arr, name="img.npy"):
    p = tmp_path / name
    np.save(p, arr, allow_pickle=False)
    return p


def test_hwc_uint8_roundtrip(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, size=SHAPE, dtype=np.uint8)
    y = load_image(_save(tmp_path, x), SHAPE)
    assert y.dtype == np.uint8 and y.flags.c_contiguous and np.array_equal(x, y)


def test_chw_and_batch_of_one(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=SHAPE, dtype=np.uint8)
    assert np.array_equal(load_image(_save(tmp_path, x.transpose(2, 0, 1)), SHAPE), x)
    assert np.array_equal(load_image(_save(tmp_path, x[None]), SHAPE), x)


def test_float_maps_to_grid(tmp_path):
    x = np.random.default_rng(2).integers(0, 256, size=SHAPE, dtype=np.uint8)
    for dt in (np.float32, np.float64):
        f = (x / 255.0).astype(dt)
        assert np.array_equal(load_image(_save(tmp_path, f), SHAPE), x)
    assert np.array_equal(to_grid(np.array([[[0.0, 1.0, 0.5]]]), (1, 1, 3)), np.array([[[0, 255, 128]]], np.uint8))


def test_other_integer_dtypes(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, size=SHAPE).astype(np.int64)
    assert np.array_equal(load_image(_save(tmp_path, x), SHAPE), x.astype(np.uint8))


@pytest.mark.parametrize("arr,msg", [
    (np.zeros((31, 32, 3), np.uint8), "shape"),
    (np.zeros((32, 32), np.uint8), "shape"),
    (np.full(SHAPE, np.nan, np.float32), "NaN"),
    (np.full(SHAPE, np.inf, np.float64), "NaN or infinite"),
    (np.full(SHAPE, 1.5, np.float32), r"\[0, 1\]"),
    (np.full(SHAPE, -0.1, np.float32), r"\[0, 1\]"),
    (np.full(SHAPE, 256, np.int32), "0..255"),
    (np.full(SHAPE, -1, np.int16), "0..255"),
    (np.zeros(SHAPE, bool), "boolean"),
    (np.zeros(SHAPE, complex), "dtype"),
])
def test_bad_arrays(tmp_path, arr, msg):
    with pytest.raises(IntengineError, match=msg) as e:
        load_image(_save(tmp_path, arr), SHAPE)
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(IntengineError, match="not found"):
        load_image(tmp_path / "missing.npy", SHAPE)
    png = tmp_path / "img.png"
    png.write_bytes(b"\x89PNG....")
    with pytest.raises(IntengineError, match=r"\.npy"):
        load_image(png, SHAPE)
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"not a numpy file")
    with pytest.raises(IntengineError, match="cannot read"):
        load_image(junk, SHAPE)
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(IntengineError, match="cannot read"):  # never unpickled
        load_image(obj, SHAPE)
    with pytest.raises(IntengineError, match="directory"):
        load_image(tmp_path, SHAPE)


def test_shipped_examples():
    files = sorted(EXAMPLES.glob("*.npy"))
    assert len(files) >= 4
    cat = load_image(EXAMPLES / "cat_chelsea.npy", SHAPE)
    assert np.array_equal(load_image(EXAMPLES / "cat_chelsea_chw_float.npy", SHAPE), cat)
    for f in files:
        x = load_image(f, SHAPE)
        assert x.shape == SHAPE and x.std() > 5  # real pictures, not blank
