"""PREDICT and CERTIFY of Cohen, Rosenfeld, Kolter (ICML 2019) over the integer engine.

CERTIFY(f, sigma, x, N0, N, alpha):
    counts0 <- votes of f on N0 noisy copies of x         (stream 0, "selection")
    cA      <- argmax counts0                              (ties -> lowest class id)
    counts  <- votes of f on N fresh noisy copies of x     (stream 1, "estimation")
    pA_lower <- one-sided Clopper-Pearson lower bound of counts[cA] / N at level alpha
    if pA_lower <= 1/2: ABSTAIN  else: return cA, radius sigma * PhiInverse(pA_lower)

PREDICT(f, sigma, x, N, alpha):
    counts <- votes of f on N noisy copies of x           (stream 0)
    nA, nB <- the two largest counts (cA = class of nA, ties -> lowest id)
    if two-sided binomial test p-value(nA, nA + nB, 1/2) > alpha: ABSTAIN  else: return cA

Noise: ``sampler.add_noise_clip`` gives ``clip(x + n, 0, 255)`` as uint8 with n drawn from
the discrete Gaussian N_Z(0, sigma_int^2) keyed by (seed, stream, image_index, sample_index,
coordinate), so results do not depend on the batch size or the thread count.

Table-sampler failures (a noisy sample with a coordinate in the failure bin): no vote in the
selection and estimation counts, i.e. "not the top class" in CERTIFY's estimate (counts are
then stochastically dominated by the exact sampler's, so the bound stays sound); in PREDICT
they are added to the runner-up count nB, which can only turn a prediction into ABSTAIN.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Callable

import numpy as np

from intengine.certificate import (
    check_options,
    clopper_pearson_lower,
    certificate_table,
    count_votes,
    lookup_radius_sq,
    predict_thresholds,
    radius_from_p,
    sigma_sq_int,
)
from intengine.errors import IntengineError

SAMPLERS = ("table", "cks")
STREAM_SELECTION = 0
STREAM_ESTIMATION = 1
STREAM_PREDICT = 0

Progress = Callable[[int, int], None]  # (samples done, samples total)


@dataclass
class SmoothingResult:
    """Outcome of :func:`certify` or :func:`predict` (see ``to_dict`` for the JSON form)."""

    mode: str                      # "certify" or "predict"
    label: int | None              # None = ABSTAIN
    abstain: bool
    radius: float | None           # pixel scale; 0.0 when abstaining; None for predict
    radius_sq_int: int | None      # table[nA]; -1 when abstaining; None for predict
    count_top: int                 # estimation count of the returned / guessed class
    counts_selection: list[int]
    counts_estimation: list[int]
    failed: int                    # noisy samples with a table-sampler failure (all streams)
    n0: int
    n: int
    alpha: float
    sigma: float
    sigma_sq_int: str              # exact integer-unit variance "num/den"
    seed: int
    seconds: float
    sampler: str
    backend: str
    batch: int
    image_index: int = 0
    class_name: str | None = None
    guess: int | None = None       # CERTIFY's selected class cA / PREDICT's top class
    p_a_lower: float | None = None # CERTIFY only
    count_runner_up: int | None = None  # PREDICT only (nB, failures included)
    p_value: float | None = None   # PREDICT only
    failed_selection: int = 0
    failed_estimation: int = 0
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        if self.abstain:
            what = "ABSTAIN"
        else:
            what = f"label={self.label}" + (f" ({self.class_name})" if self.class_name else "")
        if self.mode == "certify":
            what += f", radius={self.radius:.6f}, radius_sq_int={self.radius_sq_int}, pA_lower={self.p_a_lower:.6f}"
        else:
            what += f", p_value={self.p_value:.3g}"
        return (f"SmoothingResult({self.mode}: {what}, count_top={self.count_top}/{self.n}, sigma={self.sigma:g}, "
                f"alpha={self.alpha:g}, seed={self.seed}, {self.seconds:.2f} s)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        return d


# ---------------------------------------------------------------------------

_samplers: dict[tuple, object] = {}


def get_sampler(sigma_sq: Fraction, method: str):
    """``kernels.sampler.make_sampler(sigma_sq, method)``, built once per (sigma_sq, method)."""
    if method not in SAMPLERS:
        raise IntengineError(f"unknown sampler {method!r}; choose one of {', '.join(SAMPLERS)}")
    key = (Fraction(sigma_sq), method)
    s = _samplers.get(key)
    if s is None:
        from kernels.sampler import make_sampler

        try:
            s = make_sampler(Fraction(sigma_sq), method=method)
        except ValueError as exc:
            raise IntengineError(f"noise sigma_int^2 = {sigma_sq} not supported by the {method} sampler: {exc}") from None
        _samplers[key] = s
    return s


def resolve_seed(seed) -> int:
    """The given seed (an int in [0, 2^64)), or a fresh one from the OS when None (then reported)."""
    if seed is None:
        try:
            from kernels.sampler import resolve_seed as _resolve

            return int(_resolve(None))
        except ImportError:
            return int.from_bytes(os.urandom(8), "little")
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise IntengineError(f"seed must be an integer, got {seed!r}") from None
    if not 0 <= seed < 2**64:
        raise IntengineError(f"seed must be in [0, 2^64), got {seed}")
    return seed


def set_threads(threads: int | None) -> None:
    """Set the Numba thread count (None = leave Numba's default)."""
    if threads is None:
        return
    import numba

    if threads < 1:
        raise IntengineError(f"threads must be >= 1, got {threads}")
    numba.set_num_threads(min(int(threads), numba.config.NUMBA_NUM_THREADS))


def _check_image(model, x: np.ndarray) -> np.ndarray:
    shape = tuple(model.input_shape)
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8:
        raise IntengineError("image must be a uint8 array on the 0..255 grid (see intengine.images)")
    if x.shape != shape:
        raise IntengineError(f"image has shape {x.shape}, the model expects {shape} (HWC)")
    clip = getattr(model, "clip", "clip")
    if clip != "clip":
        raise IntengineError(f"model input mode {clip!r} is not supported (only 'clip')")
    return np.ascontiguousarray(x).reshape(-1)


def sample_counts(model, x_flat: np.ndarray, sampler, *, seed: int, stream: int, image_index: int,
                  num: int, batch: int, backend: str, progress: Progress | None = None,
                  done: int = 0, total: int | None = None) -> tuple[np.ndarray, int]:
    """Votes of the base classifier on ``num`` noisy copies: (counts int64 (K,), failed samples).

    Sample ``i`` (0 <= i < num) of ``stream`` is drawn at sample index ``i``; batches only
    change how the work is cut, never which draws are made.
    """
    shape = tuple(model.input_shape)
    d = x_flat.shape[0]
    counts = np.zeros(int(model.num_classes), dtype=np.int64)
    n_failed = 0
    b_max = max(1, min(int(batch), int(num)))
    out = np.empty((b_max, d), dtype=np.uint8)
    failed = np.zeros(b_max, dtype=np.uint8)
    for start in range(0, num, b_max):
        b = min(b_max, num - start)
        o = out[:b]
        f = failed[:b]
        f[:] = 0
        sampler.add_noise_clip(x_flat, seed, stream, image_index, start, o, f)
        ids = np.ascontiguousarray(model.classify(o.reshape((b,) + shape), backend=backend), dtype=np.int32)
        n_failed += int(count_votes(ids, f, counts))
        if progress is not None:
            progress(done + start + b, total if total is not None else num)
    return counts, n_failed


def _common(model, x, sigma, alpha, n0, n, batch, sampler_name, seed, memory_budget):
    from intengine.membudget import cap_batch

    sigma = float(model.sigma if sigma is None else sigma)
    check_options(sigma=sigma, alpha=alpha, n0=n0, n=n)
    if batch is None or int(batch) < 1:
        raise IntengineError(f"batch must be an integer >= 1, got {batch}")
    x_flat = _check_image(model, x)
    batch = cap_batch(model, int(batch), memory_budget)  # before any buffer is allocated
    sigma_sq = sigma_sq_int(sigma)
    sampler = get_sampler(sigma_sq, sampler_name)
    return sigma, x_flat, sigma_sq, sampler, resolve_seed(seed), batch


def _class_name(model, label):
    names = getattr(model, "class_names", None)
    if label is None or not names or label >= len(names):
        return None
    return str(names[label])


def certify(model, x: np.ndarray, *, sigma: float | None = None, n0: int = 100, n: int = 100_000,
            alpha: float = 0.001, batch: int = 1000, seed: int | None = None, sampler: str = "table",
            backend: str = "numba", image_index: int = 0, progress: Progress | None = None,
            memory_budget: int | None = None) -> SmoothingResult:
    """Cohen et al.'s CERTIFY on the uint8 HWC image ``x``; see the module docstring.

    ``batch`` is capped by ``memory_budget`` bytes (default 2 GiB, see :mod:`intengine.membudget`)."""
    t0 = time.perf_counter()
    sigma, x_flat, sigma_sq, smp, seed, batch = _common(model, x, sigma, alpha, n0, n, batch, sampler, seed,
                                                        memory_budget)
    table = certificate_table(int(n), float(alpha), sigma_sq)
    total = int(n0) + int(n)
    counts0, failed0 = sample_counts(model, x_flat, smp, seed=seed, stream=STREAM_SELECTION,
                                     image_index=image_index, num=int(n0), batch=batch,
                                     backend=backend, progress=progress, total=total)
    guess = int(np.argmax(counts0))  # ties -> lowest class id
    counts1, failed1 = sample_counts(model, x_flat, smp, seed=seed, stream=STREAM_ESTIMATION,
                                     image_index=image_index, num=int(n), batch=batch,
                                     backend=backend, progress=progress, done=int(n0), total=total)
    n_a = int(counts1[guess])  # failed samples are in no class: "not the top class"
    m = int(lookup_radius_sq(table, np.int64(n_a)))
    p_low = clopper_pearson_lower(n_a, int(n), float(alpha))
    abstain = m < 0
    label = None if abstain else guess
    radius = 0.0 if abstain else radius_from_p(p_low, sigma)
    return SmoothingResult(
        mode="certify", label=label, abstain=abstain, radius=radius, radius_sq_int=m,
        count_top=n_a, counts_selection=[int(c) for c in counts0],
        counts_estimation=[int(c) for c in counts1], failed=failed0 + failed1,
        n0=int(n0), n=int(n), alpha=float(alpha), sigma=sigma,
        sigma_sq_int=f"{sigma_sq.numerator}/{sigma_sq.denominator}", seed=seed,
        seconds=time.perf_counter() - t0, sampler=sampler, backend=backend, batch=int(batch),
        image_index=int(image_index), class_name=_class_name(model, label), guess=guess,
        p_a_lower=p_low, failed_selection=failed0, failed_estimation=failed1,
    )


def predict(model, x: np.ndarray, *, sigma: float | None = None, n: int = 100_000, alpha: float = 0.001,
            batch: int = 1000, seed: int | None = None, sampler: str = "table", backend: str = "numba",
            image_index: int = 0, progress: Progress | None = None,
            memory_budget: int | None = None) -> SmoothingResult:
    """Cohen et al.'s PREDICT on the uint8 HWC image ``x``; see the module docstring (``memory_budget``:
    as for :func:`certify`)."""
    t0 = time.perf_counter()
    sigma, x_flat, sigma_sq, smp, seed, batch = _common(model, x, sigma, alpha, 1, n, batch, sampler, seed,
                                                        memory_budget)
    thr = predict_thresholds(int(n), float(alpha))
    counts, failed = sample_counts(model, x_flat, smp, seed=seed, stream=STREAM_PREDICT,
                                   image_index=image_index, num=int(n), batch=batch,
                                   backend=backend, progress=progress)
    order = np.argsort(-counts, kind="stable")  # ties -> lowest class id first
    top = int(order[0])
    n_a = int(counts[top])
    n_b = (int(counts[order[1]]) if counts.shape[0] > 1 else 0) + failed
    # nA + nB <= N because failed samples carry no vote
    abstain = not (n_a >= int(thr[n_a + n_b]))
    from intengine.certificate import binomial_pvalue_two_sided

    label = None if abstain else top
    return SmoothingResult(
        mode="predict", label=label, abstain=abstain, radius=None, radius_sq_int=None,
        count_top=n_a, counts_selection=[], counts_estimation=[int(c) for c in counts],
        failed=failed, n0=0, n=int(n), alpha=float(alpha), sigma=sigma,
        sigma_sq_int=f"{sigma_sq.numerator}/{sigma_sq.denominator}", seed=seed,
        seconds=time.perf_counter() - t0, sampler=sampler, backend=backend, batch=int(batch),
        image_index=int(image_index), class_name=_class_name(model, label), guess=top,
        count_runner_up=n_b, p_value=binomial_pvalue_two_sided(n_a, n_b), failed_estimation=failed,
    )

