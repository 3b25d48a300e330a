"""model.int8 -> standard ONNX QDQ (QuantizeLinear / DequantizeLinear around float ops, opset 17).

Only default-domain operators, so ONNX Runtime and OpenVINO both load it and run it as int8
(ONNX Runtime fuses DQ -> op -> Q into QLinearConv / QLinearAdd / QGemm; OpenVINO's low-precision
transformations turn the same pattern into u8 x i8 convolutions). Layout inside the graph is NCHW.

Mapping of each engine node (``DQ(x, s, zp)`` = ``s * (x - zp)`` in float, ``Q`` its inverse):

* conv2d            -> DQ(x) , DQ(W int8 OIHW, per-channel axis 0), DQ(bias int32, axis 0) -> Conv
                       [-> Relu] -> Q
* linear            -> Flatten (uint8) -> DQ -> Gemm(transB=1; W (O, K), per-channel axis 0) [-> Relu] -> Q
* add_round_half_up -> DQ(a), DQ(b) -> Add [-> Relu] -> Q
* avg_pool          -> DQ -> GlobalAveragePool (kernel = input size) or AveragePool(k, s) -> Q
* max_pool          -> DQ -> MaxPool -> Q (the same scale and zero point)

ReLU is ``act_min == output_zero_point, act_max == 255``; any other clamp becomes a uint8 Clip after
the Q, which is exact. Every consumer has its own DQ, whose scale is chosen from the engine's
integer multiplier: for a conv ``s_in * s_w[o] / s_out = M * 2^shift / 2^31`` gives ``s_w``; for an
add ``DQ(a)`` has scale ``(M_a * 2^shift_a / 2^31) * s_out``; for a pool ``(M 2^shift / 2^31) k^2 s_out``.
So the float graph computes the engine's real multipliers up to float32 rounding, whatever the
model's ``quantization`` table says. The runtimes requantize in float32 and round half to even where
the engine multiplies by an exact Q0.31 integer and rounds half up: a layer can differ by 1 LSB near
a tie (tests/test_onnx.py states the measured bounds).

float32 scales cannot carry 31-bit multipliers, so the exact integer multipliers, shifts and
float64 activation scales also travel in ``metadata_props["intengine.exact"]``;
:mod:`export.onnx_import` uses them only where they agree with the graph's float scales.

Input: ``uint8-nhwc`` (the engine's grid, graph input ``input`` uint8 (N, H, W, C), output
``logits`` uint8) or ``float-nchw`` (``input`` float32 (N, C, H, W) in [0, 1], quantized by
QuantizeLinear with scale 1/255 -- round half to even, like ``intengine.images`` -- and output
``logits`` float32 = ``s_out * (q - zp)``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

INPUT_LAYOUTS = ("uint8-nhwc", "float-nchw")
WEIGHT_TYPES = ("int8", "uint8")
OPSET = 17
ONNX_EXTRA = "pip install 'intengine[onnx]'"


def _effective(mult, shift) -> np.ndarray:
    """The real multiplier ``M * 2^shift / 2^31`` (float64; (0, 0) maps to a tiny positive value)."""
    m = np.asarray(mult, dtype=np.float64) * np.exp2(np.asarray(shift, dtype=np.float64) - 31)
    return np.maximum(m, 1e-30)


def _exact_params(model, tensors) -> dict:
    """Per node, the integer parameters float32 scales cannot carry (for a lossless import)."""
    exact = {"quantization": model["quantization"], "nodes": {}}
    for node in model["nodes"]:
        a, t = node["attrs"], node["tensors"]
        if node["op"] in ("conv2d", "linear"):
            exact["nodes"][node["name"]] = {"output_multiplier": tensors[t["output_multiplier"]].tolist(),
                                            "output_shift": tensors[t["output_shift"]].tolist()}
        elif node["op"] == "add_round_half_up":
            exact["nodes"][node["name"]] = {k: a[k] for k in ("a_multiplier", "a_shift", "b_multiplier", "b_shift")}
        elif node["op"] == "avg_pool_round_half_up":
            exact["nodes"][node["name"]] = {k: a[k] for k in ("output_multiplier", "output_shift")}
    return exact


def _weight_codes(weight: np.ndarray, weight_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(codes, per-channel zero points): int8 with zero point 0, or the same values + 128 as uint8, zp 128."""
    o = weight.shape[0]
    if weight_type == "int8":
        return weight, np.zeros(o, np.int8)
    return (weight.astype(np.int16) + 128).astype(np.uint8), np.full(o, 128, np.uint8)


