"""Read, write and validate ``model.int8`` files (a safetensors file; format in docs/model_format.md).

Writing is deterministic: tensors sorted by name, the header and the ``model`` JSON with sorted keys
and no whitespace, so export -> read -> write gives identical bytes. The header is written here (the
safetensors library orders metadata keys at random); reading goes through ``safetensors.numpy``,
which checks offsets and sizes, and then :func:`validate` checks every field of the graph against
the tensors before any kernel can run. Every problem raises ``IntengineError`` with one line.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

from intengine.errors import IntengineError

FORMAT = "intengine.int8"
FORMAT_VERSION = "1"
CLIP_POLICIES = ("clip",)
OPS = ("conv2d", "linear", "add_round_half_up", "avg_pool_round_half_up", "max_pool")
MAX_FILE_BYTES = 1 << 31
MAX_HEADER_BYTES = 1 << 26
MAX_NODES = 10_000
MAX_DIM = 4096                      # any spatial size, channel count or kernel size
MAX_ACTIVATION = 1 << 24            # elements of one activation per image (ResNet-50 needs < 2^20)
MAX_REDUCTION = (2**29) // (255 * 127)  # kernels.checks: dot product < 2^29
INT32_MAX = 2**31 - 1

_DTYPES = {"I8": np.dtype(np.int8), "I32": np.dtype(np.int32)}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}

_ATTRS = {
    "conv2d": ("input_zero_point", "output_zero_point", "act_min", "act_max", "stride", "padding"),
    "linear": ("input_zero_point", "output_zero_point", "act_min", "act_max"),
    "add_round_half_up": ("a_zero_point", "a_multiplier", "a_shift", "b_zero_point", "b_multiplier",
                          "b_shift", "output_zero_point", "act_min", "act_max"),
    "avg_pool_round_half_up": ("kernel", "stride", "input_zero_point", "output_multiplier", "output_shift",
                               "output_zero_point", "act_min", "act_max"),
    "max_pool": ("kernel", "stride", "padding"),
}
_TENSORS = {
    "conv2d": ("weight", "bias", "output_multiplier", "output_shift"),
    "linear": ("weight", "bias", "output_multiplier", "output_shift"),
}
_NUM_INPUTS = {"conv2d": 1, "linear": 1, "add_round_half_up": 2, "avg_pool_round_half_up": 1, "max_pool": 1}


def _fail(where: str, message: str):
    raise IntengineError(f"{where}: {message}")


# ----------------------------------------------------------------------------- writing

def model_json(model: dict) -> str:
    """The canonical JSON text of a model description (sorted keys, no whitespace)."""
    return json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def dumps(model: dict, tensors: dict[str, np.ndarray]) -> bytes:
    """Serialize to safetensors bytes (deterministic)."""
    header: dict = {"__metadata__": {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_json(model)}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name}: dtype {a.dtype} not allowed (int8 or int32)")
        raw = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _DTYPE_NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def write(path, model: dict, tensors: dict[str, np.ndarray]) -> bytes:
    data = dumps(model, tensors)
    loads(data, str(path))
    with open(path, "wb") as f:
        f.write(data)
    return data


# ----------------------------------------------------------------------------- reading

def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate ``path``; returns ``(model, tensors)``."""
    where = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise IntengineError(f"model file not found: {where}") from None
    except IsADirectoryError:
        raise IntengineError(f"{where}: is a directory, not a model file") from None
    except OSError as exc:
        raise IntengineError(f"{where}: cannot read model file ({exc.strerror or exc})") from None
    if len(data) > MAX_FILE_BYTES:
        _fail(where, "file larger than 2 GiB; not a model.int8")
    return loads(data, where)


