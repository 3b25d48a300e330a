"""Read, write and validate ``model.int8`` files (a safetensors file; format in docs/model_format.md).

Writing is deterministic: tensors sorted by name, the header and the ``model`` JSON with sorted keys
and no whitespace, so export -> read -> write gives identical bytes. The header is written here (the
safetensors library orders metadata keys at random); reading goes through ``safetensors.numpy``,
which checks offsets and sizes, and then :func:`validate` checks every field of the graph against
the tensors before any kernel can run. Every problem raises ``IntengineError`` with one line.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct

import numpy as np

from intengine.errors import IntengineError

FORMAT = "intengine.int8"
FORMAT_VERSION = "2"                # written; adds tensors_sha256 to version 1
READ_VERSIONS = ("1", "2")          # version 1 files (no digest) still load
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
_MODEL_KEYS = {"input", "output", "nodes", "quantization", "num_classes", "class_names", "sigma", "provenance"}
_OPTIONAL_MODEL_KEYS = {"arch"}
_INPUT_KEYS = {"name", "shape", "dtype", "scale", "zero_point", "clip"}
_NODE_KEYS = {"name", "op", "inputs", "attrs", "tensors"}
_QUANT_KEYS = {"scale", "zero_point"}
# A (multiplier, shift) pair stands for a ratio of scales (docs/model_format.md); the export rounds
# the ratio's mantissa to 31 bits (relative error <= 2^-31), so 2^-26 leaves room for float noise in
# the scales and still catches any pair that does not belong to them.
RATIO_TOLERANCE = 2.0**-26
_NUM_INPUTS = {"conv2d": 1, "linear": 1, "add_round_half_up": 2, "avg_pool_round_half_up": 1, "max_pool": 1}


def _fail(where: str, message: str):
    raise IntengineError(f"{where}: {message}")


# ----------------------------------------------------------------------------- writing

def model_json(model: dict) -> str:
    """The canonical JSON text of a model description (sorted keys, no whitespace)."""
    return json.dumps(model, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def tensors_digest(tensors: dict[str, np.ndarray]) -> str:
    """sha256 (hex) of the tensors: for each name in sorted order, ``name NUL dtype NUL shape NUL``
    (shape as comma-separated decimals, dtype as ``I8``/``I32``) then the little-endian bytes.

    Independent of the file layout (offsets, padding), so any writer gets the same digest."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dtype = _DTYPE_NAMES.get(a.dtype.newbyteorder("=")) or _DTYPE_NAMES.get(a.dtype)
        h.update(f"{name}\0{dtype}\0{','.join(str(v) for v in a.shape)}\0".encode("utf-8"))
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def dumps(model: dict, tensors: dict[str, np.ndarray]) -> bytes:
    """Serialize to safetensors bytes (deterministic)."""
    for name, a in tensors.items():
        if np.asarray(a).dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name}: dtype {np.asarray(a).dtype} not allowed (int8 or int32)")
    header: dict = {"__metadata__": {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model_json(model),
                                     "tensors_sha256": tensors_digest(tensors)}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
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

def _no_duplicates(where: str, what: str):
    """json object_pairs_hook: a repeated key is an error (json's default keeps the last one silently)."""
    def hook(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                _fail(where, f"duplicate key {k!r} in the {what} JSON")
            d[k] = v
        return d
    return hook


def _json(where: str, what: str, text):
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(where, what))
    except (UnicodeDecodeError, ValueError, RecursionError):
        _fail(where, f"not a model.int8 file ({what} is not valid JSON)")


def _read_exact(f, k: int, where: str) -> bytes:
    data = f.read(k)
    if len(data) != k:
        _fail(where, "file changed size while being read")
    return data


def read(path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate ``path``; returns ``(model, tensors)``.

    Only a regular file is opened; its size and its safetensors header (length, JSON, tensor extents)
    are checked before the tensor bytes are read, so a huge or truncated file costs one small read."""
    from intengine.safeio import open_regular

    where = str(path)
    with open_regular(path, "model file") as f:
        try:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                _fail(where, f"file is {size:,} bytes, larger than 2 GiB; not a model.int8")
            head = f.read(8)
            header_len = _header_len(head, size, where)
            prefix = head + _read_exact(f, header_len, where)
            _parse_header(prefix, size, where)
            data = prefix + _read_exact(f, size - len(prefix), where)
        except OSError as exc:
            _fail(where, f"cannot read model file ({exc.strerror or exc})")
    return loads(data, where)


def _header_len(head: bytes, size: int, where: str) -> int:
    if len(head) < 8 or size < 8:
        _fail(where, "not a model.int8 file (too short for a safetensors header)")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        _fail(where, "not a model.int8 file (bad or truncated safetensors header)")
    return header_len


_META_KEYS = {"1": {"format", "format_version", "model"},
              "2": {"format", "format_version", "model", "tensors_sha256"}}
_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}


def _parse_header(prefix: bytes, size: int, where: str) -> dict:
    """The safetensors header of a file of ``size`` bytes starting with ``prefix``: JSON, metadata
    keys, dtypes and tensor extents (each tensor's offsets match its shape and the tensor bytes
    exactly fill the rest of the file). The safetensors library re-checks offsets and overlaps."""
    header_len = _header_len(prefix, size, where)
    header = _json(where, "safetensors header", prefix[8:8 + header_len])
    if not isinstance(header, dict):
        _fail(where, "not a model.int8 file (safetensors header is not an object)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        _fail(where, f"not a model.int8 file (metadata format is not {FORMAT!r})")
    version = meta.get("format_version")
    if version not in _META_KEYS:
        _fail(where, f"unsupported format_version {version!r} (this intengine reads "
                     f"{', '.join(repr(v) for v in READ_VERSIONS)})")
    unknown = sorted(set(meta) - _META_KEYS[version])
    if unknown:
        _fail(where, f"unknown metadata key {unknown[0]!r} (format version {version} has "
                     f"{', '.join(sorted(_META_KEYS[version]))})")
    missing = sorted(_META_KEYS[version] - set(meta))
    if missing or not all(isinstance(v, str) for v in meta.values()):
        _fail(where, f"metadata must hold the strings {', '.join(sorted(_META_KEYS[version]))}")
    total = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            _fail(where, f"tensor {name!r} has dtype {dtype!r}; only I8 and I32 are allowed")
        if set(info) != _TENSOR_KEYS:
            _fail(where, f"tensor {name!r}: header entry must have exactly the keys dtype, shape, data_offsets")
        shape, offs = info["shape"], info["data_offsets"]
        if not (isinstance(shape, list) and len(shape) <= 8 and all(type(v) is int and 0 <= v <= MAX_FILE_BYTES for v in shape)
                and isinstance(offs, list) and len(offs) == 2 and all(type(v) is int for v in offs)):
            _fail(where, f"tensor {name!r}: bad shape or data_offsets in the header")
        nbytes = math.prod(shape) * _DTYPES[info["dtype"]].itemsize
        if not 0 <= offs[0] <= offs[1] or offs[1] - offs[0] != nbytes:
            _fail(where, f"tensor {name!r}: data_offsets {offs} do not match shape {shape}")
        if 8 + header_len + offs[1] > size:
            _fail(where, f"tensor {name!r} extends past the end of the file (truncated?)")
        total += nbytes
    if 8 + header_len + total != size:
        _fail(where, f"file is {size:,} bytes but its header describes {8 + header_len + total:,} "
                     "(truncated, or trailing bytes)")
    return header


def loads(data: bytes, where: str = "<bytes>") -> tuple[dict, dict[str, np.ndarray]]:
    """Parse and validate safetensors bytes."""
    header = _parse_header(data, len(data), where)
    meta = header["__metadata__"]
    try:
        from safetensors.numpy import load as st_load

        tensors = st_load(bytes(data))
    except Exception as exc:  # the safetensors parser rejects bad offsets, sizes, overlaps
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(where, f"corrupt safetensors data ({msg})")
    if "tensors_sha256" in meta and tensors_digest(tensors) != meta["tensors_sha256"]:
        _fail(where, "tensor bytes do not match the recorded tensors_sha256 (corrupted file)")
    model = _json(where, "'model' metadata", meta["model"])
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
    for key in sorted(_MODEL_KEYS):
        if key not in model:
            _fail(where, f"model description lacks {key!r}")
    _no_unknown(where, "model description", model, _MODEL_KEYS | _OPTIONAL_MODEL_KEYS)
    if "arch" in model and not isinstance(model["arch"], str):
        _fail(where, "arch must be a string")
    inp = model["input"]
    if not isinstance(inp, dict):
        _fail(where, "input must be an object")
    _no_unknown(where, "input", inp, _INPUT_KEYS)
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
        _no_unknown(where, f"quantization entry {name!r}", q, _QUANT_KEYS)
        _number(where, f"scale of {name!r}", q.get("scale"), positive=True)
        return _int(where, f"zero_point of {name!r}", q.get("zero_point"), 0, 255)

    if qparams("input") != inp["zero_point"]:
        _fail(where, "input zero point disagrees with its quantization entry")
    if quant["input"]["scale"] != inp["scale"]:
        _fail(where, "input scale disagrees with its quantization entry")
    nodes = model["nodes"]
    if not isinstance(nodes, list) or not nodes or len(nodes) > MAX_NODES:
        _fail(where, f"nodes must be a non-empty list of at most {MAX_NODES}")
    shapes: dict[str, tuple] = {"input": tuple(shape)}
    used: set[str] = set()
    for idx, node in enumerate(nodes):
        _validate_node(where, idx, node, shapes, tensors, used, qparams, lambda a: quant[a]["scale"])
    out = model["output"]
    if not isinstance(out, str) or out not in shapes:
        _fail(where, f"output {out!r} is not produced by any node")
    if shapes[out] != (num_classes,):
        _fail(where, f"output {out!r} has shape {shapes[out]}, expected ({num_classes},) logits")
    unused = sorted(set(tensors) - used)
    if unused:
        _fail(where, f"tensor {unused[0]!r} is not used by any node")
    extra = sorted(set(quant) - set(shapes))
    if extra:
        _fail(where, f"quantization entry {extra[0]!r} names no activation")
    produced = [n["name"] for n in nodes]
    consumed = {i for n in nodes for i in n["inputs"]} | {out}
    dead = [p for p in produced if p not in consumed]
    if dead:
        _fail(where, f"node {dead[0]!r} output is never used")
    return shapes


def _no_unknown(where, what, obj: dict, known) -> None:
    unknown = sorted(set(obj) - set(known))
    if unknown:
        _fail(where, f"{what}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")


def _check_ratio(w, name, mult, shift, ratio):
    """(mult, shift) must be the Q0.31 form of ``ratio`` (a ratio of activation scales)."""
    if mult == 0 and shift == 0:
        ok = ratio < 2.0**-31          # quantize_multiplier's underflow to (0, 0)
    elif mult == INT32_MAX and shift == 30:
        ok = ratio >= 2.0**30 * (1 - RATIO_TOLERANCE)  # saturated
    else:
        ok = abs(mult * 2.0**(shift - 31) / ratio - 1.0) <= RATIO_TOLERANCE
    if not ok:
        raise IntengineError(f"{w}: {name} multiplier {mult} * 2^{shift} / 2^31 does not match the scale "
                             f"ratio {ratio:.9g} given by the quantization entries")


def _validate_node(where, idx, node, shapes, tensors, used, qparams, scale):
    if not isinstance(node, dict):
        _fail(where, f"node {idx} must be an object")
    name, op = node.get("name"), node.get("op")
    w = f"{where}: node {idx} ({name!r})"
    unknown = sorted(set(node) - _NODE_KEYS)
    if unknown:
        raise IntengineError(f"{w}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_NODE_KEYS))})")
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
    for key, tname in tnames.items():
        if tname != f"{name}.{key}":  # each node owns its tensors (docs/model_format.md)
            raise IntengineError(f"{w}: tensor {key} must be named {name + '.' + key!r}, got {tname!r}")
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
        qparams(name)
        _check_ratio(w, "a", attrs["a_multiplier"], attrs["a_shift"], scale(inputs[0]) / scale(name))
        _check_ratio(w, "b", attrs["b_multiplier"], attrs["b_shift"], scale(inputs[1]) / scale(name))
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
        if op == "avg_pool_round_half_up":
            qparams(name)
            _check_ratio(w, "output", attrs["output_multiplier"], attrs["output_shift"],
                         scale(inputs[0]) / (scale(name) * kernel * kernel))
        out_shape = ((h + 2 * pad - kernel) // stride + 1, (wd + 2 * pad - kernel) // stride + 1, c)
    if int(np.prod(out_shape)) > MAX_ACTIVATION:
        raise IntengineError(f"{w}: output shape {out_shape} too large")
    if "output_zero_point" in attrs:
        zp_matches("output_zero_point", name)
    else:
        qparams(name)
    if op == "max_pool" and (qparams(name) != qparams(inputs[0]) or scale(name) != scale(inputs[0])):
        raise IntengineError(f"{w}: max_pool output must keep its input's quantization (scale and zero point)")
    shapes[name] = tuple(int(v) for v in out_shape)


# ----------------------------------------------------------------------------- helpers

def parameter_count(tensors: dict[str, np.ndarray]) -> int:
    return int(sum(a.size for k, a in tensors.items() if k.endswith((".weight", ".bias"))))
