"""certify-dataset / predict-dataset commands: progress (a bar with total and ETA on a terminal,
one line per image otherwise), the final line or a JSON summary (``DatasetResult.to_dict()``)."""
from __future__ import annotations

import json
import sys


class _Progress:
    """on_start / on_row callbacks: tqdm on a terminal's stderr, else ``[k/total] idx ...`` lines."""

    def __init__(self, mode: str, bar: bool):
        self.mode, self.use_bar, self.bar, self.total, self.done = mode, bar, None, 0, 0

    def on_start(self, todo: int, already: int) -> None:
        self.total = todo
        if already:
            print(f"resuming: {already} images already done, {todo} to go", file=sys.stderr, flush=True)
        if self.use_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=todo, desc=f"{self.mode}", unit="img", file=sys.stderr, dynamic_ncols=True)

    def on_row(self, idx, label, res) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        pred = -1 if res.abstain else res.label
        radius = f" radius {res.radius:.4f}" if self.mode == "certify" else ""
        print(f"[{self.done}/{self.total}] idx {idx}: label {label} predict {pred}{radius} ({res.seconds:.1f} s)",
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args, model, mode: str, executor=None) -> int:
    from intengine.api import dataset_result
    from intengine.notices import compile_notice

    progress = _Progress(mode, bar=not args.no_progress and sys.stderr.isatty())
    common = dict(split=args.split, skip=args.skip, max_count=args.max_images, max_idx=args.max, n=args.n,
                  alpha=args.alpha, batch=args.batch, seed=args.seed, sigma=args.sigma, sampler=args.sampler,
                  backend=args.backend, on_row=progress.on_row, on_start=progress.on_start,
                  memory_budget=args.memory_budget)
    compile_notice(args.backend)
    try:
        if mode == "certify":
            from intengine.runs import certify_dataset

            summary = certify_dataset(model, args.model, args.data, args.out, n0=args.n0, executor=executor,
                                      **common)
        else:
            from intengine.predict_runs import predict_dataset

            summary = predict_dataset(model, args.model, args.data, args.out, **common)
    finally:
        progress.close()
    result = dataset_result(mode, summary)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        word = "certified" if mode == "certify" else "predicted"
        rate = result.done_now * 3600 / result.seconds if result.seconds > 0 else 0.0
        print(f"{result.out}: {result.done_now} images {word} now, {result.already_done} already done, "
              f"seed {result.seed}, {result.seconds:.1f} s ({rate:.0f} images/hour); "
              f"accuracy {100 * result.accuracy:.1f}% over {result.rows} images")
    return 0
