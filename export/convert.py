"""QAT model (export.qat.QResNet) -> model.int8 (see docs/model_format.md).

Integer parameters are derived with the same functions the fake-quant forward uses
(``qat.weight_qparams`` / ``qat.bias_qparams`` / ``ActQuant.qparams``), so the codes are identical:

* conv/linear: int8 OHWI weights, int32 bias at scale ``s_in * s_w[o]``,
  ``(M, shift)[o] = quantize_multipliers(s_in * s_w[o] / s_out)``;
* residual add: ``(M_a, shift_a) = quantize_multiplier(s_a / s_out)``, likewise for b;
* global average pool: output scale = input scale, ``(M, shift) = quantize_multiplier(1 / k^2)``.
"""
from __future__ import annotations

import numpy as np
import torch

from export import qat
from intengine import modelfile
from kernels.fixedpoint import quantize_multiplier, quantize_multipliers


class _Builder:
    def __init__(self):
        self.nodes: list[dict] = []
        self.tensors: dict[str, np.ndarray] = {}
        self.quant: dict[str, dict] = {}

    def act(self, name: str, scale: float, zp: int) -> tuple[str, float, int]:
        self.quant[name] = {"scale": float(scale), "zero_point": int(zp)}
        return name, float(scale), int(zp)

    def conv(self, name: str, m: qat.QConv, src: tuple[str, float, int], linear: bool = False):
        in_name, s_in, zp_in = src
        codes, w_scale = qat.weight_qparams(m.weight)
        bias = qat.bias_qparams(m.bias, s_in, w_scale)
        s_out, zp_out = m.out.qparams()
        act_min, act_max = m.out.act_range()
        mult, shift = quantize_multipliers((s_in * w_scale / s_out).numpy())
        w = codes.numpy().astype(np.int8)
        if not linear:
            w = np.ascontiguousarray(w.transpose(0, 2, 3, 1))  # OIHW -> OHWI
        self.tensors[f"{name}.weight"] = w
        self.tensors[f"{name}.bias"] = bias.numpy().astype(np.int32)
        self.tensors[f"{name}.output_multiplier"] = mult
        self.tensors[f"{name}.output_shift"] = shift
        attrs = {"input_zero_point": zp_in, "output_zero_point": zp_out, "act_min": act_min, "act_max": act_max}
        if not linear:
            attrs.update(stride=m.stride, padding=m.padding)
        self.nodes.append({
            "name": name, "op": "linear" if linear else "conv2d", "inputs": [in_name], "attrs": attrs,
            "tensors": {k: f"{name}.{k}" for k in ("weight", "bias", "output_multiplier", "output_shift")},
        })
        return self.act(name, s_out, zp_out)

    def add(self, name: str, m: qat.QAdd, a, b):
        s_out, zp_out = m.out.qparams()
        act_min, act_max = m.out.act_range()
        ma, sa = quantize_multiplier(a[1] / s_out)
        mb, sb = quantize_multiplier(b[1] / s_out)
        if abs(sa - sb) > 20:
            raise ValueError(f"{name}: input scales too different for add (shifts {sa}, {sb})")
        self.nodes.append({
            "name": name, "op": "add_round_half_up", "inputs": [a[0], b[0]], "tensors": {},
            "attrs": {"a_zero_point": a[2], "a_multiplier": ma, "a_shift": sa, "b_zero_point": b[2],
                      "b_multiplier": mb, "b_shift": sb, "output_zero_point": zp_out,
                      "act_min": act_min, "act_max": act_max},
        })
        return self.act(name, s_out, zp_out)


def build_graph(qnet: qat.QResNet) -> tuple[list[dict], dict[str, np.ndarray], dict[str, dict]]:
    """Nodes, tensors and activation quantization of ``qnet`` (same structure as its forward)."""
    qnet = qnet.eval()
    g = _Builder()
    h, w, c = qnet.input_shape
    with torch.no_grad():
        t = g.act("input", qat.INPUT_SCALE, qat.INPUT_ZERO_POINT)
        t = g.conv("stem", qnet.stem, t)
        size = (h + 2 * qnet.stem.padding - qnet.stem.weight.shape[2]) // qnet.stem.stride + 1
        if qnet.stem_pool:
            g.nodes.append({"name": "stem_pool", "op": "max_pool", "inputs": [t[0]], "tensors": {},
                            "attrs": {"kernel": 3, "stride": 2, "padding": 1}})
            t = g.act("stem_pool", t[1], t[2])
            size = (size + 2 - 3) // 2 + 1
        for i, stage in enumerate(qnet.stages):
            for j, block in enumerate(stage):
                prefix = f"s{i + 1}.b{j}"
                x = t
                for k, conv in enumerate(block.convs):
                    t = g.conv(f"{prefix}.conv{k + 1}", conv, t)
                    size = (size + 2 * conv.padding - conv.weight.shape[2]) // conv.stride + 1
                sc = x if block.shortcut is None else g.conv(f"{prefix}.shortcut", block.shortcut, x)
                t = g.add(f"{prefix}.add", block.add, t, sc)
        mult, shift = quantize_multiplier(1.0 / (size * size))
        g.nodes.append({"name": "pool", "op": "avg_pool_round_half_up", "inputs": [t[0]], "tensors": {},
                        "attrs": {"kernel": size, "stride": 1, "input_zero_point": t[2], "output_multiplier": mult,
                                  "output_shift": shift, "output_zero_point": t[2], "act_min": 0, "act_max": 255}})
        t = g.act("pool", t[1], t[2])
        g.conv("fc", qnet.fc, t, linear=True)
    return g.nodes, g.tensors, g.quant


def model_description(qnet: qat.QResNet, sigma: float, class_names, provenance: dict | None = None):
    """(model JSON object, tensors) for ``modelfile.write``."""
    nodes, tensors, quant = build_graph(qnet)
    h, w, c = qnet.input_shape
    num_classes = int(qnet.fc.weight.shape[0])
    class_names = [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes)]
    model = {
        "arch": qnet.arch,
        "input": {"name": "input", "shape": [int(h), int(w), int(c)], "dtype": "uint8",
                  "scale": qat.INPUT_SCALE, "zero_point": qat.INPUT_ZERO_POINT, "clip": "clip"},
        "output": "fc",
        "nodes": nodes,
        "quantization": quant,
        "num_classes": num_classes,
        "class_names": class_names,
        "sigma": float(sigma),
        "provenance": dict(provenance or {}),
    }
    return model, tensors


def write_model(qnet: qat.QResNet, path, sigma: float, class_names=None, provenance: dict | None = None) -> bytes:
    """Convert and write ``path``; returns the file bytes. The file is validated by reading it back."""
    model, tensors = model_description(qnet, sigma, class_names, provenance)
    data = modelfile.dumps(model, tensors)
    modelfile.loads(data, str(path))  # never ship a file the engine would reject
    with open(path, "wb") as f:
        f.write(data)
    return data


def write_float_baseline(net, path, sigma: float, class_names, provenance: dict) -> None:
    """Cohen et al.'s float32 baseline: a plain safetensors state dict (not a model.int8; torch only)."""
    import json

    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in net.state_dict().items() if v.is_floating_point()}
    meta = {"format": "intengine.float32-baseline", "arch": net.arch, "sigma": str(sigma),
            "input_shape": json.dumps(list(net.input_shape)),
            "class_names": json.dumps(list(class_names)), "provenance": json.dumps(provenance, sort_keys=True)}
    save_file(state, str(path), metadata=meta)
