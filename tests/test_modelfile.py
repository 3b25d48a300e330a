"""model.int8: deterministic round trip, and hostile files always give one-line IntengineError."""
from __future__ import annotations

import copy
import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from intengine import modelfile
from intengine.errors import IntengineError


def tiny_model(seed: int = 0):
    """A hand-made graph using every op: conv, conv, 1x1 shortcut, add, max pool, global avg pool, linear."""
    rng = np.random.default_rng(seed)
    t = {}

    def conv(name, o, k, c, src_zp, zp, relu, stride=1, padding=None, linear=False):
        shape = (o, c) if linear else (o, k, k, c)
        t[f"{name}.weight"] = rng.integers(-127, 128, shape).astype(np.int8)
        t[f"{name}.bias"] = rng.integers(-5000, 5000, o).astype(np.int32)
        t[f"{name}.output_multiplier"] = rng.integers(2**30, 2**31, o).astype(np.int32)
        t[f"{name}.output_shift"] = rng.integers(-14, -8, o).astype(np.int32)
        attrs = {"input_zero_point": src_zp, "output_zero_point": zp, "act_min": zp if relu else 0, "act_max": 255}
        if not linear:
            attrs.update(stride=stride, padding=(k // 2 if padding is None else padding))
        return {"name": name, "op": "linear" if linear else "conv2d", "attrs": attrs,
                "tensors": {k2: f"{name}.{k2}" for k2 in ("weight", "bias", "output_multiplier", "output_shift")}}

    nodes = [
        dict(conv("c1", 4, 3, 2, 0, 0, True), inputs=["input"]),
        dict(conv("c2", 4, 3, 4, 0, 120, False), inputs=["c1"]),
        dict(conv("sc", 4, 1, 2, 0, 128, False), inputs=["input"]),
        {"name": "add", "op": "add_round_half_up", "inputs": ["c2", "sc"], "tensors": {},
         "attrs": {"a_zero_point": 120, "a_multiplier": 1518500250, "a_shift": 0, "b_zero_point": 128,
                   "b_multiplier": 1200000000, "b_shift": -1, "output_zero_point": 3, "act_min": 3, "act_max": 255}},
        {"name": "mp", "op": "max_pool", "inputs": ["add"], "tensors": {},
         "attrs": {"kernel": 2, "stride": 2, "padding": 0}},
        {"name": "pool", "op": "avg_pool_round_half_up", "inputs": ["mp"], "tensors": {},
         "attrs": {"kernel": 3, "stride": 1, "input_zero_point": 3, "output_multiplier": 1908874354,
                   "output_shift": -3, "output_zero_point": 3, "act_min": 0, "act_max": 255}},
        dict(conv("fc", 3, 1, 4, 3, 100, False, linear=True), inputs=["pool"]),
    ]
    zps = {"input": 0, "c1": 0, "c2": 120, "sc": 128, "add": 3, "mp": 3, "pool": 3, "fc": 100}
    # scales consistent with the add / avg-pool multipliers and max pool (the format requires it)
    scales = {"input": 1 / 255, "c1": 0.02, "add": 0.05, "mp": 0.05, "fc": 0.08}
    scales["c2"] = scales["add"] * 1518500250 / 2**31
    scales["sc"] = scales["add"] * 1200000000 * 2.0**-1 / 2**31
    scales["pool"] = scales["mp"] / (9 * 1908874354 * 2.0**-3 / 2**31)
    model = {
        "arch": "tiny",
        "input": {"name": "input", "shape": [6, 6, 2], "dtype": "uint8", "scale": 1 / 255, "zero_point": 0,
                  "clip": "clip"},
        "output": "fc", "nodes": nodes,
        "quantization": {k: {"scale": scales[k], "zero_point": v} for k, v in zps.items()},
        "num_classes": 3, "class_names": ["a", "b", "c"], "sigma": 0.25,
        "provenance": {"dataset": "none", "seed": seed},
    }
    return model, t


def test_tiny_model_is_valid_and_round_trips_bytes(tmp_path):
    model, tensors = tiny_model()
    data = modelfile.write(tmp_path / "m.int8", model, tensors)
    model2, tensors2 = modelfile.read(tmp_path / "m.int8")
    assert model2 == model
    assert sorted(tensors2) == sorted(tensors)
    for k in tensors:
        assert tensors2[k].dtype == tensors[k].dtype
        np.testing.assert_array_equal(tensors2[k], tensors[k])
    assert modelfile.dumps(model2, tensors2) == data
    assert (tmp_path / "m.int8").read_bytes() == data


def test_file_is_standard_safetensors(tmp_path):
    from safetensors import safe_open

    model, tensors = tiny_model()
    modelfile.write(tmp_path / "m.int8", model, tensors)
    with safe_open(str(tmp_path / "m.int8"), "np") as f:
        meta = f.metadata()
        assert meta["format"] == "intengine.int8" and meta["format_version"] == "2"
        assert meta["tensors_sha256"] == modelfile.tensors_digest(tensors)
        assert json.loads(meta["model"]) == model
        np.testing.assert_array_equal(f.get_tensor("c1.weight"), tensors["c1.weight"])


def test_shipped_models_round_trip():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[1] / "models").glob("*.int8"))
    assert len(files) == 4, f"expected the four shipped ResNet-20 models, found {files}"
    for f in files:
        data = f.read_bytes()
        model, tensors = modelfile.loads(data, str(f))
        assert modelfile.dumps(model, tensors) == data


