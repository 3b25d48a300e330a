"""The two float-noise baselines of IntRS, certified with Cohen et al.'s CERTIFY (torch / NumPy, not integer-only).

* **FloatRS-fp** (:func:`certify_float`): Cohen et al. as published -- a float32 torch model, the
  [0, 1] image plus continuous Gaussian noise ``sigma * z`` (no clipping), votes of the float model.
* **FloatRS-quant** (:func:`certify_float_quant`): an int8 model run by intengine, the noise again
  continuous Gaussian drawn in float, the noisy image then quantized to the model's uint8 input
  grid, ``clip(rint(v + 255 sigma z), 0, 255)`` (``rint``: round half to even; ties have
  probability 0 under continuous noise).

Both use CERTIFY's rule with Cohen et al.'s continuous-Gaussian theorem: if the smoothed classifier
``g(x) = argmax_c P[f(x + sigma z) = c]`` has ``P[f(x + sigma z) = A] >= pA_lower > 1/2`` then
``g(x + delta) = A`` for every real ``|delta|_2 < sigma PhiInverse(pA_lower)``.  For FloatRS-quant the
base classifier is ``f o quantize``, a deterministic function of ``x + sigma z``, so the same theorem
holds for it.  Radii are in pixel scale; ``radius_sq_int`` is the largest integer ``m < (255 R)^2``
(every integer perturbation with ``|delta|^2 <= m`` is inside the certified ball), so result files
have the same columns as the integer certificate's.

Noise is reproducible and independent of the batch size: the draws for (seed, stream, image, chunk
of ``CHUNK`` samples) come from their own counter-based generator.
"""
from __future__ import annotations

import math
import time

import numpy as np

from intengine.certificate import check_options, clopper_pearson_lower, radius_from_p
from intengine.smoothing import STREAM_ESTIMATION, STREAM_SELECTION, SmoothingResult, resolve_seed

CHUNK = 100  # samples per generator key; batch sizes are cut into whole chunks