def loads(data: bytes, where: str = "<bytes>") -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and validate safetensors bytes."""
    if len(data) < 8:
        _fail(where, "not a model.int8 file (too short for a safetensors header)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        _fail(where, "not a model.int8 file (bad or truncated safetensors header)")
    try:
        header = json.loads(data[8:8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        _fail(where, "not a model.int8 file (safetensors header is not JSON)")
    if not isinstance(header, dict):
        _fail(where, "not a model.int8 file (safetensors header is not an object)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(where, f"not a model.int8 file (metadata format is not {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        _fail(where, f"unsupported format_version {meta.get('format_version')!r} (this intengine reads {FORMAT_VERSION!r})")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES:
            dtype = info.get("dtype") if isinstance(info, dict) else None
            _fail(where, f"tensor {name!r} has dtype {dtype!r}; only I8 and I32 are allowed")
    try:
        from safetensors.numpy import load as st_load

        tensors = st_load(bytes(data))
    except Exception as exc:  # the safetensors parser rejects bad offsets, sizes, overlaps
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(where, f"corrupt safetensors data ({msg})")
    model_text = meta.get("model")
    if not isinstance(model_text, str):
        _fail(where, "metadata has no 'model' description")
    try:
        model = json.loads(model_text)
    except ValueError:
        _fail(where, "the 'model' metadata is not valid JSON")
    validate(model, tensors, where)
    return model, tensors


# ----------------------------------------------------------------------------- validation

def _int(where, name, value, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, f"{name} must be an integer, got {value!r}")
    if value < lo or value > hi:
        _fail(where, f"{name}={value} outside [{lo}, {hi}]")
    return value


def _number(where, name, value, lo=0.0, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(where, f"{name} must be a finite number, got {value!r}")
    if value < lo or (positive and value <= 0):
        _fail(where, f"{name}={value} must be {'> 0' if positive else f'>= {lo}'}")
    return float(value)


def _check_requant(where, name, mult, shift):
    m = np.asarray(mult, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    zero = (m == 0) & (s == 0)
    ok = zero | ((m >= 2**30) & (m <= INT32_MAX) & (s >= -31) & (s <= 30))
    if not np.all(ok):
        _fail(where, f"{name}: multipliers must be in [2^30, 2^31) with shifts in [-31, 30] (or 0, 0)")


def _tensor(where, tensors, used, name, dtype, shape=None):
    if not isinstance(name, str) or name not in tensors:
        _fail(where, f"tensor {name!r} is not in the file")
    a = tensors[name]
    if a.dtype != dtype:
        _fail(where, f"tensor {name!r} must be {np.dtype(dtype).name}, got {a.dtype.name}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        _fail(where, f"tensor {name!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    used.add(name)
    return a


def validate(model, tensors: dict[str, np.ndarray], where: str = "<model>") -> dict[str, tuple]:
    """Check the model description against the tensors; raise IntengineError on the first problem.

    Returns the per-sample shape of every activation (``"input"`` and each node's output)."""
    if not isinstance(model, dict):
        _fail(where, "model description must be a JSON object")
    for key in ("input", "output", "nodes", "quantization", "num_classes", "class_names", "sigma", "provenance"):
        if key not in model:
            _fail(where, f"model description lacks {key!r}")
    inp = model["input"]
    if not isinstance(inp, dict):
        _fail(where, "input must be an object")
    shape = inp.get("shape")
    if not isinstance(shape, list) or len(shape) != 3:
        _fail(where, f"input shape must be [H, W, C], got {shape!r}")
    for i, v in enumerate(shape):
        _int(where, f"input shape[{i}]", v, 1, MAX_DIM)
    if shape[0] * shape[1] * shape[2] > MAX_ACTIVATION:
        _fail(where, f"input shape {shape} too large")
    if inp.get("dtype") != "uint8":
        _fail(where, f"input dtype must be 'uint8', got {inp.get('dtype')!r}")
    if inp.get("clip") not in CLIP_POLICIES:
        _fail(where, f"unknown clip policy {inp.get('clip')!r} (known: {', '.join(CLIP_POLICIES)})")
    if inp.get("name") != "input":
        _fail(where, "input name must be 'input'")
    _int(where, "input zero_point", inp.get("zero_point"), 0, 255)
    _number(where, "input scale", inp.get("scale"), positive=True)
    num_classes = _int(where, "num_classes", model["num_classes"], 1, 1 << 20)
    names = model["class_names"]
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        _fail(where, f"class_names must be a list of {num_classes} strings")
    _number(where, "sigma", model["sigma"])
    if not isinstance(model["provenance"], dict):
        _fail(where, "provenance must be an object")
    quant = model["quantization"]
    if not isinstance(quant, dict):
        _fail(where, "quantization must be an object")

    def qparams(name):
        q = quant.get(name)
        if not isinstance(q, dict):
            _fail(where, f"no quantization entry for activation {name!r}")
        _number(where, f"scale of {name!r}", q.get("scale"), positive=True)
        return _int(where, f"zero_point of {name!r}", q.get("zero_point"), 0, 255)

    if qparams("input") != inp["zero_point"]:
        _fail(where, "input zero point disagrees with its quantization entry")
    nodes = model["nodes"]
    if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_NODES:
        _fail(where, f"nodes must be a non-empty list of at most {MAX_NODES}")
    shapes: dict[str, tuple] = {"input": tuple(shape)}
    used: set[str] = set()
    for idx, node in enumerate(nodes):
        _validate_node(where, idx, node, shapes, tensors, used, qparams)
    out = model["output"]
    if not isinstance(out, str) or out not in shapes:
        _fail(where, f"output {out!r} is not produced by any node")
    if shapes[out] != (num_classes,):
        _fail(where, f"output {out!r} has shape {shapes[out]}, expected ({num_classes},) logits")
    unused = sorted(set(tensors) - used)
    if unused:
        _fail(where, f"tensor {unused[0]!r} is not used by any node")
    produced = [n["name"] for n in nodes]
    consumed = {i for n in nodes for i in n["inputs"]} | {out}
    dead = [p for p in produced if p not in consumed]
    if dead:
        _fail(where, f"node {dead[0]!r} output is never used")
    return shapes


def _validate_node(where, idx, node, shapes, tensors, used, qparams):
    if not isinstance(node, dict):
        _fail(where, f"node {idx} must be an object")
    name, op = node.get("name"), node.get("op")
    w = f"{where}: node {idx} ({name!r})"
    if not isinstance(name, str) or not name or name in shapes:
        raise IntengineError(f"{w}: name must be a new non-empty string")
    if op not in OPS:
        raise IntengineError(f"{w}: unknown op {op!r}")
    inputs, attrs, tnames = node.get("inputs"), node.get("attrs"), node.get("tensors")
    if not isinstance(inputs, list) or len(inputs) != _NUM_INPUTS[op]:
        raise IntengineError(f"{w}: {op} takes {_NUM_INPUTS[op]} input(s)")
    for i in inputs:
        if not isinstance(i, str) or i not in shapes:
            raise IntengineError(f"{w}: input {i!r} is not produced by an earlier node")
    if not isinstance(attrs, dict) or sorted(attrs) != sorted(_ATTRS[op]):
        raise IntengineError(f"{w}: attrs must be exactly {', '.join(_ATTRS[op])}")
    if not isinstance(tnames, dict) or sorted(tnames) != sorted(_TENSORS.get(op, ())):
        raise IntengineError(f"{w}: tensors must be exactly {', '.join(_TENSORS.get(op, ())) or 'none'}")
    for key, value in attrs.items():
        lo, hi = (-31, 30) if key.endswith("shift") else (0, INT32_MAX) if key.endswith("multiplier") else \
            (0, 255) if key.endswith(("zero_point", "act_min", "act_max")) else (0, MAX_DIM)
        try:
            _int(w, key, value, lo, hi)
        except IntengineError as exc:
            raise IntengineError(str(exc)) from None
    if "act_min" in attrs and attrs["act_min"] > attrs["act_max"]:
        raise IntengineError(f"{w}: act_min > act_max")
    shape_in = shapes[inputs[0]]

    def zp_matches(key, src):
        if attrs[key] != qparams(src):
            raise IntengineError(f"{w}: {key} disagrees with the zero point of {src!r}")

    if op in ("conv2d", "linear"):
        zp_matches("input_zero_point", inputs[0])
        if op == "conv2d":
            if len(shape_in) != 3:
                raise IntengineError(f"{w}: conv2d needs an (H, W, C) input, got {shape_in}")
            h, wd, c = shape_in
            weight = _tensor(w, tensors, used, tnames["weight"], np.int8)
            if weight.ndim != 4 or weight.shape[3] != c or min(weight.shape) < 1:
                raise IntengineError(f"{w}: weight shape {weight.shape} does not fit input channels {c} (OHWI)")
            o, kh, kw, _ = weight.shape
            stride = _int(w, "stride", attrs["stride"], 1, MAX_DIM)
            pad = attrs["padding"]
            if kh > MAX_DIM or kw > MAX_DIM or pad >= max(kh, kw) or h + 2 * pad < kh or wd + 2 * pad < kw:
                raise IntengineError(f"{w}: kernel {kh}x{kw} with padding {pad} does not fit input {h}x{wd}")
            out_shape = ((h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1, o)
            reduction = kh * kw * c
        else:
            k = int(np.prod(shape_in))
            weight = _tensor(w, tensors, used, tnames["weight"], np.int8)
            if weight.ndim != 2 or weight.shape[1] != k or weight.shape[0] < 1:
                raise IntengineError(f"{w}: weight shape {weight.shape} does not fit {k} input features")
            o = weight.shape[0]
            out_shape = (o,)
            reduction = k
        if reduction > MAX_REDUCTION:
            raise IntengineError(f"{w}: reduction length {reduction} exceeds {MAX_REDUCTION} (int32 bound)")
        if weight.size and int(weight.min()) < -127:
            raise IntengineError(f"{w}: weights must be in [-127, 127]")
        bias = _tensor(w, tensors, used, tnames["bias"], np.int32, (o,))
        mult = _tensor(w, tensors, used, tnames["output_multiplier"], np.int32, (o,))
        shift = _tensor(w, tensors, used, tnames["output_shift"], np.int32, (o,))
        _check_requant(w, "output", mult, shift)
        # |acc| <= |bias| + 255 * sum|w| must fit in int32
        bound = np.abs(bias.astype(np.int64)) + 255 * np.abs(weight.reshape(o, -1).astype(np.int64)).sum(axis=1)
        if bound.size and int(bound.max()) > INT32_MAX:
            raise IntengineError(f"{w}: bias too large: the int32 accumulator could overflow")
    elif op == "add_round_half_up":
        if shapes[inputs[1]] != shape_in:
            raise IntengineError(f"{w}: add inputs have different shapes {shape_in} and {shapes[inputs[1]]}")
        zp_matches("a_zero_point", inputs[0])
        zp_matches("b_zero_point", inputs[1])
        _check_requant(w, "a", attrs["a_multiplier"], attrs["a_shift"])
        _check_requant(w, "b", attrs["b_multiplier"], attrs["b_shift"])
        if abs(attrs["a_shift"] - attrs["b_shift"]) > 20:
            raise IntengineError(f"{w}: |a_shift - b_shift| must be <= 20")
        out_shape = shape_in
    else:
        if len(shape_in) != 3:
            raise IntengineError(f"{w}: {op} needs an (H, W, C) input, got {shape_in}")
        h, wd, c = shape_in
        kernel = _int(w, "kernel", attrs["kernel"], 1, MAX_DIM)
        stride = _int(w, "stride", attrs["stride"], 1, MAX_DIM)
        pad = attrs.get("padding", 0)
        if op == "avg_pool_round_half_up":
            zp_matches("input_zero_point", inputs[0])
            _check_requant(w, "output", attrs["output_multiplier"], attrs["output_shift"])
            if kernel * kernel > MAX_REDUCTION:
                raise IntengineError(f"{w}: pool window too large")
        elif pad >= kernel:
            raise IntengineError(f"{w}: max_pool padding must be < kernel")
        if h + 2 * pad < kernel or wd + 2 * pad < kernel:
            raise IntengineError(f"{w}: pool kernel {kernel} does not fit input {h}x{wd}")
        out_shape = ((h + 2 * pad - kernel) // stride + 1, (wd + 2 * pad - kernel) // stride + 1, c)
    if int(np.prod(out_shape)) > MAX_ACTIVATION:
        raise IntengineError(f"{w}: output shape {out_shape} too large")
    qparams(name)
    if op == "max_pool" and quant_zp_differs(qparams, name, inputs[0]):
        raise IntengineError(f"{w}: max_pool output must keep its input's zero point")
    shapes[name] = tuple(int(v) for v in out_shape)


def quant_zp_differs(qparams, a, b) -> bool:
    return qparams(a) != qparams(b)


# ----------------------------------------------------------------------------- helpers

def parameter_count(tensors: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for k, a in tensors.items() if k.endswith((".weight", ".bias"))))
