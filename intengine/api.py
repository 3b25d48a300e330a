"""The Python API: load a model and an image, certify or predict, run a dataset.

A thin layer over :mod:`intengine.engine`, :mod:`intengine.images`, :mod:`intengine.smoothing`,
:mod:`intengine.runs` and :mod:`intengine.predict_runs`, with the CLI's defaults and the CLI's
``--json`` keys (``result.to_dict()``)::

    import intengine
    model = intengine.load_model("models/resnet20_sigma0.25.int8")
    res = intengine.certify(model, "examples/cat_chelsea.npy", n=10_000, seed=0)
    res.label, res.radius, res.to_dict()

Images: a ``.npy`` path, or an array -- uint8 0..255 or float [0, 1], HWC or CHW (a leading batch
axis of 1 is dropped); see :mod:`intengine.images`.  Errors are :class:`intengine.errors.IntengineError`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from intengine.errors import IntengineError

__all__ = ["load_model", "load_image", "certify", "predict", "certify_dataset", "predict_dataset",
           "DatasetResult"]


def load_model(path):
    """Load and validate a ``model.int8`` file; returns an :class:`intengine.engine.Model`."""
    from intengine.engine import load_model as _load

    return _load(path)


def _model(model):
    return load_model(model) if isinstance(model, (str, Path)) else model


def load_image(image, model=None) -> np.ndarray:
    """The uint8 HWC grid image for ``model`` from a ``.npy`` path or an array (uint8 or float [0, 1], HWC/CHW).

    Without ``model`` the layout is guessed: HWC when the last axis has 1 or 3 channels, else CHW.
    """
    from intengine.images import load_npy, to_grid

    name = Path(image).name if isinstance(image, (str, Path)) else "image"
    arr = load_npy(image) if isinstance(image, (str, Path)) else np.asarray(image)
    if model is not None:
        shape = _model(model).input_shape
    else:
        a = arr[0] if arr.ndim == 4 and arr.shape[0] == 1 else arr
        if a.ndim != 3:
            raise IntengineError(f"{name} has shape {arr.shape}; expected an HWC or CHW image")
        shape = a.shape if a.shape[-1] in (1, 3) else (a.shape[1], a.shape[2], a.shape[0])
    return to_grid(arr, shape, name=name)


def _set_threads(threads):
    from intengine.smoothing import set_threads

    set_threads(threads)


def certify(model, image, *, sigma: float | None = None, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            batch: int = 1000, seed: int | None = None, sampler: str = "table", backend: str = "numba",
            threads: int | None = None):
    """Cohen et al.'s CERTIFY: the smoothed prediction and its certified l2 radius (pixel scale).

    ``model``: a Model or a path; ``image``: see :func:`load_image`.  Returns a
    :class:`intengine.smoothing.SmoothingResult` (``label`` None = ABSTAIN, ``radius``,
    ``radius_sq_int``, ``to_dict()``); defaults as in Cohen et al. (sigma: the model's).
    """
    from intengine.smoothing import certify as _certify

    model = _model(model)
    _set_threads(threads)
    return _certify(model, load_image(image, model), sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch,
                    seed=seed, sampler=sampler, backend=backend)


def predict(model, image, *, sigma: float | None = None, n: int = 100_000, alpha: float = 0.001,
            batch: int = 1000, seed: int | None = None, sampler: str = "table", backend: str = "numba",
            threads: int | None = None):
    """Cohen et al.'s PREDICT (two-sided binomial test): a label or ABSTAIN (``label`` None)."""
    from intengine.smoothing import predict as _predict

    model = _model(model)
    _set_threads(threads)
    return _predict(model, load_image(image, model), sigma=sigma, n=n, alpha=alpha, batch=batch, seed=seed,
                    sampler=sampler, backend=backend)


@dataclass(repr=False)
class DatasetResult:
    """Outcome of :func:`certify_dataset` / :func:`predict_dataset`; ``to_dict()`` is the CLI's ``--json``.

    The accuracies are over every row of ``out`` (a resumed file included): ``accuracy`` is the
    smoothed classifier's (an ABSTAIN is never correct); for certify, ``certified_accuracy[k]`` is
    the fraction correct with radius >= ``radii[k]`` and ``acr`` the average certified radius.
    """

    mode: str
    out: str
    selected: int
    done_now: int
    already_done: int
    seed: int
    seconds: float
    rows: int
    accuracy: float
    abstain_rate: float
    radii: list[float] = field(default_factory=list)
    certified_accuracy: list[float] = field(default_factory=list)
    acr: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def __repr__(self) -> str:
        text = (f"DatasetResult({self.mode}: {self.out}, {self.rows} rows ({self.done_now} now, "
                f"{self.already_done} already done), accuracy {self.accuracy:.3f}, abstain {self.abstain_rate:.3f}")
        if self.acr is not None:
            cert = ", ".join(f"r={r:g}: {a:.3f}" for r, a in zip(self.radii, self.certified_accuracy))
            text += f", ACR {self.acr:.3f}, certified accuracy {cert}"
        return text + f", seed {self.seed}, {self.seconds:.1f} s)"


def dataset_result(mode: str, summary: dict) -> DatasetResult:
    """A :class:`DatasetResult` from a run's summary dict and the rows now in its output file."""
    out = summary["out"]
    done_now = summary["certified_now"] if mode == "certify" else summary["predicted_now"]
    common = dict(mode=mode, out=out, selected=summary["selected"], done_now=done_now,
                  already_done=summary["already_done"], seed=summary["seed"], seconds=summary["seconds"])
    if mode == "certify":
        from intengine.report import read_results, summarize

        s = summarize(read_results(out))
        return DatasetResult(**common, rows=s["n"], accuracy=s["certified_accuracy"][0],
                             abstain_rate=s["abstain_rate"], radii=s["radii"],
                             certified_accuracy=s["certified_accuracy"], acr=s["acr"])
    from intengine.predict_runs import read_predictions

    predicted, correct = read_predictions(out)
    rows = len(predicted)
    return DatasetResult(**common, rows=rows, accuracy=float(correct.mean()) if rows else 0.0,
                         abstain_rate=float((predicted == -1).mean()) if rows else 0.0)


def _dataset_args(model, data):
    """(model, model path, data path, images) for a dataset run; ``data``: path, "digits" or (x, y)."""
    model = _model(model)
    if isinstance(data, tuple):
        x, y = data
        return model, model.path, None, _arrays(x, y)
    return model, model.path, data, None


def _arrays(x, y):
    x = np.ascontiguousarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise IntengineError(f"dataset images must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    y = np.asarray(y)
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise IntengineError(f"dataset labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    return x, y.astype(np.int64)


def certify_dataset(model, data, out, *, split: str = "test", skip: int = 1, max: int | None = None,
                    max_images: int | None = None, sigma: float | None = None, n0: int = 100, n: int = 100_000,
                    alpha: float = 0.001, batch: int = 1000, seed: int | None = None, sampler: str = "table",
                    backend: str = "numba", threads: int | None = None, on_row=None) -> DatasetResult:
    """CERTIFY on images ``0, skip, 2 skip, ...`` below ``max`` (Cohen's --max), at most ``max_images`` of them.

    ``data``: a CIFAR-10 ``.npz`` / batches folder, ``"digits"``, or a tuple (uint8 NHWC images,
    labels).  Rows go to Cohen's TSV ``out`` (resumed when it exists, see :mod:`intengine.runs`);
    ``on_row(idx, label, result)`` is called after each row.
    """
    from intengine.runs import certify_dataset as _run

    model, model_path, data_path, images = _dataset_args(model, data)
    _set_threads(threads)
    summary = _run(model, model_path, data_path, out, split=split, skip=skip, max_count=max_images, max_idx=max,
                   n0=n0, n=n, alpha=alpha, batch=batch, seed=seed, sigma=sigma, sampler=sampler,
                   backend=backend, images=images, on_row=on_row)
    return dataset_result("certify", summary)


def predict_dataset(model, data, out, *, split: str = "test", skip: int = 1, max: int | None = None,
                    max_images: int | None = None, sigma: float | None = None, n: int = 100_000,
                    alpha: float = 0.001, batch: int = 1000, seed: int | None = None, sampler: str = "table",
                    backend: str = "numba", threads: int | None = None, on_row=None) -> DatasetResult:
    """PREDICT over a dataset into Cohen's predict TSV (``idx label predict correct time``); see certify_dataset."""
    from intengine.predict_runs import predict_dataset as _run

    model, model_path, data_path, images = _dataset_args(model, data)
    _set_threads(threads)
    summary = _run(model, model_path, data_path, out, split=split, skip=skip, max_count=max_images, max_idx=max,
                   n=n, alpha=alpha, batch=batch, seed=seed, sigma=sigma, sampler=sampler, backend=backend,
                   images=images, on_row=on_row)
    return dataset_result("predict", summary)
