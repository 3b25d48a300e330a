"""Write the model card (``models/<name>.md``) of a shipped model.int8 from its provenance and engine runs.

``python -m export.card models/resnet20_sigma0.25.int8 --data ../shared/data/cifar10_subset.npz
[--checkpoint models/resnet20_sigma0.25.int8.ckpt]``
measures the engine's own test accuracy (clean, and under one draw of the engine's discrete
Gaussian noise per image, clipped) and writes the card next to the model file. With the training
checkpoint (the torch QAT model the file was converted from) it also measures the agreement of
the engine with torch on the same inputs: top-1 and the uint8 logit codes.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np


def engine_accuracies(model, x, y, seed: int = 0, stream: int = 3) -> dict:
    clean = model.classify(x, "numba")
    noisy = model.classify(noisy_images(x, model.sigma, seed, stream), "numba")
    return {"clean": float((clean == y).mean()), "noisy": float((noisy == y).mean())}


ARCH_TEXT = {"resnet20": "ResNet-20 (CIFAR-10 layout", "resnet50": "ResNet-50 (ImageNet layout",
             "small": "a small CNN (8x8 digits"}


def noisy_images(x: np.ndarray, sigma: float, seed: int = 0, stream: int = 3) -> np.ndarray:
    """One draw of the engine's discrete Gaussian noise per image, clip(x + n, 0, 255), uint8."""
    from kernels.sampler import sample_discrete_gaussian, sigma_sq_from_sigma

    noise = sample_discrete_gaussian(sigma_sq_from_sigma(sigma), (len(x), x[0].size), seed, stream)
    return np.clip(x.reshape(len(x), -1).astype(np.int64) + noise, 0, 255).astype(np.uint8).reshape(x.shape)


def torch_agreement(model, checkpoint: str, x: np.ndarray, batch: int = 256) -> str:
    """The engine vs the torch QAT model of ``checkpoint`` on ``x`` clean and under one noise draw per image.

    The torch model runs in float64: in float32 (what QAT trains in) its convolution sums above
    2^24 are rounded, which moves a few percent of the logit codes by 1-2 LSB; in float64 it
    follows the integer network except where ``y / s_out`` is within rounding of a tie.
    """
    import copy

    import torch

    from export import models as fm
    from export import qat
    from export.train import clean_input

    state = torch.load(checkpoint, weights_only=True)
    if state.get("phase") != "qat":
        raise ValueError(f"{checkpoint} is not from the QAT phase (phase {state.get('phase')!r})")
    cfg = state["config"]
    net = qat.quantize_model(fm.build(cfg["arch"], len(model.class_names), x.shape[-1], x.shape[1]))
    net.load_state_dict(state["model"])
    net.eval()
    nets = {"float64": copy.deepcopy(net).double(), "float32": net}
    parts, f32 = [], []
    for name, xs in (("clean", x), ("under one noise draw per image", noisy_images(x, model.sigma))):
        got = model.forward(xs, "numba").astype(np.int64)
        diff = {}
        for dtype, n in nets.items():
            with torch.no_grad():
                ref = np.concatenate([n.logit_codes(clean_input(xs[i:i + batch]).to(getattr(torch, dtype))).numpy()
                                      for i in range(0, len(xs), batch)])
            diff[dtype] = (np.abs(got - ref), float((got.argmax(1) == ref.argmax(1)).mean()))
        d, top1 = diff["float64"]
        parts.append(f"{name}: top-1 agreement {100 * top1:.1f}%, uint8 logits differ by at most "
                     f"{int(d.max())} LSB ({100 * float((d > 0).mean()):.1f}% of logits differ)")
        d32, top32 = diff["float32"]
        f32.append(f"{100 * float((d32 > 0).mean()):.1f}% of logits, at most {int(d32.max())} LSB, top-1 "
                   f"{100 * top32:.1f}%")
    return (f"Agreement on the {len(x):,} test images (`python -m export.card ... --checkpoint`): intengine (numba) "
            f"vs the torch QAT model it was converted from, run in float64, " + "; ".join(parts) + ". "
            f"(Run in float32, the precision it trains in, torch rounds its sums (float32 is exact only to 2^24): "
            f"{f32[0]} clean; {f32[1]} noisy.)")


