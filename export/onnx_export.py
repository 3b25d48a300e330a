"""model.int8 -> ONNX with standard quantized operators, so ONNX Runtime can check the engine.

Mapping (activations NCHW inside the ONNX graph; the graph input is uint8 NHWC like the engine's):

* conv2d            -> QLinearConv (int8 per-channel weights, int32 bias) [+ Clip(act_min, act_max)]
* linear            -> Transpose to NHWC, Reshape to (N, K, 1, 1), 1x1 QLinearConv, Reshape (N, O)
* add_round_half_up -> com.microsoft QLinearAdd [+ Clip]
* avg_pool (global) -> com.microsoft QLinearGlobalAveragePool; other windows -> QLinearAveragePool
* max_pool          -> MaxPool (uint8)

ONNX quantized operators carry float scales: activation scales come from the model's
``quantization`` table, and each weight scale is chosen so that ``s_in * s_w[o] / s_out`` equals the
engine's integer multiplier ``M * 2^shift / 2^31`` (up to float32). ONNX Runtime requantizes in
float32 and rounds half to even where the engine rounds half up with an exact Q0.31 product, so a
layer can differ by 1 LSB on near-ties; the tests state the tolerance measured on whole networks.
"""
from __future__ import annotations

import argparse

import numpy as np


def _effective(mult, shift) -> np.ndarray:
    m = np.asarray(mult, dtype=np.float64) * np.exp2(np.asarray(shift, dtype=np.float64) - 31)
    return np.maximum(m, 1e-30)


def build_onnx(model, tensors):
    """Return an onnx.ModelProto for a validated (model description, tensors) pair."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    q = model["quantization"]
    inits, nodes = [], []

    seen = set()

    def const(name, array):
        if name not in seen:
            seen.add(name)
            inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def scalar_q(act):
        s = const(f"{act}/scale", np.array(q[act]["scale"], dtype=np.float32))
        z = const(f"{act}/zp", np.array(q[act]["zero_point"], dtype=np.uint8))
        return s, z

    def clip(src, act_min, act_max, name):
        if act_min == 0 and act_max == 255:
            return src
        lo = const(f"{name}/clip_min", np.array(act_min, dtype=np.uint8))
        hi = const(f"{name}/clip_max", np.array(act_max, dtype=np.uint8))
        nodes.append(helper.make_node("Clip", [src, lo, hi], [f"{name}/clipped"]))
        return f"{name}/clipped"

    h, w, c = model["input"]["shape"]
    graph_in = helper.make_tensor_value_info("input", TensorProto.UINT8, ["N", h, w, c])
    nodes.append(helper.make_node("Transpose", ["input"], ["input/nchw"], perm=[0, 3, 1, 2]))
    produced = {"input": "input/nchw"}
    for node in model["nodes"]:
        name, op, a = node["name"], node["op"], node["attrs"]
        t = {k: tensors[v] for k, v in node["tensors"].items()}
        src = produced[node["inputs"][0]]
        src_act = node["inputs"][0]
        if op in ("conv2d", "linear"):
            weight = t["weight"]
            o = weight.shape[0]
            if op == "conv2d":
                w_onnx = np.ascontiguousarray(weight.transpose(0, 3, 1, 2))  # OHWI -> OIHW
                kh, kw = weight.shape[1:3]
                attrs = {"strides": [a["stride"]] * 2, "pads": [a["padding"]] * 4, "kernel_shape": [kh, kw]}
            else:
                nodes.append(helper.make_node("Transpose", [src], [f"{name}/nhwc"], perm=[0, 2, 3, 1]))
                shape = const(f"{name}/shape_in", np.array([0, -1, 1, 1], dtype=np.int64))
                nodes.append(helper.make_node("Reshape", [f"{name}/nhwc", shape], [f"{name}/flat"]))
                src = f"{name}/flat"
                w_onnx = weight.reshape(o, -1, 1, 1)
                attrs = {"kernel_shape": [1, 1]}
            s_in, s_out = q[src_act]["scale"], q[name]["scale"]
            w_scale = (_effective(t["output_multiplier"], t["output_shift"]) * s_out / s_in).astype(np.float32)
            xs, xz = scalar_q(src_act)
            ys, yz = scalar_q(name)
            ins = [src, xs, xz, const(f"{name}/weight", w_onnx), const(f"{name}/w_scale", w_scale),
                   const(f"{name}/w_zp", np.zeros(o, dtype=np.int8)), ys, yz, const(f"{name}/bias", t["bias"])]
            nodes.append(helper.make_node("QLinearConv", ins, [f"{name}/conv"], **attrs))
            out = clip(f"{name}/conv", a["act_min"], a["act_max"], name)
            if op == "linear":
                shape = const(f"{name}/shape_out", np.array([0, -1], dtype=np.int64))
                nodes.append(helper.make_node("Reshape", [out, shape], [f"{name}/logits"]))
                out = f"{name}/logits"
        elif op == "add_round_half_up":
            b_act = node["inputs"][1]
            ins = [src, *scalar_q(src_act), produced[b_act], *scalar_q(b_act), *scalar_q(name)]
            nodes.append(helper.make_node("QLinearAdd", ins, [f"{name}/add"], domain="com.microsoft"))
            out = clip(f"{name}/add", a["act_min"], a["act_max"], name)
        elif op == "avg_pool_round_half_up":
            ins = [src, *scalar_q(src_act), *scalar_q(name)]
            nodes.append(helper.make_node("QLinearGlobalAveragePool", ins, [f"{name}/pool"],
                                          domain="com.microsoft", channels_last=0))
            out = clip(f"{name}/pool", a["act_min"], a["act_max"], name)
        elif op == "max_pool":
            k, s, p = a["kernel"], a["stride"], a["padding"]
            nodes.append(helper.make_node("MaxPool", [src], [f"{name}/pool"], kernel_shape=[k, k],
                                          strides=[s, s], pads=[p] * 4))
            out = f"{name}/pool"
        else:  # pragma: no cover - validated models hold no other op
            raise ValueError(op)
        produced[name] = out
    nodes.append(helper.make_node("Identity", [produced[model["output"]]], ["logits"]))
    graph_out = helper.make_tensor_value_info("logits", TensorProto.UINT8, ["N", model["num_classes"]])
    graph = helper.make_graph(nodes, "intengine", [graph_in], [graph_out], initializer=inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                         helper.make_opsetid("com.microsoft", 1)],
                                   producer_name="intengine")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export_onnx(model_int8_path, onnx_path) -> None:
    """Write the integer network of ``model_int8_path`` as an ONNX file."""
    import onnx

    from intengine import modelfile

    model, tensors = modelfile.read(model_int8_path)
    shapes = modelfile.validate(model, tensors, str(model_int8_path))  # per-sample activation shapes
    for node in model["nodes"]:
        src = shapes[node["inputs"][0]]
        if node["op"] == "avg_pool_round_half_up" and not (node["attrs"]["kernel"] == src[0] == src[1]):
            from intengine.errors import IntengineError

            raise IntengineError(f"export-onnx supports global average pooling only (node {node['name']!r})")
    onnx.save(build_onnx(model, tensors), str(onnx_path))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model.int8 file")
    parser.add_argument("output", help="ONNX file to write")


def run(args: argparse.Namespace) -> int:
    try:
        import onnx  # noqa: F401
    except ImportError:
        from intengine.errors import IntengineError

        raise IntengineError("export-onnx needs onnx: pip install 'intengine[torch]'") from None
    export_onnx(args.model, args.output)
    print(f"wrote {args.output}")
    return 0
