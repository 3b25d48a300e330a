"""TrivialAugment (Mueller & Hutter, ICCV 2021) on uint8 NHWC images, with Pillow's image operations.

Per image: one operation drawn uniformly from ``OPS``, one magnitude m drawn uniformly from
``{0, 1/30, ..., 1}``, and a random sign for the signed operations; no other parameter to tune. The
ranges are RandAugment's search space (Cubuk et al. 2020, as TrivialAugment's "RA" space), milder than
TrivialAugment's "wide" space, which was tuned for a 36M-parameter network: a 0.27M-parameter ResNet-20
that also sees sigma-scale noise underfits under the wide ranges sooner.

    identity
    shear_x / shear_y      affine shear, factor +-0.3 m
    translate_x / _y       +-0.45 m of the side (14 pixels at 32)
    rotate                 +-30 m degrees
    brightness / color / contrast / sharpness   enhance by 1 +- 0.9 m
    posterize              keep 8 - round(4 m) bits
    solarize               invert pixels >= 256 - round(256 m)  (m = 0: none)
    autocontrast, equalize

Geometric operations fill uncovered pixels with 0, the colour of the random crop's padding. All draws
come from the numpy ``rng`` given, so a training run's augmentation repeats from its seed.
"""
from __future__ import annotations

import numpy as np

NUM_BINS = 31   # magnitudes 0, 1/30, ..., 1 (torchvision's and the paper's bins)

OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
                    "contrast", "sharpness"})


def apply_op(image: np.ndarray, op: str, magnitude: float) -> np.ndarray:
    """``image`` (H, W, C) uint8 under ``op`` at signed ``magnitude`` in [-1, 1]; a new uint8 array."""
    if op == "identity":
        return image.copy()
    from PIL import Image, ImageEnhance, ImageOps

    h, w, c = image.shape
    pil = Image.fromarray(image[..., 0] if c == 1 else image)   # Pillow's grayscale mode "L" is 2-D
    m = float(magnitude)
    if op in ("shear_x", "shear_y", "translate_x", "translate_y"):
        # Image.transform's AFFINE data maps output (x, y) to input (a x + b y + c, d x + e y + f)
        a, b, c, d, e, f = 1.0, 0.0, 0.0, 0.0, 1.0, 0.0
        if op == "shear_x":
            b = 0.3 * m
        elif op == "shear_y":
            d = 0.3 * m
        elif op == "translate_x":
            c = 0.45 * m * w
        else:
            f = 0.45 * m * h
        out = pil.transform((w, h), Image.AFFINE, (a, b, c, d, e, f), resample=Image.NEAREST, fillcolor=0)
    elif op == "rotate":
        out = pil.rotate(30.0 * m, resample=Image.NEAREST, fillcolor=0)
    elif op in ("brightness", "color", "contrast", "sharpness"):
        enhancer = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
                    "contrast": ImageEnhance.Contrast, "sharpness": ImageEnhance.Sharpness}[op]
        out = enhancer(pil).enhance(1.0 + 0.9 * m)
    elif op == "posterize":
        out = ImageOps.posterize(pil, 8 - int(round(4 * abs(m))))
    elif op == "solarize":
        out = ImageOps.solarize(pil, 256 - int(round(256 * abs(m))))
    elif op == "autocontrast":
        out = ImageOps.autocontrast(pil)
    elif op == "equalize":
        out = ImageOps.equalize(pil)
    else:
        raise ValueError(f"unknown augmentation operation {op!r}; known: {', '.join(OPS)}")
    return np.asarray(out, dtype=np.uint8).reshape(h, w, -1)


def trivial_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random operation at one random magnitude per image of ``x`` (N, H, W, C) uint8."""
    n = len(x)
    ops = rng.integers(0, len(OPS), n)
    bins = rng.integers(0, NUM_BINS, n)
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    out = np.empty_like(x)
    for i in range(n):
        op = OPS[ops[i]]
        m = bins[i] / (NUM_BINS - 1) * (signs[i] if op in SIGNED else 1.0)
        out[i] = apply_op(x[i], op, m)
    return out