def load_float_baseline(path):
    """(torch float32 model in eval mode, metadata) from a file written by ``convert.write_float_baseline``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from export import models as fm
    from intengine.errors import IntengineError

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if meta.get("format") != "intengine.float32-baseline":
        raise IntengineError(f"{path} is not a float32 baseline file (format {meta.get('format')!r})")
    names = json.loads(meta["class_names"])
    state = load_file(str(path))
    h, _w, c = json.loads(meta.get("input_shape", "[32, 32, 3]"))  # (H, W, C)
    net = fm.build(meta["arch"], len(names), c, h)
    missing, unexpected = net.load_state_dict(state, strict=False)
    # only the integer num_batches_tracked buffers are left out of the file
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise IntengineError(f"{path}: state dict does not match {meta['arch']} ({missing[:3]} {unexpected[:3]})")
    net.eval()
    return net, {"sigma": float(meta["sigma"]), "class_names": names, "arch": meta["arch"],
                 "provenance": json.loads(meta.get("provenance", "{}"))}


def radius_sq_int_below(radius: float) -> int:
    """Largest integer m with m < (255 radius)^2 (strictly, with a relative margin for float error)."""
    r2 = (255.0 * radius) ** 2 * (1.0 - 1e-12)
    return max(0, math.ceil(r2) - 1)


def _chunk_keys(seed: int, stream: int, image_index: int, start: int, count: int):
    """Generator seeds for the chunks covering samples [start, start + count); start % CHUNK == 0."""
    return [[seed, stream, image_index, c] for c in range(start // CHUNK, -(-(start + count) // CHUNK))]


def gaussian_noise(seed: int, stream: int, image_index: int, start: int, count: int, d: int) -> np.ndarray:
    """float32 (count, d) standard normal draws for samples [start, start + count) of one image and stream."""
    parts = [np.random.Generator(np.random.Philox(key)).standard_normal((CHUNK, d), dtype=np.float32)
             for key in _chunk_keys(seed, stream, image_index, start, count)]
    return np.concatenate(parts)[:count]


def _votes(classify, d: int, *, seed, stream, image_index, num, batch, num_classes):
    """Class counts of ``classify(z)`` over ``num`` draws z (B, d) of one image and stream."""
    counts = np.zeros(num_classes, dtype=np.int64)
    batch = max(CHUNK, (int(batch) // CHUNK) * CHUNK)
    for start in range(0, num, batch):
        b = min(batch, num - start)
        z = gaussian_noise(seed, stream, image_index, start, b, d)
        ids = np.asarray(classify(z), dtype=np.int64)
        counts += np.bincount(ids, minlength=num_classes)[:num_classes]
    return counts


def _certify(classify, x, num_classes, *, sigma, n0, n, alpha, batch, seed, image_index, name, backend):
    t0 = time.perf_counter()
    check_options(sigma=sigma, alpha=alpha, n0=n0, n=n)
    seed = resolve_seed(seed)
    kw = dict(seed=seed, image_index=int(image_index), batch=batch, num_classes=num_classes)
    counts0 = _votes(classify, x.size, stream=STREAM_SELECTION, num=int(n0), **kw)
    guess = int(np.argmax(counts0))
    counts1 = _votes(classify, x.size, stream=STREAM_ESTIMATION, num=int(n), **kw)
    n_a = int(counts1[guess])
    p_low = clopper_pearson_lower(n_a, int(n), float(alpha))
    abstain = not p_low > 0.5
    radius = 0.0 if abstain else radius_from_p(p_low, sigma)
    return SmoothingResult(
        mode="certify", label=None if abstain else guess, abstain=abstain, radius=radius,
        radius_sq_int=-1 if abstain else radius_sq_int_below(radius), count_top=n_a,
        counts_selection=[int(c) for c in counts0], counts_estimation=[int(c) for c in counts1], failed=0,
        n0=int(n0), n=int(n), alpha=float(alpha), sigma=float(sigma), sigma_sq_int="continuous",
        seed=seed, seconds=time.perf_counter() - t0, sampler=name, backend=backend, batch=int(batch),
        image_index=int(image_index), guess=guess, p_a_lower=p_low,
    )


def certify_float(net, x: np.ndarray, *, sigma: float, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                  batch: int = 400, seed: int | None = 0, image_index: int = 0,
                  channels_last: bool = True) -> SmoothingResult:
    """FloatRS-fp CERTIFY of the uint8 HWC image ``x`` with a float32 torch model (see module docstring)."""
    import torch

    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    base = torch.as_tensor(x.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()  # (C, H, W)
    h, w, c = x.shape

    def classify(z):
        noise = torch.from_numpy(z).view(-1, h, w, c).permute(0, 3, 1, 2)  # NHWC draws -> NCHW view
        inp = base.unsqueeze(0) + sigma * noise
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return net(inp).argmax(1).numpy()

    num_classes = int(net.fc.out_features) if hasattr(net, "fc") else 10
    return _certify(classify, x, num_classes, sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch, seed=seed,
                    image_index=image_index, name="float-gaussian", backend="torch-float32")


def quantize_noisy(x_flat_uint8: np.ndarray, z: np.ndarray, sigma: float) -> np.ndarray:
    """uint8 (B, D): clip(rint(x + 255 sigma z), 0, 255) -- continuous noise, then the model's input grid."""
    v = x_flat_uint8.astype(np.float32)[None, :] + np.float32(255.0 * sigma) * z
    np.rint(v, out=v)
    np.clip(v, 0.0, 255.0, out=v)
    return v.astype(np.uint8)


def certify_float_quant(model, x: np.ndarray, *, sigma: float, n0: int = 100, n: int = 100_000,
                        alpha: float = 0.001, batch: int = 400, seed: int | None = 0, image_index: int = 0,
                        backend: str = "numba") -> SmoothingResult:
    """FloatRS-quant CERTIFY of the uint8 HWC image ``x`` with an intengine model (see module docstring)."""
    shape = tuple(model.input_shape)
    x_flat = np.ascontiguousarray(x).reshape(-1)

    def classify(z):
        noisy = quantize_noisy(x_flat, z, sigma)
        return model.classify(noisy.reshape((-1,) + shape), backend=backend)

    return _certify(classify, x, int(model.num_classes), sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch,
                    seed=seed, image_index=image_index, name="float-gaussian-quantized", backend=backend)
