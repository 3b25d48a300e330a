"""Shared pieces of the hostile-input tests: the one-line error contract and a seeded model-file fuzzer.

The fuzzer starts from the valid tiny model of test_modelfile (every op) and makes one mutation
per case in one of four categories:

* ``bytes``:  flip, insert, delete or truncate bytes anywhere in the file;
* ``header``: edit the safetensors header (offsets, shapes, dtypes, metadata keys, digest), the
  length prefix kept consistent;
* ``json``:   edit the ``model`` JSON (a value replaced by a hostile one, a key removed or added,
  nodes duplicated, swapped or removed), written back with a correct digest so that the
  validator itself is exercised;
* ``dupkey``: a duplicate key spliced into the JSON text.

Each case must end in IntengineError with a one-line message, or load; a model that loads must
satisfy the relations docs/model_format.md states (checked here independently of the validator)
and run bit-identically on the reference and Numba backends.  Anything else is a bug.

Run as a script to print the per-category counts: ``python tests/_hostile.py --cases 3000``.
"""
from __future__ import annotations

import copy
import json
import random
import struct
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from intengine import modelfile  # noqa: E402
from intengine.errors import IntengineError  # noqa: E402

CATEGORIES = ("bytes", "header", "json", "dupkey")
HOSTILE_VALUES = [0, -1, 1, 2, 3, 120, 255, 256, 2**30, 2**31 - 1, 2**31, -2**31 - 1, 2**63, 10**30, 0.5, 1.0,
                  -0.0, 1e308, True, False, None, "", "x", "input", "c1", [], {}, [1, 2, 3], [0, 0, 0],
                  {"scale": 0.1, "zero_point": 0}, [6, 6, 2], [4096, 4096, 1], "uint8", "clip"]


def assert_one_line(rc, out, err, where=""):
    """The CLI's error contract: exit 2, nothing on stdout, one line ``intengine: error: ...``."""
    assert rc == 2, (where, rc, err)
    assert err.startswith("intengine: error: ") and err.count("\n") == 1, (where, err)
    assert "Traceback" not in err, (where, err)


def base_model():
    from test_modelfile import tiny_model

    return tiny_model(0)


def _split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def _join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _paths(obj, prefix=()):
    """Every (container, key) below obj, containers included."""
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            out.extend(_paths(v))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            out.extend(_paths(v))
    return out


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    elif kind == 1:
        return bytes(b[:rng.randrange(len(b))])
    elif kind == 2:
        i = rng.randrange(len(b))
        return bytes(b[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + b[i:])
    elif kind == 3:
        i = rng.randrange(len(b))
        return bytes(b[:i] + b[i + rng.randint(1, 64):])
    else:  # corrupt the JSON header region, where it matters most
        (n,) = struct.unpack("<Q", data[:8])
        b[8 + rng.randrange(n)] = rng.choice(b'{}[]",:0123456789-. ex')
    return bytes(b)


def mutate_header(rng: random.Random, data: bytes) -> bytes:
    header, body = _split(data)
    names = [k for k in header if k != "__metadata__"]
    kind = rng.randrange(9)
    meta = header["__metadata__"]
    t = header[rng.choice(names)]
    if kind == 0:
        t["data_offsets"] = [rng.choice([0, 1, 7, 2**40, -1, t["data_offsets"][1]]), t["data_offsets"][1]]
    elif kind == 1:
        t["shape"] = rng.choice([[], [0], [2**31, 2**31], [10**9] * 9, [-1], ["a"], [1.5], list(t["shape"]) + [1]])
    elif kind == 2:
        t["dtype"] = rng.choice(["I16", "F32", "U8", "I64", "BOOL", None, 3])
    elif kind == 3:
        meta[rng.choice(["extra", "format_version", "tensors_sha256", "model"])] = rng.choice(
            ["1", "2", "3", "", "0" * 64, 5])
    elif kind == 4:
        meta.pop(rng.choice(list(meta)))
    elif kind == 5:
        t[rng.choice(["extra", "dtype", "shape", "data_offsets"])] = rng.choice(HOSTILE_VALUES)
    elif kind == 6:
        header.pop(rng.choice(names))
    elif kind == 7:
        header["ghost"] = {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}
    else:
        body = body + b"\0" * rng.choice([1, 8, 4096])
    return _join(header, body)


def mutate_model(rng: random.Random, model: dict) -> dict:
    m = copy.deepcopy(model)
    kind = rng.randrange(6)
    if kind <= 2:
        container, key = rng.choice(_paths(m))
        if kind == 0 or isinstance(container, list):
            container[key] = copy.deepcopy(rng.choice(HOSTILE_VALUES))
        elif kind == 1:
            container.pop(key)
        else:
            container[rng.choice(["extra", "Name", "zero_point ", "padding", "kernel"])] = rng.choice(HOSTILE_VALUES)
    elif kind == 3:  # a zero point or scale made inconsistent (B7's kind of edit)
        q = m["quantization"][rng.choice(list(m["quantization"]))]
        q[rng.choice(["zero_point", "scale"])] = rng.choice([0, 1, 3, 100, 120, 128, 255, 0.02, 0.05, 1e-9])
    elif kind == 4:
        nodes = m["nodes"]
        i, j = rng.randrange(len(nodes)), rng.randrange(len(nodes))
        nodes[i], nodes[j] = nodes[j], nodes[i]
    else:
        nodes = m["nodes"]
        i = rng.randrange(len(nodes))
        if rng.random() < 0.5:
            nodes.insert(i, copy.deepcopy(nodes[rng.randrange(len(nodes))]))
        else:
            nodes.pop(i)
    return m


def with_model(data: bytes, model: dict) -> bytes:
    """``data`` with its model JSON replaced (tensors and their digest unchanged)."""
    header, body = _split(data)
    header["__metadata__"]["model"] = json.dumps(model, sort_keys=True, separators=(",", ":"))
    return _join(header, body)


def splice_duplicate(rng: random.Random, data: bytes) -> bytes:
    header, body = _split(data)
    if rng.random() < 0.5:  # in the model JSON
        text = header["__metadata__"]["model"]
        keys = [k for k in ('"act_max":', '"output_zero_point":', '"sigma":', '"op":', '"zero_point":', '"output":')
                if k in text]
        k = rng.choice(keys)
        i = text.index(k, rng.randrange(text.index(k) + 1))
        header["__metadata__"]["model"] = text[:i] + k + json.dumps(rng.choice([0, 3, 255, "fc", 1.0])) + "," + text[i:]
        return _join(header, body)
    raw = json.dumps(header, separators=(",", ":"))  # in the safetensors header itself
    name = rng.choice([k for k in header if k != "__metadata__"])
    entry = json.dumps({name: header[name]}, separators=(",", ":"))[1:-1]
    raw = raw[:-1] + "," + entry + "}"
    text = raw.encode() + b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(text)) + text + body