def _rejects(model, tensors, match=None):
    data = modelfile.dumps(model, tensors)
    with pytest.raises(IntengineError, match=match) as info:
        modelfile.loads(data, "hostile.int8")
    assert "\n" not in str(info.value)


def _mutated(fn):
    model, tensors = tiny_model()
    model, tensors = copy.deepcopy(model), {k: v.copy() for k, v in tensors.items()}
    fn(model, tensors)
    return model, tensors


def _node(model, name):
    return next(n for n in model["nodes"] if n["name"] == name)


HOSTILE = {
    "weight -128": (lambda m, t: t["c1.weight"].__setitem__((0, 0, 0, 0), -128), "weights"),
    "weight dtype int32": (lambda m, t: t.__setitem__("c1.weight", t["c1.weight"].astype(np.int32)), "int8"),
    "bias dtype int8": (lambda m, t: t.__setitem__("c1.bias", t["c1.bias"].astype(np.int8)), "int32"),
    "multiplier too small": (lambda m, t: t["c2.output_multiplier"].__setitem__(1, 2**29), "multipliers"),
    "multiplier negative": (lambda m, t: t["c2.output_multiplier"].__setitem__(1, -5), "multipliers"),
    "shift too large": (lambda m, t: t["c2.output_shift"].__setitem__(0, 31), "multipliers"),
    "shift too small": (lambda m, t: t["fc.output_shift"].__setitem__(0, -32), "multipliers"),
    "add shifts too far apart": (lambda m, t: _node(m, "add")["attrs"].update(a_shift=-25, b_shift=0), "a_shift"),
    "add multiplier out of range": (lambda m, t: _node(m, "add")["attrs"].update(a_multiplier=2**31), "a_multiplier"),
    "zero point 256": (lambda m, t: _node(m, "c2")["attrs"].update(output_zero_point=256), "output_zero_point"),
    "act_min > act_max": (lambda m, t: _node(m, "c1")["attrs"].update(act_min=200, act_max=100), "act_min"),
    "zero point disagrees": (lambda m, t: _node(m, "c2")["attrs"].update(input_zero_point=7), "disagrees"),
    "bool attribute": (lambda m, t: _node(m, "c1")["attrs"].update(stride=True), "integer"),
    "float attribute": (lambda m, t: _node(m, "c1")["attrs"].update(padding=1.0), "integer"),
    "stride 0": (lambda m, t: _node(m, "c1")["attrs"].update(stride=0), "stride"),
    "padding >= kernel": (lambda m, t: _node(m, "c1")["attrs"].update(padding=3), "padding"),
    "kernel larger than input": (lambda m, t: _node(m, "pool")["attrs"].update(kernel=5), "kernel"),
    "max pool padding": (lambda m, t: _node(m, "mp")["attrs"].update(padding=2), "padding"),
    "dangling input": (lambda m, t: _node(m, "c2").update(inputs=["nowhere"]), "not produced"),
    "cycle": (lambda m, t: _node(m, "c1").update(inputs=["c2"]), "not produced"),
    "duplicate name": (lambda m, t: _node(m, "c2").update(name="c1"), "name"),
    "unknown op": (lambda m, t: _node(m, "mp").update(op="exec"), "unknown op"),
    "missing attr": (lambda m, t: _node(m, "mp")["attrs"].pop("stride"), "attrs"),
    "extra attr": (lambda m, t: _node(m, "mp")["attrs"].update(dilation=2), "attrs"),
    "missing tensor": (lambda m, t: t.pop("c1.bias"), "not in the file"),
    "unused tensor": (lambda m, t: t.__setitem__("zz.extra", np.zeros(3, np.int8)), "not used"),
    "wrong weight channels": (lambda m, t: t.__setitem__("c2.weight", np.zeros((4, 3, 3, 3), np.int8)), "weight shape"),
    "wrong bias length": (lambda m, t: t.__setitem__("c2.bias", np.zeros(5, np.int32)), "shape"),
    "linear features": (lambda m, t: t.__setitem__("fc.weight", np.zeros((3, 5), np.int8)), "features"),
    "bias overflow": (lambda m, t: t["c1.bias"].__setitem__(0, 2**31 - 10), "overflow"),
    "huge input shape": (lambda m, t: m["input"].update(shape=[4096, 4096, 2]), "too large"),
    "negative input shape": (lambda m, t: m["input"].update(shape=[-6, 6, 2]), "shape"),
    "input shape rank": (lambda m, t: m["input"].update(shape=[6, 6]), "shape"),
    "unknown clip policy": (lambda m, t: m["input"].update(clip="wrap"), "clip"),
    "input dtype": (lambda m, t: m["input"].update(dtype="int16"), "dtype"),
    "output not logits": (lambda m, t: m.update(output="add"), "output|never used"),
    "output missing": (lambda m, t: m.update(output="nope"), "output"),
    "class names length": (lambda m, t: m.update(class_names=["a"]), "class_names"),
    "num classes": (lambda m, t: m.update(num_classes=4, class_names=list("abcd")), "expected"),
    "negative sigma": (lambda m, t: m.update(sigma=-1.0), "sigma"),
    "zero scale": (lambda m, t: m["quantization"]["c1"].update(scale=0.0), "scale"),
    "missing quantization": (lambda m, t: m["quantization"].pop("sc"), "quantization"),
    "missing key": (lambda m, t: m.pop("nodes"), "nodes"),
    "empty nodes": (lambda m, t: m.update(nodes=[]), "nodes"),
    "node not an object": (lambda m, t: m["nodes"].insert(0, 5), "object"),
    "dead node": (lambda m, t: m["nodes"].insert(1, {"name": "c1b", "op": "max_pool", "inputs": ["c1"], "tensors": {},
                                                     "attrs": {"kernel": 2, "stride": 2, "padding": 0}}) or
                  m["quantization"].update(c1b=dict(m["quantization"]["c1"])), "never used"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_model_description(case):
    fn, match = HOSTILE[case]
    model, tensors = _mutated(fn)
    _rejects(model, tensors, match)


def _valid_bytes():
    model, tensors = tiny_model()
    return modelfile.dumps(model, tensors)


def _raw_file(header: dict, data: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("data", [
    b"", b"\x00" * 7, b"PK\x03\x04garbage-zip-file", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
    struct.pack("<Q", 2**63) + b"{}", struct.pack("<Q", 10) + b"{}",
    _raw_file([1, 2]), _raw_file({"__metadata__": {"format": "other"}}),
    _raw_file({"__metadata__": {"format": "intengine.int8", "format_version": "2", "model": "{}"}}),
    _raw_file({"__metadata__": {"format": "intengine.int8", "format_version": "1", "model": "{not json"}}),
    _raw_file({"__metadata__": {"format": "intengine.int8", "format_version": "1"}}),
    _raw_file({"__metadata__": {"format": "intengine.int8", "format_version": "1", "model": "{}"},
               "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00" * 4),
    _raw_file({"__metadata__": {"format": "intengine.int8", "format_version": "1", "model": "{}"},
               "w": {"dtype": "I8", "shape": [1000000], "data_offsets": [0, 1000000]}}, b"\x00" * 8),
    _raw_file({"__metadata__": {"format": "intengine.int8", "format_version": "1", "model": "{}"},
               "w": {"dtype": "I8", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}, b"\x00" * 8),
])
def test_garbage_files(data):
    with pytest.raises(IntengineError) as info:
        modelfile.loads(data, "bad.int8")
    assert "\n" not in str(info.value)


def test_non_finite_numbers_in_json():
    model, tensors = tiny_model()
    model["sigma"] = 12345.5
    data = modelfile.dumps(model, tensors).replace(b'\\"sigma\\":12345.5', b'\\"sigma\\":NaN    ')  # same length
    assert b"NaN" in data
    with pytest.raises(IntengineError, match="sigma"):
        modelfile.loads(data, "nan.int8")


def test_truncated_files():
    data = _valid_bytes()
    for cut in sorted({0, 1, 7, 8, 9, 100, len(data) // 2, len(data) - 1}):
        with pytest.raises(IntengineError):
            modelfile.loads(data[:cut], "cut.int8")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(IntengineError, match="not found"):
        modelfile.read(tmp_path / "absent.int8")
    with pytest.raises(IntengineError, match="directory"):
        modelfile.read(tmp_path)


def test_non_integer_tensors_cannot_be_written():
    model, tensors = tiny_model()
    tensors["c1.bias"] = tensors["c1.bias"].astype(np.float32)
    with pytest.raises(ValueError):
        modelfile.dumps(model, tensors)


@settings(max_examples=60)
@given(st.data())
def test_random_byte_corruption_never_crashes(data):
    raw = bytearray(_valid_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    try:
        model, tensors = modelfile.loads(bytes(raw), "flipped.int8")
    except IntengineError as exc:
        assert "\n" not in str(exc)
    else:  # a flip inside tensor data may leave a valid model; it must still be a valid model
        modelfile.validate(model, tensors)
