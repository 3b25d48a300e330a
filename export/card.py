"""Write the model card (``models/<name>.md``) of a shipped model.int8 from its provenance and engine runs.

``python -m export.card models/resnet20_sigma0.25.int8 --data ../shared/data/cifar10_subset.npz``
measures the engine's own test accuracy (clean, and under one draw of the engine's discrete
Gaussian noise per image, clipped) and writes the card next to the model file.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np


def engine_accuracies(model, x, y, seed: int = 0, stream: int = 3) -> dict:
    from kernels.sampler import sample_discrete_gaussian, sigma_sq_from_sigma

    clean = model.classify(x, "numba")
    noise = sample_discrete_gaussian(sigma_sq_from_sigma(model.sigma), (len(x), x[0].size), seed, stream)
    noisy_x = np.clip(x.reshape(len(x), -1).astype(np.int64) + noise, 0, 255).astype(np.uint8).reshape(x.shape)
    noisy = model.classify(noisy_x, "numba")
    return {"clean": float((clean == y).mean()), "noisy": float((noisy == y).mean())}


def card_text(path: Path, data: str | None, notes: str = "") -> str:
    from intengine.datasets import load_cifar10
    from intengine.engine import load_model

    model = load_model(path)
    p = model.metadata
    size = path.stat().st_size
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    lines = [f"# {path.stem}", "",
             f"ResNet-20 (CIFAR-10 layout, {model.parameter_count():,} integer parameters), int8 weights / uint8 "
             f"activations, trained with IntRS-quant: quantization-aware training with discrete Gaussian noise "
             f"augmentation at sigma = {model.sigma:g} (sigma_int = {255 * model.sigma:g} on the 0..255 grid), "
             f"noise policy `clip(x + n, 0, 255)`.", ""]
    if p.get("warning"):
        lines += [f"**WARNING: {p['warning']}**", ""]
    lines += ["| field | value |", "|---|---|",
             f"| file | `{path.name}`, {size:,} bytes, sha256 {sha}… |",
             f"| data | {p.get('dataset')}: {p.get('train_images')} training images, {p.get('test_images')} test images |",
             f"| epochs | {p.get('epochs')} ({p.get('float_epochs')} float with batch norm, {p.get('qat_epochs')} QAT, "
             f"observers frozen for the last {p.get('frozen_observer_epochs')}) |",
             f"| initialization | {p.get('init')} |",
             f"| seed | {p.get('seed')} |",
             f"| noise | {p.get('noise')} |",
             f"| test accuracy, clean (torch QAT model) | {100 * p.get('test_acc_clean', float('nan')):.1f}% |",
             f"| test accuracy under noise, one draw per image (torch QAT model) | "
             f"{100 * p.get('test_acc_noisy', float('nan')):.1f}% |"]
    if data and Path(data).exists():
        x, y, _ = load_cifar10(data, "test")
        acc = engine_accuracies(model, x, y)
        lines += [f"| test accuracy, clean (intengine, numba) | {100 * acc['clean']:.1f}% |",
                  f"| test accuracy under noise, one draw per image (intengine) | {100 * acc['noisy']:.1f}% |"]
    lines += [f"| training time | {p.get('train_seconds', 0) / 60:.1f} min on 2 shared CPU cores (torch {p.get('torch')}) |",
              "", "Command:", "", "```", p.get("command", "?"), "```", ""]
    if notes:
        lines += [notes, ""]
    lines += ["These are accuracies of the base classifier (one noisy sample per image), not certified "
              "accuracies of the smoothed classifier. The subset has 5,438 training images (about a tenth "
              "of CIFAR-10) and the training budget was minutes, so expect far lower accuracy than the "
              "IntRS paper's models trained on 50k images.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.card")
    parser.add_argument("model")
    parser.add_argument("--data", default=os.environ.get("INTENGINE_DATA_FILE"))
    parser.add_argument("--notes", default="")
    args = parser.parse_args(argv)
    path = Path(args.model)
    text = card_text(path, args.data, args.notes)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
