"""The engine's fusions, on and off (numba backend): conv + residual add on ResNet-20's three residual-block
shapes, then whole forwards of a model.

    python benchmarks/fusion_speed.py [--batch 400] [--rounds 5] [--repeat 5] [--model models/resnet20_sigma0.25.int8]

Blocks: "separate": the engine's prepared conv2d, then its prepared add (two passes over the tensors);
"fused": ``conv2d.prepare_add`` (each conv output row added to the residual while it is in cache).
Network: the model's forward with ``fuse = "add"`` (conv + add only) and ``"all"`` (also activations stored
inside their readers' zero-point border, no padding copies: ``Model._prepared_calls``), each against the
same model with ``fuse = "none"`` (``INTENGINE_FUSE=none``). Both sides are first checked to give the same
bits. Rounds are interleaved; reported: microseconds per sample, the fastest call of each round: the
fastest overall and the median, and the median of the per-round ratios (the machine's drift cancels in a
round).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from kernel_speed import make_case  # noqa: E402

ADD = (100, 1500000000, -1, 7, 1300000000, 0, 128, 0, 255)  # a ResNet-20-like add: scales ~0.7 and ~0.6


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "models" /
                                           "resnet20_sigma0.25.int8"), help="network for the forward A/B ('' skips)")
    args = ap.parse_args(argv)
    ops = kernels.get_backend("numba")
    rng = np.random.default_rng(0)
    cases = []
    for size, channels in ((32, 16), (16, 32), (8, 64)):
        x, w, b, m, s, *_ = make_case(rng, args.batch, size, channels, channels, 3)
        conv_args = (w, b, 128, m, s, 100, 1, 1, 0, 255)
        residual = rng.integers(0, 256, (args.batch, size, size, channels), dtype=np.uint8)
        conv_out, add_out = np.empty_like(residual), np.empty_like(residual)
        conv = ops.conv2d.prepare(*conv_args, input_shape=x.shape[1:])
        add = ops.add_round_half_up.prepare(*ADD)
        fused = ops.conv2d.prepare_add(*conv_args, input_shape=x.shape[1:], add=ADD)
        want = add(conv(x, conv_out), residual, np.empty_like(residual)).copy()
        assert np.array_equal(fused(x, residual, conv_out, add_out), want), "fused and separate differ"
        runs = {"separate": lambda c=conv, a=add, x=x, r=residual, co=conv_out, ao=add_out: a(c(x, co), r, ao),
                "fused": lambda f=fused, x=x, r=residual, co=conv_out, ao=add_out: f(x, r, co, ao)}
        cases.append((f"{size}x{size}x{channels}", runs))
    if args.model:
        from intengine.engine import load_model

        x = rng.integers(0, 256, (args.batch,) + load_model(args.model).input_shape, dtype=np.uint8)
        want = None
        for level in ("add", "all"):  # each against fuse = "none" (what INTENGINE_FUSE=none sets)
            fused, separate = load_model(args.model), load_model(args.model)
            fused.fuse, separate.fuse = level, "none"
            want = separate.forward(x).copy() if want is None else want
            assert np.array_equal(fused.forward(x), want), f"fuse={level} and separate forwards differ"
            cases.append((f"{Path(args.model).name} forward, fuse={level}",
                          {"separate": lambda m=separate, x=x: m.forward(x),
                           "fused": lambda m=fused, x=x: m.forward(x)}))
    times: dict = {}
    for _ in range(args.rounds):
        for label, runs in cases:
            for name, fn in runs.items():
                fn()
                best = min(_timed(fn) for _ in range(args.repeat))
                times.setdefault((label, name), []).append(best / args.batch * 1e6)
    print(f"numba conv2d rung {kernels.numba_backend.op_conv2d.SELECTED}, batch {args.batch}; us/sample, "
          f"fastest per round")
    print("| case | separate, fastest / median | fused, fastest / median | fused / separate: fastest, median "
          "per-round ratio |\n|---|---:|---:|---:|")
    for label, _ in cases:
        sep, fus = np.array(times[(label, "separate")]), np.array(times[(label, "fused")])
        print(f"| {label} | {sep.min():.2f} / {np.median(sep):.2f} | {fus.min():.2f} / {np.median(fus):.2f} | "
              f"{fus.min() / sep.min():.3f}, {np.median(fus / sep):.3f} |")
    return 0


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    sys.exit(main())