def build_qdq(model, tensors, shapes, input_layout: str = "uint8-nhwc", weight_type: str = "int8"):
    """Return an onnx.ModelProto (QDQ, opset 17) for a validated model; ``shapes`` from modelfile.validate."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    q = model["quantization"]
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def f32(v):
        return np.asarray(v, dtype=np.float32)

    def dq(src, scale, zp, name, axis=None):
        """DequantizeLinear of ``src`` with its own scale initializer; returns the float tensor name."""
        ins = [src, const(f"{name}/scale", f32(scale)), const(f"{name}/zp", zp)]
        kw = {} if axis is None else {"axis": axis}
        nodes.append(helper.make_node("DequantizeLinear", ins, [f"{name}/dq"], name=f"{name}/DQ", **kw))
        return f"{name}/dq"

    def act_zp(act):
        return np.array(q[act]["zero_point"], dtype=np.uint8)

    def requant_out(name, y_float, a, zp, scale=None):
        """[Relu] -> Q(s_out) [-> uint8 Clip]; returns the uint8 tensor name."""
        act_min, act_max = a.get("act_min", 0), a.get("act_max", 255)
        relu = act_min == zp and act_max == 255 and zp > 0
        if relu:
            nodes.append(helper.make_node("Relu", [y_float], [f"{name}/relu"], name=f"{name}/Relu"))
            y_float = f"{name}/relu"
        s_out = q[name]["scale"] if scale is None else scale
        ins = [y_float, const(f"{name}/out_scale", f32(s_out)), const(f"{name}/out_zp", act_zp(name))]
        nodes.append(helper.make_node("QuantizeLinear", ins, [f"{name}/q"], name=f"{name}/Q"))
        out = f"{name}/q"
        if not relu and (act_min, act_max) != (0, 255):
            lo = const(f"{name}/clip_min", np.array(act_min, dtype=np.uint8))
            hi = const(f"{name}/clip_max", np.array(act_max, dtype=np.uint8))
            nodes.append(helper.make_node("Clip", [out, lo, hi], [f"{name}/clipped"], name=f"{name}/Clip"))
            out = f"{name}/clipped"
        return out

    h, w, c = model["input"]["shape"]
    s_input = q["input"]["scale"]
    if input_layout == "uint8-nhwc":
        graph_in = helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", h, w, c])
        nodes.append(helper.make_node("Transpose", ["input"], ["input/nchw"], name="input/Transpose",
                                      perm=[0, 3, 1, 2]))
    else:
        graph_in = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c, h, w])
        # pixels / 255 back onto the 0..255 grid; consumers dequantize the grid with the model's own scale
        ins = ["input", const("input/scale", f32(1.0 / 255.0)), const("input/zp", np.array(0, np.uint8))]
        nodes.append(helper.make_node("QuantizeLinear", ins, ["input/nchw"], name="input/Q"))
    produced = {"input": "input/nchw"}
    for node in model["nodes"]:
        name, op, a = node["name"], node["op"], node["attrs"]
        t = {k: tensors[v] for k, v in node["tensors"].items()}
        src_act = node["inputs"][0]
        src = produced[src_act]
        out_scale = q[name]["scale"]
        if op in ("conv2d", "linear"):
            weight = t["weight"]
            o = weight.shape[0]
            s_in = q[src_act]["scale"]
            w_scale = f32(_effective(t["output_multiplier"], t["output_shift"]) * out_scale / s_in)
            b_scale = f32(s_in) * w_scale  # what ONNX Runtime's quantizer writes for an int32 bias
            if op == "conv2d":
                w_onnx = np.ascontiguousarray(weight.transpose(0, 3, 1, 2))  # OHWI -> OIHW
            else:
                sh = shapes[src_act]
                if len(sh) == 3:  # the engine flattens NHWC; ONNX Flatten of NCHW gives C, H, W order
                    w_onnx = np.ascontiguousarray(weight.reshape(o, *sh).transpose(0, 3, 1, 2).reshape(o, -1))
                    nodes.append(helper.make_node("Flatten", [src], [f"{name}/flat"], name=f"{name}/Flatten"))
                    src = f"{name}/flat"
                else:
                    w_onnx = weight
            x = dq(src, s_in, act_zp(src_act), f"{name}/x")
            codes, w_zp = _weight_codes(w_onnx, weight_type)
            wt = dq(const(f"{name}/weight", codes), w_scale, w_zp, f"{name}/w", axis=0)
            bt = dq(const(f"{name}/bias", t["bias"]), b_scale, np.zeros(o, np.int32), f"{name}/b", axis=0)
            if op == "conv2d":
                kh, kw = weight.shape[1:3]
                nodes.append(helper.make_node("Conv", [x, wt, bt], [f"{name}/y"], name=name,
                                              strides=[a["stride"]] * 2, pads=[a["padding"]] * 4,
                                              kernel_shape=[kh, kw]))
            else:
                nodes.append(helper.make_node("Gemm", [x, wt, bt], [f"{name}/y"], name=name, transB=1))
            out = requant_out(name, f"{name}/y", a, a["output_zero_point"])
        elif op == "add_round_half_up":
            b_act = node["inputs"][1]
            xa = dq(src, _effective(a["a_multiplier"], a["a_shift"]) * out_scale, act_zp(src_act), f"{name}/a")
            xb = dq(produced[b_act], _effective(a["b_multiplier"], a["b_shift"]) * out_scale, act_zp(b_act),
                    f"{name}/b")
            nodes.append(helper.make_node("Add", [xa, xb], [f"{name}/y"], name=name))
            out = requant_out(name, f"{name}/y", a, a["output_zero_point"])
        elif op == "avg_pool_round_half_up":
            k, stride = a["kernel"], a["stride"]
            s_eff = _effective(a["output_multiplier"], a["output_shift"]) * k * k * out_scale
            x = dq(src, s_eff, act_zp(src_act), f"{name}/x")
            ih, iw = shapes[src_act][:2]
            if k == ih == iw:
                nodes.append(helper.make_node("GlobalAveragePool", [x], [f"{name}/y"], name=name))
            else:
                nodes.append(helper.make_node("AveragePool", [x], [f"{name}/y"], name=name,
                                              kernel_shape=[k, k], strides=[stride, stride]))
            out = requant_out(name, f"{name}/y", a, a["output_zero_point"])
        elif op == "max_pool":
            k, s, p = a["kernel"], a["stride"], a["padding"]
            s_in = q[src_act]["scale"]  # max commutes with DQ: the output keeps the input's quantization
            x = dq(src, s_in, act_zp(src_act), f"{name}/x")
            nodes.append(helper.make_node("MaxPool", [x], [f"{name}/y"], name=name, kernel_shape=[k, k],
                                          strides=[s, s], pads=[p] * 4))
            out = requant_out(name, f"{name}/y", {}, 0, scale=s_in)
        else:  # pragma: no cover - validated models hold no other op
            raise ValueError(op)
        produced[name] = out
    num_classes = model["num_classes"]
    final = produced[model["output"]]
    if input_layout == "uint8-nhwc":
        nodes.append(helper.make_node("Identity", [final], ["logits"], name="logits"))
        graph_out = helper.make_tensor_value_info("logits", TensorProto.UINT8, ["N", num_classes])
    else:
        out_name = model["output"]
        ins = [final, const("logits/scale", f32(q[out_name]["scale"])), const("logits/zp", act_zp(out_name))]
        nodes.append(helper.make_node("DequantizeLinear", ins, ["logits"], name="logits/DQ"))
        graph_out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", num_classes])
    graph = helper.make_graph(nodes, model.get("arch", "intengine"), [graph_in], [graph_out], initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="intengine", producer_version=_version())
    onnx_model.ir_version = 8
    out_q = q[model["output"]]
    meta = {
        "intengine.class_names": json.dumps(model["class_names"]),
        "intengine.sigma": repr(float(model["sigma"])),
        "intengine.input_layout": input_layout,
        "intengine.input": json.dumps({"scale": s_input, "zero_point": q["input"]["zero_point"],
                                       "clip": model["input"]["clip"]}),
        "intengine.output": json.dumps({"dtype": "uint8" if input_layout == "uint8-nhwc" else "float32",
                                        "scale": out_q["scale"], "zero_point": out_q["zero_point"]}),
        "intengine.arch": str(model.get("arch", "")),
        "intengine.provenance": json.dumps(model["provenance"], sort_keys=True),
        "intengine.exact": json.dumps(_exact_params(model, tensors), sort_keys=True),
    }
    onnx.helper.set_model_props(onnx_model, meta)
    onnx.checker.check_model(onnx_model)
    return onnx_model


def _version() -> str:
    from intengine import __version__

    return __version__


def export_qdq(model_or_path, out_path, input_layout: str = "uint8-nhwc", weight_type: str = "int8") -> Path:
    """Write ``model_or_path`` (a model.int8 path or a ``(model, tensors)`` pair) as QDQ ONNX; returns the path.

    ``input_layout="uint8-nhwc"``: input ``input`` uint8 (N, H, W, C), output ``logits`` uint8;
    ``"float-nchw"``: input float32 (N, C, H, W) in [0, 1], output float32 logits.
    ``weight_type="uint8"`` stores every weight as ``w + 128`` with zero point 128 (the same numbers):
    ONNX Runtime's AVX2 u8 x s8 kernels saturate 16-bit pair sums (microsoft/onnxruntime#16105), its
    u8 x u8 kernels do not, so use it for ONNX Runtime on CPUs without AVX-512 VNNI.
    """
    import onnx

    from intengine import modelfile

    if isinstance(model_or_path, (tuple, list)):
        model, tensors = model_or_path
        where = "<model>"
    else:
        where = str(model_or_path)
        model, tensors = modelfile.read(model_or_path)
    shapes = modelfile.validate(model, tensors, where)  # per-sample activation shapes
    onnx.save(build_qdq(model, tensors, shapes, input_layout, weight_type), str(out_path))
    return Path(out_path)


def export_onnx(model_int8_path, onnx_path, input_layout: str = "uint8-nhwc", weight_type: str = "int8") -> Path:
    """Write the integer network of ``model_int8_path`` as a QDQ ONNX file (alias of :func:`export_qdq`)."""
    return export_qdq(model_int8_path, onnx_path, input_layout, weight_type)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model.int8 file")
    parser.add_argument("output", help="ONNX file to write")
    parser.add_argument("--input", choices=INPUT_LAYOUTS, default="uint8-nhwc", dest="input_layout",
                        help="graph input: uint8 NHWC pixels 0..255 with uint8 logits (default), or "
                             "float32 NCHW in [0, 1] with float32 logits")
    parser.add_argument("--weights", choices=WEIGHT_TYPES, default="int8", dest="weight_type",
                        help="int8 symmetric (default, the standard pattern) or uint8 with zero point 128 "
                             "(the same values; exact in ONNX Runtime on AVX2 CPUs without VNNI)")


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError:
        from intengine.errors import IntengineError

        raise IntengineError(f"export-onnx needs onnx: {ONNX_EXTRA}") from None
    export_qdq(args.model, args.output, args.input_layout, args.weight_type)
    print(f"wrote {args.output} (QDQ, opset {OPSET}, input {args.input_layout}, {args.weight_type} weights)")
    return 0