def card_text(path: Path, data: str | None, notes: str = "", checkpoint: str | None = None) -> str:
    from intengine.datasets import load_cifar10
    from intengine.engine import load_model

    model = load_model(path)
    p = model.metadata
    size = path.stat().st_size
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    recipe = ""
    if p.get("consistency_lambda", 0.0) > 0:
        recipe = (f", with consistency regularization (Jeong & Shin 2020: {p.get('noise_copies')} noise copies per "
                  f"image, lambda {p['consistency_lambda']:g}, eta {p.get('consistency_eta', 0.5):g})")
    lines = [f"# {path.stem}", "",
             f"{ARCH_TEXT.get(p.get('arch'), str(p.get('arch')) + ' (')}, {model.parameter_count():,} integer "
             f"parameters), int8 weights / uint8 activations, trained with IntRS-quant: quantization-aware training "
             f"with discrete Gaussian noise augmentation at sigma = {model.sigma:g} (sigma_int = "
             f"{255 * model.sigma:g} on the 0..255 grid), noise policy `clip(x + n, 0, 255)`{recipe}.", ""]
    if p.get("warning"):
        lines += [f"**WARNING: {p['warning']}**", ""]
    lines += ["| field | value |", "|---|---|",
             f"| file | `{path.name}`, {size:,} bytes, sha256 {sha}… |",
             f"| data | {p.get('dataset')}: {p.get('train_images')} training images, {p.get('test_images')} test images |",
             f"| epochs | {p.get('epochs')} ({p.get('float_epochs')} float with batch norm, {p.get('qat_epochs')} QAT, "
             f"observers frozen for the last {p.get('frozen_observer_epochs')}) |",
             f"| initialization | {p.get('init')} |",
             f"| seed | {p.get('seed')} |",
             f"| augmentation | {p.get('augmentation', 'random crop (zero padding), horizontal flip')}; SGD weight "
             f"decay {p.get('weight_decay', 5e-4):g} |",
             f"| weight average | {p.get('weight_average', 'none')} |",
             f"| noise | {p.get('noise')} |",
             f"| objective | {p.get('objective', 'cross-entropy under noise (1 noisy copy per image)')} |",
             f"| test accuracy, clean (torch QAT model) | {100 * p.get('test_acc_clean', float('nan')):.1f}% |",
             f"| test accuracy under noise, one draw per image (torch QAT model) | "
             f"{100 * p.get('test_acc_noisy', float('nan')):.1f}% |"]
    if data and Path(data).exists():
        x, y, _ = load_cifar10(data, "test")
        acc = engine_accuracies(model, x, y)
        lines += [f"| test accuracy, clean (intengine, numba) | {100 * acc['clean']:.1f}% |",
                  f"| test accuracy under noise, one draw per image (intengine) | {100 * acc['noisy']:.1f}% |"]
    minutes = p.get("train_seconds", 0) / 60
    lines += [f"| training time | {minutes:.1f} min on a 2-core CPU machine (torch {p.get('torch')}) |",
              "", "Command:", "", "```", p.get("command", "?"), "```", ""]
    if notes:
        lines += [notes, ""]
    if checkpoint and data and Path(data).exists():
        lines += [torch_agreement(model, checkpoint, x), ""]
    budget = f"{minutes:.0f} minutes" if minutes < 120 else f"{minutes / 60:.1f} hours"
    lines += ["These are accuracies of the base classifier (one noisy sample per image), not certified "
              "accuracies of the smoothed classifier. The subset has 5,438 training images (about a tenth "
              f"of CIFAR-10) and the training budget was {budget} of CPU, so expect far lower accuracy than the "
              "IntRS paper's models trained on 50k images.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.card")
    parser.add_argument("model")
    parser.add_argument("--data", default=os.environ.get("INTENGINE_DATA_FILE"))
    parser.add_argument("--notes", default="")
    parser.add_argument("--checkpoint", default=None,
                        help="the training checkpoint (QAT phase): adds the engine-vs-torch agreement")
    args = parser.parse_args(argv)
    path = Path(args.model)
    text = card_text(path, args.data, args.notes, args.checkpoint)
    path.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
