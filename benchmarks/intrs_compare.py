"""IntRS's comparison on CIFAR-10: IntRS-quant vs FloatRS-fp vs FloatRS-quant (IntRS Table 2, Figure 3, Tables 4-5),
plus the shipped models' recipe (IntRS-quant + consistency regularization) as a fourth method.

One command, resumable (rerun it after an interruption: finished models and result rows are kept):

    python benchmarks/intrs_compare.py --reuse-intrs models      # what docs/results.md reports
    python benchmarks/intrs_compare.py --images 500 --n 100000    # the paper's N (about 10x the time per image)

For each sigma in {0.12, 0.25, 0.50, 1.00}, with the same ResNet-20, schedule (20 epochs: 14 float,
6 QAT with observers frozen for the last 2; float mode: 20 float epochs), data and seed:

* FloatRS-fp    ``intengine train --mode float``:  float32, continuous Gaussian noise (Cohen et al.);
                certified by :func:`export.floatrs.certify_float` (torch float32).
* IntRS-quant   ``intengine train --mode intrs``:  QAT, discrete Gaussian noise from the engine's sampler;
                certified by intengine (integer noise, integer certificate).
* FloatRS-quant ``intengine train --mode floatq``: QAT, continuous noise quantized to the input grid;
                certified by :func:`export.floatrs.certify_float_quant` (float noise, int8 engine).

* IntRS-quant + consistency ``intengine train --mode intrs --consistency``: the shipped models' recipe
                (``--recipe-epochs`` 30: 22 float, 8 QAT, 3 frozen; 2 noise copies, ``--recipe-lambda``
                Jeong & Shin's lambda for each sigma; ``--recipe-cutout`` 0, ``--recipe-trivial-augment``
                off, ``--recipe-ema`` 0; the shipped sigma 0.25 model's options are in its card: ``intengine info
                models/resnet20_sigma0.25.int8``);
                certified by intengine like IntRS-quant. ``--reuse-recipe DIR`` takes
                ``DIR/resnet20_sigma{s}.int8`` when its provenance shows exactly these options.

``--methods`` picks a subset (e.g. ``intrs-quant,intrs-consistency`` for the recipe's gain alone).
Every method certifies the same test images (every ``skip``-th of the test split) with the same
N0, N, alpha and seed. Then the mismatch grid: the IntRS-quant models trained at sigma 0.12 and
0.25 certified at every sigma (on the first ``--grid-images`` of those images).

Outputs under ``--out`` (default ``runs/intrs_compare``): ``models/``, ``logs/``, ``results/*.tsv``
(Cohen's format + counts), ``plots/sigma*.png`` and ``summary.md`` / ``summary.json`` (the tables).
``--reuse-intrs DIR`` takes ``DIR/resnet20_sigma{s}.int8`` instead of retraining IntRS-quant when the
file's provenance shows the same training options (the shipped models were made with exactly them).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ("floatrs-fp", "intrs-quant", "floatrs-quant", "intrs-consistency")
TRAIN_MODE = {"floatrs-fp": "float", "intrs-quant": "intrs", "floatrs-quant": "floatq", "intrs-consistency": "intrs"}
LABEL = {"floatrs-fp": "FloatRS-fp", "intrs-quant": "IntRS-quant", "floatrs-quant": "FloatRS-quant",
         "intrs-consistency": "IntRS-quant + consistency"}
SIGMAS = (0.12, 0.25, 0.50, 1.00)
GRID_TRAIN_SIGMAS = (0.12, 0.25)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
# IntRS (Lin et al., ICCV 2021) Table 2, CIFAR-10, certified accuracy at r = 0.25/0.5/0.75, sigma = 0.25
PAPER_SIGMA_025 = {"floatrs-fp": (0.62, 0.44, 0.27), "intrs-quant": (0.61, 0.42, 0.26),
                   "floatrs-quant": (0.59, 0.42, 0.23)}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def stag(sigma: float) -> str:
    return f"{sigma:.2f}"


def model_path(out: Path, method: str, sigma: float) -> Path:
    ext = "safetensors" if method == "floatrs-fp" else "int8"
    return out / "models" / f"{method}_sigma{stag(sigma)}.{ext}"


# ----------------------------------------------------------------------------- training

def _schedule(args, method: str) -> tuple[int, int, int]:
    """(epochs, QAT epochs, frozen-observer epochs) of ``method``."""
    if method == "intrs-consistency":
        return args.recipe_epochs, args.recipe_qat_epochs, args.recipe_freeze_epochs
    return args.epochs, args.qat_epochs, args.freeze_epochs


def _train_args(args, method: str, sigma: float, path: Path) -> list[str]:
    epochs, qat_epochs, freeze_epochs = _schedule(args, method)
    cmd = ["--data", str(args.data), "--arch", "resnet20", "--sigma", stag(sigma), "--epochs", str(epochs),
           "--out", str(path), "--seed", str(args.seed), "--mode", TRAIN_MODE[method], "--threads", str(args.threads)]
    if method != "floatrs-fp":
        cmd += ["--qat-epochs", str(qat_epochs), "--freeze-epochs", str(freeze_epochs)]
    if method == "intrs-consistency":
        cmd += ["--consistency"] + ([f"{args.recipe_lambda:g}"] if args.recipe_lambda is not None else [])
        if args.recipe_cutout:
            cmd += ["--cutout", str(args.recipe_cutout)]
        if args.recipe_trivial_augment:
            cmd += ["--trivial-augment"]
        if args.recipe_ema:
            cmd += ["--ema", f"{args.recipe_ema:g}"]
    return cmd


def _cutout_of(meta: dict) -> int:
    """The cutout square side a model was trained with (0: none; models from before --cutout have none)."""
    found = re.search(r"cutout (\d+)x", str(meta.get("augmentation", "")))
    return int(found.group(1)) if found else 0


def _ema_of(meta: dict) -> float:
    """The weight-average decay a model was trained with (0: none; models from before --ema have none)."""
    found = re.search(r"decay ([\d.e-]+)", str(meta.get("weight_average", "")))
    return float(found.group(1)) if found else 0.0


def _trivial_augment_of(meta: dict) -> bool:
    """Whether a model was trained with --trivial-augment (its card's augmentation line says so)."""
    return "TrivialAugment" in str(meta.get("augmentation", ""))


def _reusable(args, src: Path, sigma: float, method: str = "intrs-quant") -> str | None:
    """None if ``src`` was trained with this run's options for ``method``, else the reason it is not."""
    from export.train import CONSISTENCY_COPIES, CONSISTENCY_ETA, paper_lambda
    from intengine.engine import load_model

    if not src.is_file():
        return f"{src} not found"
    meta = load_model(src).metadata
    epochs, qat_epochs, freeze_epochs = _schedule(args, method)
    want = {"arch": "resnet20", "mode": "intrs", "epochs": epochs, "qat_epochs": qat_epochs,
            "frozen_observer_epochs": freeze_epochs, "seed": args.seed, "batch_size": 128, "lr": 0.1,
            "init": "random (seeded)"}
    if method == "intrs-consistency":
        lam = args.recipe_lambda if args.recipe_lambda is not None else paper_lambda(sigma)
        want.update(consistency_lambda=float(lam), noise_copies=CONSISTENCY_COPIES,
                    consistency_eta=CONSISTENCY_ETA)
    elif meta.get("consistency_lambda", 0.0) != 0.0 or meta.get("noise_copies", 1) != 1:
        return f"{src} was trained with consistency regularization"
    diff = [k for k, v in want.items() if meta.get(k) != v]
    recipe = method == "intrs-consistency"   # the plain methods train with none of the recipe's extras
    if _cutout_of(meta) != (args.recipe_cutout if recipe else 0):
        diff.append("cutout")
    if _trivial_augment_of(meta) != (args.recipe_trivial_augment if recipe else False):
        diff.append("trivial_augment")
    if _ema_of(meta) != (args.recipe_ema if recipe else 0.0):
        diff.append("ema")
    if f"--sigma {stag(sigma)} " not in meta.get("command", "") and f"--sigma {sigma} " not in meta.get("command", ""):
        diff.append("sigma")
    if Path(str(meta.get("dataset", "")).split(" from ")[-1]).name != Path(args.data).name:
        diff.append("dataset")
    return f"{src} differs in {', '.join(diff)}" if diff else None


def train_all(args, out: Path) -> None:
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for sigma in args.sigmas:
        for method in args.methods:
            path = model_path(out, method, sigma)
            if path.is_file():
                continue
            reuse = {"intrs-quant": args.reuse_intrs, "intrs-consistency": args.reuse_recipe}.get(method)
            if reuse:
                src = Path(reuse) / f"resnet20_sigma{stag(sigma)}.int8"
                why = _reusable(args, src, sigma, method)
                if why is None:
                    shutil.copyfile(src, path)
                    log(f"{LABEL[method]} sigma {stag(sigma)}: reused {src} (same training options)")
                    continue
                log(f"not reusing: {why}")
            cmd = [sys.executable, "-m", "export.cli_train"] + _train_args(args, method, sigma, path)
            ckpt = Path(str(path) + ".ckpt")
            if ckpt.is_file():
                cmd += ["--resume", str(ckpt)]
            log(f"training {LABEL[method]} sigma {stag(sigma)} -> {path.name}")
            t0 = time.time()
            with open(out / "logs" / f"train_{method}_sigma{stag(sigma)}.log", "a") as fh:
                fh.write("$ " + " ".join(cmd) + "\n")
                fh.flush()
                rc = subprocess.call(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
            if rc != 0 or not path.is_file():
                raise SystemExit(f"training failed (exit {rc}); see {out / 'logs'}")
            ckpt.unlink(missing_ok=True)
            log(f"  done in {(time.time() - t0) / 60:.1f} min")


# ----------------------------------------------------------------------------- certification

def _run_rows(out_tsv: Path, meta: dict, indices, y, certify_one) -> None:
    """Certify ``indices`` not yet in ``out_tsv`` (Cohen TSV + counts, fsync per row, resumable)."""
    from tqdm import tqdm

    from intengine.runs import append_rows, read_finished

    done = len(set(indices) & read_finished(out_tsv)) if out_tsv.is_file() and out_tsv.stat().st_size else 0
    tty = sys.stderr.isatty()
    bar = tqdm(total=len(indices), initial=done, desc=out_tsv.stem, unit="img", file=sys.stderr, disable=not tty)

    rows = [done]  # a disabled tqdm does not count, so count here

    def on_row(idx, label, result):
        rows[0] += 1
        bar.update(1)
        if not tty and rows[0] % 10 == 0:
            log(f"  {out_tsv.stem}: {rows[0]}/{len(indices)} images")

    with bar:
        append_rows(out_tsv, meta, indices, y, lambda idx, seed: certify_one(idx), on_row)


def certify_run(args, out: Path, method: str, train_sigma: float, cert_sigma: float, indices, x, y) -> Path:
    from intengine.datasets import arrays_sha256
    from intengine.runs import file_sha256

    name = f"{method}_train{stag(train_sigma)}_cert{stag(cert_sigma)}.tsv"
    out_tsv = out / "results" / name
    mpath = model_path(out, method, train_sigma)
    meta = {"model": str(mpath), "model_sha256": file_sha256(mpath), "data": str(Path(args.data).resolve()),
            "data_sha256": arrays_sha256(x, y), "split": "test", "skip": args.skip, "max": len(indices), "n0": args.n0, "n": args.n,
            "alpha": args.alpha, "sigma": cert_sigma, "sampler": method, "seed": args.seed}
    common = dict(sigma=cert_sigma, n0=args.n0, n=args.n, alpha=args.alpha, batch=args.batch, seed=args.seed)
    if method == "floatrs-fp":
        from export.floatrs import certify_float, load_float_baseline

        net, _ = load_float_baseline(mpath)
        one = lambda i: certify_float(net, x[i], image_index=int(i), **common)  # noqa: E731
    elif method == "floatrs-quant":
        from export.floatrs import certify_float_quant
        from intengine.engine import load_model

        model = load_model(mpath)
        one = lambda i: certify_float_quant(model, x[i], image_index=int(i), **common)  # noqa: E731
    else:
        from intengine.engine import load_model
        from intengine.smoothing import certify

        model = load_model(mpath)
        one = lambda i: certify(model, x[i], image_index=int(i), **common)  # noqa: E731
    t0 = time.time()
    _run_rows(out_tsv, meta, indices, y, one)
    if time.time() - t0 > 1:
        log(f"certified {name} in {(time.time() - t0) / 60:.1f} min")
    return out_tsv


def certify_all(args, out: Path) -> None:
    import numpy as np
    import torch

    from intengine.datasets import load_cifar10
    from intengine.runs import select_indices
    from intengine.smoothing import set_threads

    torch.set_num_threads(args.threads)
    set_threads(args.threads)
    x, y, _ = load_cifar10(args.data, "test")
    x = np.ascontiguousarray(x)
    indices = select_indices(len(x), args.skip, args.images)
    order = sorted(args.sigmas, key=lambda s: (s != 0.25, s))  # sigma 0.25 first: the paper's headline
    for sigma in order:
        for method in args.methods:
            certify_run(args, out, method, sigma, sigma, indices, x, y)
    grid_idx = indices[: args.grid_images]
    if not grid_idx or "intrs-quant" not in args.methods:
        return
    for train_sigma in [s for s in GRID_TRAIN_SIGMAS if s in args.sigmas]:
        for cert_sigma in args.sigmas:
            if cert_sigma != train_sigma:
                certify_run(args, out, "intrs-quant", train_sigma, cert_sigma, grid_idx, x, y)


# ----------------------------------------------------------------------------- report

def _summary(path: Path, keep=None) -> dict:
    import numpy as np

    from intengine.report import Results, read_results, summarize

    res = read_results(path)
    if keep is not None:
        m = np.isin(res.idx, np.asarray(sorted(keep)))
        res = Results(res.path, res.idx[m], res.label[m], res.predict[m], res.radius[m], res.correct[m])
    s = summarize(res, RADII)
    s["seconds_per_image"] = _mean_seconds(path, keep)
    return s


def _mean_seconds(path: Path, keep=None) -> float:
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    vals = [float(r["seconds"]) for r in rows if keep is None or int(r["idx"]) in keep]
    return sum(vals) / len(vals) if vals else 0.0


GAP_HEADER, GRID_HEADER = 5, 7   # lines of the gap and grid sections' headers


def _gap_line(sigma: float, label: str, s: dict, base: dict) -> str:
    """One row of differences in points (certified accuracy) and ACR, ``s`` minus ``base``."""
    d = [100 * (a - b) for a, b in zip(s["certified_accuracy"], base["certified_accuracy"])]
    return f"| {stag(sigma)} {label} | " + " | ".join(f"{v:+.1f}" for v in d) + f" | {s['acr'] - base['acr']:+.3f} |"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def report(args, out: Path) -> dict:
    from intengine.report import plot, read_results

    res_dir, plot_dir = out / "results", out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    summary = {"main": {}, "grid": {}, "settings": {
        "images": args.images, "skip": args.skip, "grid_images": args.grid_images, "n0": args.n0, "n": args.n,
        "alpha": args.alpha, "seed": args.seed, "epochs": args.epochs, "qat_epochs": args.qat_epochs,
        "freeze_epochs": args.freeze_epochs, "data": str(args.data),
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count()}}
    lines = ["## Certified accuracy (%) at l2 radius r (IntRS Table 2 layout)", "",
             f"N0 = {args.n0}, N = {args.n}, alpha = {args.alpha}, {args.images} test images (every "
             f"{args.skip}th), seed {args.seed}; certified = non-abstained images (IntRS eq. 9); "
             "ACR = average certified radius (0 for wrong or abstained).", "",
             "| sigma | method | " + " | ".join(f"r={r:g}" for r in RADII) + " | certified % | ACR | s/image |",
             "|---|---|" + "---:|" * (len(RADII) + 3)]
    gap_lines = ["", "## IntRS-quant minus FloatRS-fp, and FloatRS-quant minus FloatRS-fp (points)", "",
                 "| sigma | " + " | ".join(f"r={r:g}" for r in RADII) + " | ACR |",
                 "|---|" + "---:|" * (len(RADII) + 1)]
    recipe_lines = ["", "## The recipe's gain: IntRS-quant + consistency minus IntRS-quant (points)", "",
                    "| sigma | " + " | ".join(f"r={r:g}" for r in RADII) + " | ACR |",
                    "|---|" + "---:|" * (len(RADII) + 1)]
    for sigma in args.sigmas:
        per = {}
        for method in args.methods:
            p = res_dir / f"{method}_train{stag(sigma)}_cert{stag(sigma)}.tsv"
            if not p.is_file():
                continue
            s = _summary(p)
            per[method] = s
            summary["main"][f"{method}@{stag(sigma)}"] = s
            lines.append(f"| {stag(sigma)} | {LABEL[method]} (n={s['n']}) | "
                         + " | ".join(_pct(a) for a in s["certified_accuracy"])
                         + f" | {_pct(s['certified_rate'])} | {s['acr']:.3f} | {s['seconds_per_image']:.2f} |")
        if "floatrs-fp" in per:
            base = per["floatrs-fp"]
            for method in ("intrs-quant", "floatrs-quant"):
                if method in per:
                    gap_lines.append(_gap_line(sigma, LABEL[method], per[method], base))
        if "intrs-quant" in per and "intrs-consistency" in per:
            recipe_lines.append(_gap_line(sigma, LABEL["intrs-consistency"], per["intrs-consistency"],
                                          per["intrs-quant"]))
        if per:
            files = [res_dir / f"{m}_train{stag(sigma)}_cert{stag(sigma)}.tsv" for m in METHODS if m in per]
            plot([read_results(f) for f in files], plot_dir / f"sigma{stag(sigma)}.png",
                 labels=[f"{LABEL[m]} sigma={stag(sigma)}" for m in METHODS if m in per])
    gap_lines = gap_lines if len(gap_lines) > GAP_HEADER else []   # headers only: the methods were not run
    recipe_lines = recipe_lines if len(recipe_lines) > GAP_HEADER else []
    grid_lines = ["", "## Train sigma vs certify sigma, IntRS-quant (IntRS Tables 4-5 layout)", "",
                  f"First {args.grid_images} of the images above; certified accuracy (%) at r = 0 / 0.25 / 0.5 / "
                  "0.75 / 1.0, then ACR.", "",
                  "| train sigma | certify sigma | r=0 | r=0.25 | r=0.5 | r=0.75 | r=1.0 | ACR |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
    grid_train_sigmas = [s for s in GRID_TRAIN_SIGMAS if s in args.sigmas] if args.grid_images > 0 else []
    for ts in grid_train_sigmas:
        for cs in args.sigmas:
            p = res_dir / f"intrs-quant_train{stag(ts)}_cert{stag(cs)}.tsv"
            if not p.is_file():
                continue
            keep = set(read_results(p).idx.tolist()) if cs != ts else None
            if keep is None:  # the diagonal comes from the main run, restricted to the grid images
                from intengine.runs import select_indices

                keep = set(select_indices(10**9, args.skip, args.images)[: args.grid_images])
            s = _summary(p, keep)
            summary["grid"][f"{stag(ts)}->{stag(cs)}"] = s
            acc = s["certified_accuracy"]
            grid_lines.append(f"| {stag(ts)} | {stag(cs)} | " + " | ".join(_pct(a) for a in acc[:5])
                              + f" | {s['acr']:.3f} |")
    grid_lines = grid_lines if len(grid_lines) > GRID_HEADER else []
    text = "\n".join(lines + gap_lines + recipe_lines + grid_lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    print(text)
    return summary


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10_subset.npz"))
    ap.add_argument("--out", default=str(REPO / "runs" / "intrs_compare"))
    ap.add_argument("--sigmas", default="0.12,0.25,0.50,1.00", help="comma-separated noise levels")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--qat-epochs", type=int, default=6)
    ap.add_argument("--freeze-epochs", type=int, default=2)
    ap.add_argument("--recipe-epochs", type=int, default=30, help="IntRS-quant + consistency: all epochs")
    ap.add_argument("--recipe-qat-epochs", type=int, default=8)
    ap.add_argument("--recipe-freeze-epochs", type=int, default=3)
    ap.add_argument("--recipe-cutout", type=int, default=0, metavar="PIXELS",
                    help="IntRS-quant + consistency: cutout square side (the shipped sigma 0.25 model: 8)")
    ap.add_argument("--recipe-trivial-augment", action="store_true",
                    help="IntRS-quant + consistency: one TrivialAugment operation per training image")
    ap.add_argument("--recipe-ema", type=float, default=0.0, metavar="DECAY",
                    help="IntRS-quant + consistency: weight-average decay of the float phase (0: off)")
    ap.add_argument("--recipe-lambda", type=float, default=None, metavar="LAMBDA",
                    help="IntRS-quant + consistency: the consistency weight (default: the paper's for each sigma)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ", ".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=100, help="test images certified per (method, sigma)")
    ap.add_argument("--skip", type=int, default=None, help="every skip-th test image (default: spread over the split)")
    ap.add_argument("--grid-images", type=int, default=50, help="images per cell of the mismatch grid")
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--batch", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-intrs", default=None, metavar="DIR",
                    help="take IntRS-quant models from DIR/resnet20_sigma{s}.int8 when trained with the same options")
    ap.add_argument("--reuse-recipe", default=None, metavar="DIR",
                    help="take IntRS-quant + consistency models from DIR/resnet20_sigma{s}.int8 when trained with "
                         "the same options")
    ap.add_argument("--stage", choices=["all", "train", "certify", "report"], default="all")
    args = ap.parse_args(argv)
    args.sigmas = [float(s) for s in args.sigmas.split(",")]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        print(f"error: --methods takes a subset of {', '.join(METHODS)}, got {unknown or 'nothing'}", file=sys.stderr)
        return 2
    if not Path(args.data).exists():
        print(f"error: CIFAR-10 data not found at {args.data} (see ../shared/data/README)", file=sys.stderr)
        return 2
    if args.skip is None:
        from intengine.datasets import load_cifar10

        n_test = len(load_cifar10(args.data, "test")[1])
        args.skip = max(1, n_test // args.images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if args.stage in ("all", "train"):
        train_all(args, out)
    if args.stage in ("all", "certify"):
        certify_all(args, out)
    if args.stage in ("all", "report"):
        report(args, out)
    log(f"total {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
