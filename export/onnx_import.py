"""QDQ ONNX -> model.int8: map a quantized network made elsewhere onto the engine's integer semantics.

Reads the QuantizeLinear / DequantizeLinear ("QDQ") form that ONNX Runtime's ``quantize_static``,
NNCF and :mod:`export.onnx_export` write: ``DQ(x) , DQ(W), DQ(bias) -> Conv/Gemm/MatMul/Add/pool
[-> Relu/Clip] -> Q``. Each such group becomes one engine node whose real multipliers
(``s_in * s_w[o] / s_out``, ``s_a / s_out``, ``s_in / (s_out k^2)``, from the float32 scales read as
float64) become ``(M, shift)`` with :func:`kernels.fixedpoint.quantize_multipliers`; a ReLU or Clip
before the Q becomes the node's clamp. Supported and refused patterns: docs/onnx.md.

Anything the engine cannot represent exactly is refused with one line naming the ONNX node and the
reason (asymmetric or per-input-channel weights, int8 activations, unsupported ops, dynamic shapes,
float tensors that reach an op without a QuantizeLinear, ...).

What stays inexact by design: the runtimes requantize in float32 with round half to even, the
engine with an exact Q0.31 product rounding half up, so a layer can differ by 1 LSB near a tie.
A model exported by intengine carries its exact integer multipliers in
``metadata_props["intengine.exact"]``; they replace the float-derived ones wherever the two agree to
2^-20 (float32 scales cannot carry 31-bit multipliers), so export -> import is lossless.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

import numpy as np

from intengine import modelfile
from intengine.errors import IntengineError
from kernels.fixedpoint import quantize_multipliers

ONNX_EXTRA = "pip install 'intengine[onnx]'"
MIN_OPSET = 13        # per-channel QuantizeLinear / DequantizeLinear (the axis attribute)
EXACT_TOLERANCE = 2.0**-20  # relative agreement of an exact multiplier with the float32-derived one
BIAS_SCALE_TOLERANCE = 1e-6  # bias scale vs s_in * s_w: the quantizers compute it in float32


class _Refused(Exception):
    """One reason, raised where the problem is found and prefixed with the node in import_qdq."""


def _refuse(message: str):
    raise _Refused(message)


# ----------------------------------------------------------------------------- values in the graph
# Every ONNX tensor name maps to one of these while the graph is walked in (topological) order.

class _Act:
    """A uint8 activation of the engine: produced by engine node ``name`` (or the input)."""

    def __init__(self, name, chw, flat_from=None):
        self.name, self.chw, self.flat_from = name, tuple(chw), flat_from  # chw: per-sample ONNX shape


class _Deq:
    """``DequantizeLinear`` of an activation: float, with this consumer-side scale and zero point."""

    def __init__(self, act: _Act, scale: float):
        self.act, self.scale = act, scale


class _Const:
    def __init__(self, array):
        self.array = np.asarray(array)


class _QConst:
    """A quantized constant (weights, bias) and its DequantizeLinear parameters (when dequantized)."""

    def __init__(self, q, scale=None, zp=None, axis=1):
        self.q, self.scale, self.zp, self.axis = q, scale, zp, axis
        self.dequantized = scale is not None


class _Pending:
    """Float result of a compute op, waiting for its QuantizeLinear (plus ReLU / Clip on the way)."""

    def __init__(self, op, node_name, inputs, **info):
        self.op, self.node_name, self.inputs, self.info = op, node_name, inputs, info
        self.lo, self.hi = -math.inf, math.inf   # float clamp from Relu / Clip
        self.done = False


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _scalar(array, what) -> float:
    a = np.asarray(array)
    if a.size != 1:
        _refuse(f"{what} must be per-tensor (one value), got shape {a.shape}")
    return float(a.reshape(-1)[0])


def _f64(array) -> np.ndarray:
    return np.asarray(array, dtype=np.float64)


def _multipliers(reals, what):
    reals = _f64(reals).reshape(-1)
    if not np.all(np.isfinite(reals)) or np.any(reals <= 0):
        _refuse(f"{what}: scales must be finite and > 0")
    if np.any(reals >= 2.0**30) or np.any(reals < 2.0**-32):
        _refuse(f"{what}: real multiplier outside [2^-32, 2^30), not representable as (M, shift)")
    return quantize_multipliers(reals)


class _Importer:
    def __init__(self, proto, where):
        import onnx

        self.onnx = onnx
        self.proto, self.where = proto, where
        g = proto.graph
        self.env: dict[str, object] = {}
        self.nodes: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.quant: dict[str, dict] = {}
        self.producer: dict[str, dict] = {}   # engine activation name -> engine node
        self.names: set[str] = {"input"}
        self.consumers: dict[str, int] = {}
        for node in g.node:
            for i in node.input:
                self.consumers[i] = self.consumers.get(i, 0) + 1
        for o in g.output:
            self.consumers[o.name] = self.consumers.get(o.name, 0) + 1
        from onnx import numpy_helper

        for init in g.initializer:
            self.env[init.name] = _Const(numpy_helper.to_array(init))
        self.input_info = None

    # ------------------------------------------------------------------ graph input

    def read_input(self):
        g = self.proto.graph
        inits = {i.name for i in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            _refuse(f"the graph must have exactly one input, found {len(inputs)}")
        inp = inputs[0]
        tt = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if len(dims) != 4 or any(d is None or d < 1 for d in dims[1:]):
            shown = ["?" if d is None else d for d in dims]
            _refuse(f"input {inp.name!r}: needs a static (N, C, H, W) or (N, H, W, C) shape, got {shown} "
                    "(dynamic shapes are not supported)")
        elem = self.onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        if elem == np.uint8:
            self.env[inp.name] = ("raw-u8", dims[1:])
        elif elem == np.float32:
            self.env[inp.name] = ("raw-f32", dims[1:])
        else:
            _refuse(f"input {inp.name!r}: dtype {elem} (uint8 pixels or float32 in [0, 1] expected)")
        self.input_name = inp.name

    def set_input(self, chw, scale, zp, what):
        if self.input_info is not None:
            _refuse(f"{what}: the input is quantized more than once")
        if zp != 0:
            _refuse(f"{what}: input zero point {zp} (the engine's input grid has zero point 0)")
        self.input_info = {"chw": tuple(chw), "scale": scale}
        act = _Act("input", chw)
        self.quant["input"] = {"scale": scale, "zero_point": 0}
        return act

    # ------------------------------------------------------------------ helpers

    def get(self, name, what):
        if name not in self.env:
            _refuse(f"{what}: input {name!r} is not produced by a supported pattern")
        return self.env[name]

    def const(self, name, what):
        v = self.get(name, what)
        if not isinstance(v, _Const):
            _refuse(f"{what}: {name!r} must be a constant initializer")
        return v.array

    def deq(self, name, what) -> _Deq:
        v = self.get(name, what)
        if isinstance(v, _Pending):
            _refuse(f"{what}: float output of {v.node_name!r} ({v.op}) reaches it without QuantizeLinear")
        if not isinstance(v, _Deq):
            _refuse(f"{what}: input {name!r} must come from DequantizeLinear of a uint8 activation")
        return v

    def new_name(self, preferred, fallback):
        for cand in (preferred, fallback):
            if cand and cand not in self.names:
                self.names.add(cand)
                return cand
        i = 1
        while f"{fallback}_{i}" in self.names:
            i += 1
        self.names.add(f"{fallback}_{i}")
        return f"{fallback}_{i}"

    # ------------------------------------------------------------------ walking the graph

    def run(self):
        try:
            self.read_input()
        except _Refused as exc:
            raise IntengineError(f"{self.where}: {exc}") from None
        for node in self.proto.graph.node:
            what = f"node {node.name or node.output[0]!r} ({node.op_type})"
            try:
                if node.domain not in ("", "ai.onnx"):
                    _refuse(f"operator domain {node.domain!r} is not supported (standard QDQ operators only)")
                handler = getattr(self, f"op_{node.op_type}", None)
                if handler is None and node.op_type.startswith(("QLinear", "ConvInteger", "MatMulInteger")):
                    _refuse("operator-oriented quantization (QOperator format) is not supported; quantize "
                            "with QuantFormat.QDQ")
                if handler is None:
                    _refuse("unsupported operator")
                handler(node, what, _attrs(node))
            except _Refused as exc:
                raise IntengineError(f"{self.where}: {what}: {exc}") from None
        outs = self.proto.graph.output
        if len(outs) != 1:
            raise IntengineError(f"{self.where}: the graph must have exactly one output, found {len(outs)}")
        v = self.env.get(outs[0].name)
        if isinstance(v, _Deq):
            v = v.act
        if not isinstance(v, _Act) or v.name == "input":
            raise IntengineError(f"{self.where}: output {outs[0].name!r} is not a quantized activation "
                                 "(the last op needs a QuantizeLinear)")
        return v

    def op_Identity(self, node, what, a):
        self.env[node.output[0]] = self.get(node.input[0], what)

    def op_Transpose(self, node, what, a):
        v = self.get(node.input[0], what)
        if isinstance(v, tuple) and v[0] == "raw-u8" and list(a.get("perm", [])) == [0, 3, 1, 2]:
            h, w, c = v[1]
            self.env[node.output[0]] = ("raw-u8", [c, h, w])
            return
        _refuse("Transpose is supported only as NHWC -> NCHW on the uint8 graph input")

    def op_QuantizeLinear(self, node, what, a):
        x = self.get(node.input[0], what)
        scale = self.const(node.input[1], what)
        zp_arr = self.const(node.input[2], what) if len(node.input) > 2 and node.input[2] else np.uint8(0)
        if isinstance(x, _Const):  # a float weight quantized in the graph
            axis = a.get("axis", 1)
            q = _quantize_const(x.array, scale, zp_arr, axis)
            self.env[node.output[0]] = _QConst(q, None, None, axis)
            return
        if zp_arr.dtype != np.uint8:
            _refuse(f"activations must be uint8, got {zp_arr.dtype} (int8 activations are not supported)")
        s = _scalar(scale, "activation scale")
        zp = int(_scalar(zp_arr, "activation zero point"))
        if isinstance(x, tuple) and x[0] == "raw-f32":
            if abs(s * 255.0 - 1.0) > 1e-6:
                _refuse(f"input scale {s!r} is not 1/255: the engine's input is the raw pixel grid "
                        "(float input in [0, 1], quantized with scale 1/255 and zero point 0)")
            self.env[node.output[0]] = self.set_input(x[1], 1.0 / 255.0, zp, what)
            return
        if isinstance(x, _Deq):  # DQ -> [Flatten] -> Q: a pure layout change when nothing is requantized
            if zp != self.quant[x.act.name]["zero_point"] or abs(s / x.scale - 1.0) > 1e-6:
                _refuse("requantization without a compute op (scale or zero point differ from the input's)")
            self.env[node.output[0]] = x.act
            return
        if not isinstance(x, _Pending):
            _refuse("QuantizeLinear must follow a supported compute op, the float input, or a DequantizeLinear")
        if x.done:
            _refuse(f"float output of {x.node_name!r} is quantized twice")
        x.done = True
        self.env[node.output[0]] = self.finish(x, s, zp, node)

    def op_DequantizeLinear(self, node, what, a):
        x = self.get(node.input[0], what)
        scale = self.const(node.input[1], what)
        zp = self.const(node.input[2], what) if len(node.input) > 2 and node.input[2] else None
        axis = a.get("axis", 1)
        if isinstance(x, (_Const, _QConst)):
            q = x.array if isinstance(x, _Const) else x.q
            if zp is None:
                zp = np.zeros((), q.dtype)
            self.env[node.output[0]] = _QConst(q, _f64(scale), zp, axis)
            return
        if isinstance(x, tuple) and x[0] == "raw-u8":
            s = _scalar(scale, "input scale")
            z = 0 if zp is None else int(_scalar(zp, "input zero point"))
            act = self.set_input(x[1], s, z, what)
            self.env[node.input[0]] = act
            x = act
        if not isinstance(x, _Act):
            _refuse("DequantizeLinear must read a uint8 activation (a QuantizeLinear output) or a constant")
        if zp is not None and zp.dtype != np.uint8:
            _refuse(f"activations must be uint8, got {zp.dtype} (int8 activations are not supported)")
        z = 0 if zp is None else int(_scalar(zp, "activation zero point"))
        if z != self.quant[x.name]["zero_point"]:
            _refuse(f"zero point {z} differs from the producer's {self.quant[x.name]['zero_point']}")
        self.env[node.output[0]] = _Deq(x, _scalar(scale, "activation scale"))

    # ------------------------------------------------------------------ compute ops

    def op_Conv(self, node, what, a):
        x = self.deq(node.input[0], what)
        if len(x.act.chw) != 3:
            _refuse("Conv needs a (N, C, H, W) input")
        w = self.weight(node.input[1], what, 4, 0)
        if a.get("group", 1) != 1:
            _refuse(f"group={a['group']} (grouped / depthwise convolution is not supported)")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            _refuse("dilated convolution is not supported")
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            _refuse(f"auto_pad={auto_pad} is not supported (use explicit pads)")
        pads = list(a.get("pads", [0, 0, 0, 0]))
        strides = list(a.get("strides", [1, 1]))
        if len(set(pads)) != 1 or len(set(strides)) != 1:
            _refuse(f"pads {pads} and strides {strides} must be the same on every side")
        o, c, kh, kw = w["q"].shape
        cin, h, wd = x.act.chw
        if c != cin:
            _refuse(f"weight has {c} input channels, the input has {cin}")
        p, s = pads[0], strides[0]
        chw = (o, (h + 2 * p - kh) // s + 1, (wd + 2 * p - kw) // s + 1)
        bias = self.bias(node.input[2], what, o) if len(node.input) > 2 and node.input[2] else None
        self.env[node.output[0]] = _Pending("conv2d", node.name, [x], weight=w, bias=bias, stride=s,
                                            padding=p, chw=chw)

    def op_Gemm(self, node, what, a):
        if a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0 or a.get("transA", 0):
            _refuse("Gemm needs alpha = beta = 1 and transA = 0")
        trans_b = a.get("transB", 0)
        self.linear(node, what, trans_b)

    def op_MatMul(self, node, what, a):
        self.linear(node, what, 0)

    def linear(self, node, what, trans_b):
        x = self.deq(node.input[0], what)
        if len(x.act.chw) != 1:
            _refuse(f"needs a flattened (N, K) input, got per-sample shape {x.act.chw}")
        w = self.weight(node.input[1], what, 2, 0 if trans_b else 1)
        q = w["q"] if trans_b else w["q"].T  # (O, K)
        w = dict(w, q=np.ascontiguousarray(q))
        o, k = q.shape
        if k != x.act.chw[0]:
            _refuse(f"weight has {k} input features, the input has {x.act.chw[0]}")
        bias = self.bias(node.input[2], what, o) if len(node.input) > 2 and node.input[2] else None
        self.env[node.output[0]] = _Pending("linear", node.name, [x], weight=w, bias=bias, chw=(o,))

    def op_Add(self, node, what, a):
        va, vb = (self.get(n, what) for n in node.input[:2])
        for p, c in ((va, vb), (vb, va)):  # MatMul + constant bias
            if isinstance(p, _Pending) and p.op == "linear" and p.info["bias"] is None and \
                    isinstance(c, (_Const, _QConst)) and not p.done:
                o = p.info["weight"]["q"].shape[0]
                p.info["bias"] = self.bias(node.input[1] if p is va else node.input[0], what, o)
                self.env[node.output[0]] = p
                return
        xa, xb = self.deq(node.input[0], what), self.deq(node.input[1], what)
        if xa.act.chw != xb.act.chw:
            _refuse(f"inputs have different shapes {xa.act.chw} and {xb.act.chw} (no broadcasting)")
        self.env[node.output[0]] = _Pending("add", node.name, [xa, xb], chw=xa.act.chw)

    def pool_input(self, node, what):
        x = self.deq(node.input[0], what)
        if len(x.act.chw) != 3:
            _refuse("pooling needs a (N, C, H, W) input")
        return x

    def op_GlobalAveragePool(self, node, what, a):
        x = self.pool_input(node, what)
        c, h, w = x.act.chw
        if h != w:
            _refuse(f"global pooling over a non-square {h}x{w} input is not supported")
        self.env[node.output[0]] = _Pending("avg", node.name, [x], kernel=h, stride=1, chw=(c, 1, 1))

    def op_ReduceMean(self, node, what, a):
        x = self.pool_input(node, what)
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1], what).tolist()
        if axes is None or sorted(int(v) % 4 for v in axes) != [2, 3]:
            _refuse(f"ReduceMean is supported over the spatial axes [2, 3] only, got {axes}")
        c, h, w = x.act.chw
        if h != w:
            _refuse(f"mean over a non-square {h}x{w} input is not supported")
        chw = (c, 1, 1) if a.get("keepdims", 1) else (c,)
        self.env[node.output[0]] = _Pending("avg", node.name, [x], kernel=h, stride=1, chw=chw)

    def op_AveragePool(self, node, what, a):
        x = self.pool_input(node, what)
        k, s = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
        if len(set(k)) != 1 or len(set(s)) != 1 or any(a.get("pads", [0])) or a.get("ceil_mode", 0):
            _refuse("AveragePool needs a square kernel, equal strides, no padding, ceil_mode 0")
        c, h, w = x.act.chw
        chw = (c, (h - k[0]) // s[0] + 1, (w - k[0]) // s[0] + 1)
        self.env[node.output[0]] = _Pending("avg", node.name, [x], kernel=k[0], stride=s[0], chw=chw)

    def op_MaxPool(self, node, what, a):
        if len(node.output) > 1 and node.output[1]:
            _refuse("MaxPool with an Indices output is not supported")
        k, s = list(a.get("kernel_shape", [])), list(a.get("strides", [1, 1]))
        pads = list(a.get("pads", [0, 0, 0, 0]))
        if len(set(k)) != 1 or len(set(s)) != 1 or len(set(pads)) != 1 or a.get("ceil_mode", 0) or \
                any(d != 1 for d in a.get("dilations", [1, 1])):
            _refuse("MaxPool needs a square kernel, equal strides and pads, no dilation, ceil_mode 0")
        v = self.get(node.input[0], what)
        src = v.act if isinstance(v, _Deq) else v
        if not isinstance(src, _Act) or len(src.chw) != 3:
            _refuse("MaxPool needs a uint8 (N, C, H, W) activation or its DequantizeLinear")
        c, h, w = src.chw
        chw = (c, (h + 2 * pads[0] - k[0]) // s[0] + 1, (w + 2 * pads[0] - k[0]) // s[0] + 1)
        info = dict(kernel=k[0], stride=s[0], padding=pads[0], chw=chw)
        if isinstance(v, _Deq):
            self.env[node.output[0]] = _Pending("max", node.name, [v], **info)
        else:  # MaxPool on the uint8 tensor itself
            self.env[node.output[0]] = self.emit_max_pool(node.name, src, info)

    def op_Relu(self, node, what, a):
        self.clamp(node, what, 0.0, math.inf)

    def op_Clip(self, node, what, a):
        lo = a.get("min", -math.inf)
        hi = a.get("max", math.inf)
        if len(node.input) > 1 and node.input[1]:
            lo = float(_scalar(self.const(node.input[1], what), "Clip min"))
        if len(node.input) > 2 and node.input[2]:
            hi = float(_scalar(self.const(node.input[2], what), "Clip max"))
        self.clamp(node, what, lo, hi)

    def clamp(self, node, what, lo, hi):
        v = self.get(node.input[0], what)
        if isinstance(v, _Pending) and not v.done:
            v.lo, v.hi = max(v.lo, lo), min(v.hi, hi)
            self.env[node.output[0]] = v
            return
        if isinstance(v, _Act):  # uint8 Clip on a quantized tensor: fold into its producer
            self.fold_clamp(node, v, int(math.ceil(lo)), int(math.floor(hi)) if math.isfinite(hi) else 255)
            self.env[node.output[0]] = v
            return
        _refuse("Relu / Clip must follow a compute op before its QuantizeLinear, or clamp a uint8 tensor "
                "whose producer has no other consumer")

    def fold_clamp(self, node, act, lo, hi):
        producer = self.producer.get(act.name)
        if producer is None or producer["op"] == "max_pool" or self.consumers.get(node.input[0], 0) != 1:
            _refuse("a clamp on a tensor that is also used unclamped is not supported")
        a = producer["attrs"]
        a["act_min"], a["act_max"] = max(a["act_min"], lo, 0), min(a["act_max"], hi, 255)

    def op_Flatten(self, node, what, a):
        if a.get("axis", 1) != 1:
            _refuse("Flatten needs axis 1")
        self.flatten(node, what)

    def op_Reshape(self, node, what, a):
        shape = self.const(node.input[1], what).tolist()
        v = self.get(node.input[0], what)
        act = v.act if isinstance(v, _Deq) else v
        if not isinstance(act, _Act):
            _refuse("Reshape must act on a quantized activation or its DequantizeLinear")
        k = int(np.prod(act.chw))
        if len(shape) != 2 or shape[1] not in (-1, k) or shape[0] not in (0, -1, 1):
            _refuse(f"Reshape is supported only as a flatten to (N, {k}), got {shape}")
        self.flatten(node, what)

    def op_Squeeze(self, node, what, a):
        axes = a.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = self.const(node.input[1], what).tolist()
        v = self.get(node.input[0], what)
        act = v.act if isinstance(v, _Deq) else v
        if not isinstance(act, _Act) or len(act.chw) != 3 or act.chw[1:] != (1, 1) or \
                axes is None or sorted(int(x) % 4 for x in axes) != [2, 3]:
            _refuse("Squeeze is supported only over the 1x1 spatial axes of (N, C, 1, 1)")
        self.flatten(node, what)

    def flatten(self, node, what):
        v = self.get(node.input[0], what)
        act = v.act if isinstance(v, _Deq) else v
        if not isinstance(act, _Act):
            _refuse("flattening must act on a quantized activation or its DequantizeLinear")
        flat = act
        if len(act.chw) == 3:
            flat = _Act(act.name, (int(np.prod(act.chw)),), flat_from=act.chw)
        self.env[node.output[0]] = _Deq(flat, v.scale) if isinstance(v, _Deq) else flat

    # ------------------------------------------------------------------ constants

    def weight(self, name, what, ndim, axis):
        v = self.get(name, what)
        if not isinstance(v, _QConst) or not v.dequantized:
            _refuse("weights must be a quantized constant read through DequantizeLinear (float weights "
                    "are not quantized)")
        q, scale, zp = v.q, _f64(v.scale).reshape(-1), np.asarray(v.zp).reshape(-1)
        if q.ndim != ndim:
            _refuse(f"weight must be {ndim}-D, got shape {q.shape}")
        n = q.shape[axis]
        if scale.size not in (1, n) or zp.size not in (1, scale.size):
            _refuse(f"weight scales of shape {scale.shape} do not match {n} output channels")
        if scale.size > 1 and v.axis % ndim != axis:
            _refuse(f"per-channel weight scales on axis {v.axis}, expected axis {axis} (output channels)")
        if q.dtype == np.int8:
            if np.any(zp != 0):
                _refuse("asymmetric int8 weights (zero point != 0) are not supported")
            w = q.astype(np.int16)
        elif q.dtype == np.uint8:
            if np.any(zp != 128):
                _refuse("uint8 weights are supported only with zero point 128 (symmetric); asymmetric "
                        "weights are not")
            w = q.astype(np.int16) - 128
        else:
            _refuse(f"weights must be int8 (or uint8 with zero point 128), got {q.dtype}")
        if w.size and int(w.min()) < -127:
            _refuse("weight value -128 is outside the symmetric range [-127, 127]")
        return {"q": w.astype(np.int8), "scale": np.broadcast_to(scale, (n,)).copy(), "axis": axis}

    def bias(self, name, what, o):
        v = self.get(name, what)
        if isinstance(v, _QConst) and v.dequantized:
            if v.q.dtype != np.int32 or np.any(np.asarray(v.zp) != 0):
                _refuse("a quantized bias must be int32 with zero point 0")
            return {"q": np.broadcast_to(v.q.reshape(-1), (o,)).astype(np.int64),
                    "scale": np.broadcast_to(_f64(v.scale).reshape(-1), (o,)).copy()}
        if isinstance(v, _Const) and v.array.dtype.kind == "f":
            return {"real": np.broadcast_to(_f64(v.array).reshape(-1), (o,)).copy()}
        _refuse("bias must be int32 through DequantizeLinear or a float constant")

    # ------------------------------------------------------------------ engine nodes

    def out_act(self, p: _Pending, s_out: float, zp: int, qnode) -> tuple[str, dict, _Act]:
        name = self.new_name(p.node_name, qnode.output[0])
        self.quant[name] = {"scale": s_out, "zero_point": zp}
        lo, hi = 0, 255
        if p.lo > -math.inf:
            lo = max(lo, int(np.rint(np.float32(p.lo) / np.float32(s_out))) + zp)
        if p.hi < math.inf:
            hi = min(hi, int(np.rint(np.float32(p.hi) / np.float32(s_out))) + zp)
        if lo > hi:
            _refuse("Clip range is empty after quantization")
        return name, {"act_min": lo, "act_max": hi}, _Act(name, p.info["chw"])

    def finish(self, p: _Pending, s_out, zp, qnode) -> _Act:
        if p.op == "max":
            x = p.inputs[0]
            if zp != self.quant[x.act.name]["zero_point"] or abs(s_out / x.scale - 1.0) > 1e-6:
                _refuse("MaxPool must keep its input's scale and zero point")
            if p.lo > -math.inf or p.hi < math.inf:
                _refuse("a clamp after MaxPool is not supported")
            return self.emit_max_pool(p.node_name, x.act, p.info)
        name, clamp, act = self.out_act(p, s_out, zp, qnode)
        if p.op in ("conv2d", "linear"):
            self.emit_conv(name, p, s_out, zp, clamp)
        elif p.op == "add":
            xa, xb = p.inputs
            m, sh = _multipliers([xa.scale / s_out, xb.scale / s_out], "add")
            ma, sa, mb, sb = int(m[0]), int(sh[0]), int(m[1]), int(sh[1])
            if abs(sa - sb) > 20:
                _refuse(f"input scales {xa.scale:g} and {xb.scale:g} too different for the engine's add")
            attrs = {"a_zero_point": self.quant[xa.act.name]["zero_point"], "a_multiplier": ma, "a_shift": sa,
                     "b_zero_point": self.quant[xb.act.name]["zero_point"], "b_multiplier": mb, "b_shift": sb,
                     "output_zero_point": zp, **clamp}
            self.emit(name, "add_round_half_up", [xa.act.name, xb.act.name], attrs, {})
        else:  # avg
            x = p.inputs[0]
            k = p.info["kernel"]
            m, sh = _multipliers([x.scale / (s_out * k * k)], "average pool")
            attrs = {"kernel": k, "stride": p.info["stride"], "input_zero_point": self.quant[x.act.name]["zero_point"],
                     "output_multiplier": int(m[0]), "output_shift": int(sh[0]), "output_zero_point": zp, **clamp}
            self.emit(name, "avg_pool_round_half_up", [x.act.name], attrs, {})
        return act

    def emit(self, name, op, inputs, attrs, tensors):
        node = {"name": name, "op": op, "inputs": inputs, "attrs": attrs, "tensors": tensors}
        self.nodes.append(node)
        self.producer[name] = node
        return node

    def emit_max_pool(self, onnx_name, src: _Act, info) -> _Act:
        name = self.new_name(onnx_name, f"{src.name}.max_pool")
        self.quant[name] = dict(self.quant[src.name])
        self.emit(name, "max_pool", [src.name],
                  {"kernel": info["kernel"], "stride": info["stride"], "padding": info["padding"]}, {})
        return _Act(name, info["chw"])

    def emit_conv(self, name, p: _Pending, s_out, zp, clamp):
        x = p.inputs[0]
        w = p.info["weight"]
        s_in, s_w = x.scale, w["scale"]
        q = w["q"]
        o = q.shape[0]
        mult, shift = _multipliers(s_in * s_w / s_out, "requantization")
        acc_scale = s_in * s_w
        b = p.info["bias"]
        if b is None:
            bias = np.zeros(o, np.int64)
        elif "q" in b and np.all(np.abs(b["scale"] / acc_scale - 1.0) <= BIAS_SCALE_TOLERANCE):
            bias = b["q"]
        else:  # a float bias, or an int32 bias at another scale: rounded once to the accumulator scale
            real = b["real"] if "real" in b else b["q"] * b["scale"]
            bias = np.rint(real / acc_scale)
        if np.any(np.abs(bias) > 2**31 - 1):
            _refuse("bias does not fit int32 at the accumulator scale")
        if p.op == "conv2d":
            weight = np.ascontiguousarray(q.transpose(0, 2, 3, 1))  # OIHW -> OHWI
            attrs = {"stride": p.info["stride"], "padding": p.info["padding"]}
        else:
            weight = q
            if x.act.flat_from is not None and x.act.flat_from[1:] != (1, 1):
                c, h, wd = x.act.flat_from  # ONNX flattens C, H, W; the engine flattens H, W, C
                weight = np.ascontiguousarray(q.reshape(o, c, h, wd).transpose(0, 2, 3, 1).reshape(o, -1))
            attrs = {}
        attrs.update(input_zero_point=self.quant[x.act.name]["zero_point"], output_zero_point=zp, **clamp)
        self.tensors[f"{name}.weight"] = weight.astype(np.int8)
        self.tensors[f"{name}.bias"] = bias.astype(np.int32)
        self.tensors[f"{name}.output_multiplier"] = mult
        self.tensors[f"{name}.output_shift"] = shift
        self.emit(name, p.op, [x.act.name], attrs,
                  {k: f"{name}.{k}" for k in ("weight", "bias", "output_multiplier", "output_shift")})


def _quantize_const(x, scale, zp, axis):
    """QuantizeLinear of a constant (round half to even, saturate), as the ONNX operator defines it."""
    x = np.asarray(x, dtype=np.float32)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.asarray(zp)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * x.ndim
        shape[axis % x.ndim] = -1
        scale, zp_b = scale.reshape(shape), zp.reshape(shape)
    else:
        zp_b = zp
    info = np.iinfo(zp.dtype)
    q = np.rint(x / scale) + zp_b.astype(np.float64)
    return np.clip(q, info.min, info.max).astype(zp.dtype)


def _apply_exact(model, tensors, exact):
    """Replace float32-derived multipliers and scales by intengine's exact ones where they agree."""
    def close(a, b):
        return np.all(np.abs(np.asarray(a, np.float64) / np.asarray(b, np.float64) - 1.0) <= EXACT_TOLERANCE)

    def eff(m, s):
        return np.asarray(m, np.float64) * np.exp2(np.asarray(s, np.float64) - 31)

    for name, q in exact.get("quantization", {}).items():
        mine = model["quantization"].get(name)
        if mine and mine["zero_point"] == q.get("zero_point") and close(mine["scale"], q.get("scale", 0)):
            mine["scale"] = q["scale"]
    if "input" in model["quantization"]:
        model["input"]["scale"] = model["quantization"]["input"]["scale"]
    for node in model["nodes"]:
        e = exact.get("nodes", {}).get(node["name"])
        if not e:
            continue
        if node["op"] in ("conv2d", "linear"):
            t = node["tensors"]
            m, s = np.asarray(e["output_multiplier"]), np.asarray(e["output_shift"])
            cur_m, cur_s = tensors[t["output_multiplier"]], tensors[t["output_shift"]]
            if m.shape == cur_m.shape and np.all(m > 0) and close(eff(m, s), eff(cur_m, cur_s)):
                tensors[t["output_multiplier"]] = m.astype(np.int32)
                tensors[t["output_shift"]] = s.astype(np.int32)
        else:
            a = node["attrs"]
            for prefix in ("a_", "b_", "output_"):
                km, ks = f"{prefix}multiplier", f"{prefix}shift"
                if km in e and km in a and e[km] > 0 and close(eff(e[km], e[ks]), eff(a[km], a[ks])):
                    a[km], a[ks] = int(e[km]), int(e[ks])