def relations_hold(model: dict) -> str | None:
    """Independent oracle for the relations docs/model_format.md states; None when all hold."""
    q = model["quantization"]
    top = {"input", "output", "nodes", "quantization", "num_classes", "class_names", "sigma", "provenance", "arch"}
    if set(model) - top:
        return "unknown top-level key"
    if q["input"]["zero_point"] != model["input"]["zero_point"] or q["input"]["scale"] != model["input"]["scale"]:
        return "input quantization"
    for node in model["nodes"]:
        a, name = node["attrs"], node["name"]
        if set(node) != {"name", "op", "inputs", "attrs", "tensors"}:
            return f"{name}: node keys"
        if "output_zero_point" in a and a["output_zero_point"] != q[name]["zero_point"]:
            return f"{name}: output_zero_point"
        for key, src in (("input_zero_point", 0), ("a_zero_point", 0), ("b_zero_point", 1)):
            if key in a and a[key] != q[node["inputs"][src]]["zero_point"]:
                return f"{name}: {key}"
        if node["op"] == "max_pool" and q[name] != q[node["inputs"][0]]:
            return f"{name}: max_pool quantization"
        if any(v != f"{name}.{k}" for k, v in node["tensors"].items()):
            return f"{name}: tensor names"
    if set(q) != {"input"} | {n["name"] for n in model["nodes"]}:
        return "quantization entries"
    return None


def run_case(data: bytes, x: np.ndarray, must_reject: bool = False) -> str:
    """'rejected' | 'loaded'; raises AssertionError for a bug (see the module docstring)."""
    from intengine.engine import Model

    try:
        model, tensors = modelfile.loads(data, "fuzz.int8")
    except IntengineError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg and msg.startswith("fuzz.int8"), f"bad message: {msg!r}"
        return "rejected"
    assert not must_reject, "accepted a file that must be rejected (duplicate key)"
    broken = relations_hold(model)
    assert broken is None, f"loaded a model that breaks the format: {broken}"
    m = Model(model, tensors, "fuzz.int8")
    xs = x[:, :, :, : m.input_shape[2]] if x.shape[1:] != m.input_shape else x
    if xs.shape[1:] == m.input_shape:
        ref = m.forward(xs, backend="reference")
        fast = m.forward(xs, backend="numba")
        assert np.array_equal(ref, fast), "reference and numba differ"
    return "loaded"


def fuzz(seed: int, cases: int) -> dict[str, Counter]:
    """Run ``cases`` mutations (categories in turn); returns per-category Counters of outcomes.

    Outcomes: 'rejected', 'loaded', or 'bug: <exception type>: <first line>'."""
    rng = random.Random(seed)
    model, tensors = base_model()
    data = modelfile.dumps(model, tensors)
    x = np.random.default_rng(seed).integers(0, 256, (3,) + tuple(model["input"]["shape"]), dtype=np.uint8)
    stats = {c: Counter() for c in CATEGORIES}
    for i in range(cases):
        cat = CATEGORIES[i % len(CATEGORIES)]
        if cat == "bytes":
            case = mutate_bytes(rng, data)
        elif cat == "header":
            case = mutate_header(rng, data)
        elif cat == "json":
            case = with_model(data, mutate_model(rng, model))
        else:
            case = splice_duplicate(rng, data)
        try:
            stats[cat][run_case(case, x, must_reject=cat == "dupkey")] += 1
        except Exception as exc:  # noqa: BLE001 - every other outcome is a bug to report
            first = (str(exc).splitlines() or [""])[0][:100]
            stats[cat][f"bug: {type(exc).__name__}: {first}"] += 1
    return stats


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    for cat, c in fuzz(a.seed, a.cases).items():
        bugs = sum(v for k, v in c.items() if k.startswith("bug"))
        print(f"{cat:7s} cases {sum(c.values()):6d}  rejected {c['rejected']:6d}  loaded {c['loaded']:5d}  bugs {bugs}")
        for k, v in c.most_common():
            if k.startswith("bug"):
                print(f"    {v:5d}  {k}")
