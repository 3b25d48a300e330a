"""Where an intengine forward pass spends its time: per op, and per conv layer shape with GMAC/s.

    python benchmarks/profile_engine.py                                 # shipped ResNet-20, batch 400
    python benchmarks/profile_engine.py --model M.int8 --batch 100 --repeat 10

Wraps the backend's op functions with timers (the kernels themselves are untouched), runs one
warm-up forward, then ``--repeat`` timed forwards on random uint8 input; prints microseconds per
sample. Conv layers with the same shape are grouped; GMAC/s counts multiply-accumulates of the
convolution only (padding and the epilogue are inside the timed call). The engine's prepared calls are
timed; its conv + residual add fusion (``conv2d.prepare_add``) is left off so that each op has its own time
(``benchmarks/fusion_speed.py`` measures what the fusion saves).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "models" / "resnet20_sigma0.25.int8"))
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="numba")
    args = ap.parse_args(argv)

    from kernels import get_backend
    from intengine.engine import load_model
    from intengine.smoothing import set_threads

    set_threads(args.threads)
    model = load_model(args.model)
    ops = get_backend(args.backend)
    x = np.random.default_rng(0).integers(0, 256, (args.batch,) + model.input_shape, dtype=np.uint8)
    model.classify(x, backend=args.backend)  # compile, pack weights, size the buffers

    per_op: dict[str, float] = defaultdict(float)
    per_conv: dict[tuple, list] = defaultdict(lambda: [0.0, 0, 0])  # seconds, calls, MACs per call
    originals = {name: getattr(ops, name) for name in ("conv2d", "linear", "add_round_half_up",
                                                        "avg_pool_round_half_up", "max_pool", "argmax")}

    def record(name, dt, x, w, stride, out):
        per_op[name] += dt
        if name == "conv2d":
            _, oh, ow, o = out.shape
            rec = per_conv[(x.shape[1:], tuple(w.shape[:3]), stride)]
            rec[0] += dt
            rec[1] += 1
            rec[2] = out.shape[0] * oh * ow * o * w.shape[1] * w.shape[2] * w.shape[3]

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            record(name, time.perf_counter() - t0, a[0], a[1] if name == "conv2d" else None,
                   a[7] if name == "conv2d" else None, out)
            return out

        prepare = getattr(fn, "prepare", None)
        if prepare is not None:  # the engine runs conv2d and add through prepared calls: time those
            def timed_prepare(*pa, **pk):
                run = prepare(*pa, **pk)

                def timed_run(*ins):
                    t0 = time.perf_counter()
                    out = run(*ins)
                    record(name, time.perf_counter() - t0, ins[0], pa[0] if name == "conv2d" else None,
                           pa[6] if name == "conv2d" else None, out)
                    return out
                return timed_run
            wrapper.prepare = timed_prepare
        return wrapper

    for name, fn in originals.items():
        setattr(ops, name, timed(name, fn))
    try:
        model = load_model(args.model)  # a fresh model: its prepared calls are made from the timed ops
        model.classify(x, backend=args.backend)
        per_op.clear()
        per_conv.clear()
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            model.classify(x, backend=args.backend)
        total = time.perf_counter() - t0
    finally:
        for name, fn in originals.items():
            setattr(ops, name, fn)

    scale = 1e6 / (args.repeat * args.batch)
    print(f"{Path(args.model).name}  backend={args.backend}  batch={args.batch}  threads={args.threads}  "
          f"repeat={args.repeat}")
    print(f"forward + argmax: {total * scale:.1f} us/sample")
    print("\n| op | us / sample | share |\n|---|---:|---:|")
    for name, sec in sorted(per_op.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {sec * scale:.1f} | {100 * sec / total:.0f}% |")
    print("\n| conv input (H,W,C) | weight (O,KH,KW) | stride | layers | us / sample | GMAC/s |\n"
          "|---|---|---:|---:|---:|---:|")
    for (shape, wshape, stride), (sec, calls, macs) in sorted(per_conv.items(), key=lambda kv: -kv[1][0]):
        layers = calls // args.repeat
        print(f"| {shape} | {wshape} | {stride} | {layers} | {sec * scale:.1f} | {macs * calls / sec / 1e9:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