def import_qdq(onnx_path, sigma: float | None = None, class_names=None, command: str | None = None):
    """Read a QDQ ONNX model; return ``(model, tensors)`` for ``modelfile.write`` (validated).

    ``sigma`` (the training noise level, pixel scale) and ``class_names`` default to the values an
    intengine export records in ``metadata_props``; without them sigma must be given.
    """
    import onnx

    where = str(onnx_path)
    try:
        data = Path(onnx_path).read_bytes()
    except FileNotFoundError:
        raise IntengineError(f"ONNX file not found: {where}") from None
    except OSError as exc:
        raise IntengineError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise IntengineError(f"{where}: not an ONNX model ({type(exc).__name__})") from None
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise IntengineError(f"{where}: opset {opset} < {MIN_OPSET} (per-channel QDQ needs opset 13 or later)")
    meta = {p.key: p.value for p in proto.metadata_props}
    imp = _Importer(proto, where)
    out = imp.run()
    if imp.input_info is None:
        raise IntengineError(f"{where}: the input is never quantized")
    c, h, w = imp.input_info["chw"]
    num_classes = int(np.prod(out.chw))
    if sigma is None and "intengine.sigma" in meta:
        sigma = float(meta["intengine.sigma"])
    if sigma is None:
        raise IntengineError(f"{where} records no noise level (metadata 'intengine.sigma'); pass --sigma")
    if class_names is None and "intengine.class_names" in meta:
        class_names = json.loads(meta["intengine.class_names"])
    class_names = [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes)]
    provenance = json.loads(meta.get("intengine.provenance", "{}")) if "intengine.provenance" in meta else {}
    quantizer = {k: v for k, v in meta.items() if not k.startswith("intengine.")}
    provenance["import"] = {
        "source": Path(onnx_path).name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "quantizer": "intengine" if "intengine.exact" in meta else (quantizer or "not recorded"),
        "opset": int(opset),
        "command": command or f"intengine import-onnx {Path(onnx_path).name}",
    }
    model = {
        "arch": meta.get("intengine.arch") or f"onnx:{proto.graph.name or 'graph'}",
        "input": {"name": "input", "shape": [h, w, c], "dtype": "uint8", "scale": imp.input_info["scale"],
                  "zero_point": 0, "clip": "clip"},
        "nodes": imp.nodes, "output": out.name, "quantization": imp.quant, "num_classes": num_classes,
        "class_names": class_names, "sigma": float(sigma), "provenance": provenance,
    }
    if "intengine.exact" in meta:
        _apply_exact(model, imp.tensors, json.loads(meta["intengine.exact"]))
    modelfile.validate(model, imp.tensors, where)
    return model, imp.tensors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", help="QDQ ONNX model (ONNX Runtime quantize_static, NNCF, intengine export-onnx)")
    parser.add_argument("output", help="model.int8 file to write")
    parser.add_argument("--sigma", type=float, default=None,
                        help="training noise level, pixel scale (default: the one recorded by intengine)")
    parser.add_argument("--class-names", default=None, help="comma-separated class names (default: 0, 1, ...)")


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise IntengineError(f"import-onnx needs onnx: {ONNX_EXTRA}") from None
    if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma > 0):
        raise IntengineError(f"--sigma must be a finite number > 0, got {args.sigma}")
    names = args.class_names.split(",") if args.class_names else None
    command = f"intengine import-onnx {args.onnx} {args.output}" + \
        (f" --sigma {args.sigma}" if args.sigma is not None else "")
    model, tensors = import_qdq(args.onnx, args.sigma, names, command)
    modelfile.write(args.output, model, tensors)
    print(f"wrote {args.output}: {len(model['nodes'])} nodes, {model['num_classes']} classes, "
          f"sigma {model['sigma']:g}")
    return 0
