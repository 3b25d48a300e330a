"""Agreement tables for docs/onnx.md: engine vs ONNX Runtime / OpenVINO on the QDQ export, the round trip,
and an ONNX Runtime-quantized ResNet-20 imported with import-onnx.

    INTENGINE_DATA=../shared/data/cifar10_subset.npz python benchmarks/onnx_agreement.py

Reuses the tests' builders (tests/test_onnx.py, tests/test_onnx_import.py); every CIFAR-10 test image
of the subset, clean and under one draw of the engine's discrete Gaussian noise (clipped).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_onnx import MODEL, as_lsb, cifar_test, nchw_float, noisy, run_openvino, run_ort  # noqa: E402
from test_onnx_import import ort_quantized_resnet20  # noqa: E402

from export.onnx_export import export_qdq  # noqa: E402
from export.onnx_import import import_qdq  # noqa: E402
from intengine import modelfile  # noqa: E402
from intengine.engine import Model, load_model  # noqa: E402


def row(name, engine, out, model):
    lsb = as_lsb(out, model)
    diff = lsb - engine.astype(np.int64)
    share = {d: 100 * (diff == d).mean() for d in (-2, -1, 0, 1, 2)}
    dist = ", ".join(f"{d:+d}: {v:.2f}%" for d, v in share.items()) + f", |d|>2: {100 * (np.abs(diff) > 2).mean():.2f}%"
    agree = (lsb.argmax(1) == engine.argmax(1)).mean()
    print(f"| {name} | {100 * agree:.1f}% | {np.abs(diff).max()} | {np.abs(diff).mean():.3f} | {dist} |")


def main() -> int:
    x = cifar_test()
    model, _ = modelfile.read(MODEL)
    eng = load_model(MODEL)
    header = "| {} | top-1 agreement | max LSB | mean LSB | logit difference distribution |\n|---|---:|---:|---:|---|"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(header.format("export (ResNet-20 sigma 0.25), runtime, images"))
        for images, kind in ((x, "clean"), (noisy(x, model["sigma"]), "noisy")):
            engine = eng.forward(images, "numba")
            for layout in ("uint8-nhwc", "float-nchw"):
                for weights in ("int8", "uint8"):
                    path = export_qdq(MODEL, tmp / f"{layout}-{weights}.onnx", layout, weights)
                    feed = nchw_float(images) if layout == "float-nchw" else images
                    row(f"{layout} {weights} weights, ONNX Runtime, {kind}", engine, run_ort(path, feed), model)
                    row(f"{layout} {weights} weights, ONNX Runtime unfused, {kind}", engine,
                        run_ort(path, feed, basic=True), model)
                    row(f"{layout} {weights} weights, OpenVINO, {kind}", engine, run_openvino(path, feed), model)
        back = Model(*import_qdq(export_qdq(MODEL, tmp / "rt.onnx")))
        same = (back.classify(x) == eng.classify(x)).mean()
        print(f"\nround trip export -> import: identical classes on {100 * same:.1f}% of {len(x)} test images\n")
        print(header.format("ONNX Runtime quantize_static ResNet-20, session"))
        for reduce_range in (True, False):
            path = ort_quantized_resnet20(tmp, reduce_range)
            imported, tensors = import_qdq(path, sigma=0.25)
            engine = Model(imported, tensors).forward(x, "numba")
            for basic in (False, True):
                session = "unfused (ORT_ENABLE_BASIC)" if basic else "default (fused int8)"
                row(f"reduce_range={reduce_range}, {session}", engine, run_ort(path, nchw_float(x), basic), imported)
            row(f"reduce_range={reduce_range}, OpenVINO", engine, run_openvino(path, nchw_float(x)), imported)
    return 0


if __name__ == "__main__":
    sys.exit(main())
