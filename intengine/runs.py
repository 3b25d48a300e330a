"""certify-dataset: CERTIFY over a dataset, Cohen et al.'s TSV plus raw counts, resumable.

Output ``results.tsv`` (tab-separated, one header line).  The first six columns are exactly
Cohen et al.'s ``idx label predict radius correct time`` (predict = -1 for ABSTAIN, radius 0
then, correct = int(predict == label), time = ``str(datetime.timedelta)``), so their analysis
scripts work; further columns carry the integer certificate and the raw counts:

    radius_sq_int  count_top  failed  seconds  counts_selection  counts_estimation

(counts as comma-separated integers, one per class).  Each row is written, flushed and
fsync'ed as soon as its image is done; rows are in completion order (``idx`` order in a serial
run, any order on a cluster, see :mod:`intengine.cluster`), and readers never rely on the order.
One run at a time writes a file (:mod:`intengine.outlock`); a second run on it is refused.

A sidecar ``results.tsv.meta.json`` records the options that determine the results (model
file hash and tensor digest, data file and the sha256 of the selected split's arrays, split,
skip, n0, n, alpha, sigma, sampler, seed).  Rerunning the same
command resumes: finished ``idx`` are read back and skipped, a partial last line (process
killed mid-write) is cut off, and a run whose options differ is refused.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from intengine.errors import IntengineError

COHEN_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time"]
EXTRA_COLUMNS = ["radius_sq_int", "count_top", "failed", "seconds", "counts_selection", "counts_estimation"]
COLUMNS = COHEN_COLUMNS + EXTRA_COLUMNS
HEADER = "\t".join(COLUMNS)
META_KIND = "intengine.certify_dataset"
# Options that must match for a resume (max may change: it only truncates the index list).
RESUME_KEYS = ("model_sha256", "data", "data_sha256", "split", "skip", "n0", "n", "alpha", "sigma", "sampler", "seed")


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def select_indices(num_images: int, skip: int = 1, max_count: int | None = None,
                   max_idx: int | None = None) -> list[int]:
    """Indices 0, skip, 2*skip, ... below num_images and below max_idx (Cohen's --max), at most max_count."""
    if skip < 1:
        raise IntengineError(f"--skip must be >= 1, got {skip}")
    if max_count is not None and max_count < 0:
        raise IntengineError(f"--max-images must be >= 0, got {max_count}")
    if max_idx is not None and max_idx < 0:
        raise IntengineError(f"--max must be >= 0, got {max_idx}")
    idx = list(range(0, num_images if max_idx is None else min(num_images, max_idx), skip))
    return idx if max_count is None else idx[:max_count]


def format_row(idx: int, label: int, result) -> str:
    """One TSV line (with newline) for a CERTIFY result; Cohen's six columns first."""
    predict = -1 if result.abstain else int(result.label)
    radius = 0.0 if result.abstain else float(result.radius)
    correct = int(predict == int(label))
    elapsed = str(datetime.timedelta(seconds=float(result.seconds)))
    fields = [
        str(int(idx)), str(int(label)), str(predict), f"{radius:.6f}", str(correct), elapsed,
        str(int(result.radius_sq_int)), str(int(result.count_top)), str(int(result.failed)),
        f"{float(result.seconds):.4f}",
        ",".join(str(int(c)) for c in result.counts_selection),
        ",".join(str(int(c)) for c in result.counts_estimation),
    ]
    return "\t".join(fields) + "\n"


@dataclass(frozen=True)
class Layout:
    """A results file kind: its sidecar ``kind``, its columns (the first ``checked`` must match on resume)."""

    kind: str
    columns: tuple
    checked: int
    format_row: Callable


CERTIFY_LAYOUT = Layout(META_KIND, tuple(COLUMNS), len(COHEN_COLUMNS), format_row)


def read_finished(out: Path, layout: Layout = CERTIFY_LAYOUT) -> set[int]:
    """idx of complete rows in ``out``; cuts off a partial last line in place. Raises on a foreign file."""
    with open(out, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1  # keep everything up to the last complete line
            fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())
            data = data[:cut]
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        return set()
    if tuple(lines[0].split("\t")[: layout.checked]) != layout.columns[: layout.checked]:
        raise IntengineError(f"{out} exists and is not an intengine results file (unexpected header)")
    done: set[int] = set()
    for k, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != len(layout.columns):
            raise IntengineError(f"{out}: line {k} is malformed ({len(parts)} columns, expected {len(layout.columns)})")
        try:
            done.add(int(parts[0]))
        except ValueError:
            raise IntengineError(f"{out}: line {k} has a non-integer idx {parts[0]!r}") from None
    return done


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, interrupted: leave no temp file behind
        tmp.unlink(missing_ok=True)
        raise


def prepare_output(out: Path, meta: dict, layout: Layout = CERTIFY_LAYOUT) -> tuple[set[int], dict]:
    """Create or resume ``out``; returns (finished idx, the metadata in force).

    ``meta['seed']`` may be None (no --seed given): a fresh run then draws one and stores it, a
    resumed run takes the stored one.  Any other difference in RESUME_KEYS is refused.
    """
    from intengine.safeio import check_regular_or_absent

    mp = meta_path(out)
    out_exists = check_regular_or_absent(out, "results file")
    check_regular_or_absent(mp, "results sidecar")
    if out_exists and out.stat().st_size > 0:
        if not mp.exists():
            raise IntengineError(f"{out} exists but {mp.name} is missing; refusing to append (use another --out)")
        try:
            stored = json.loads(mp.read_text())
        except (OSError, ValueError):
            raise IntengineError(f"{mp} is not readable JSON; refusing to resume") from None
        if stored.get("kind") != layout.kind:
            raise IntengineError(f"{mp} is not an {layout.kind} sidecar")
        wanted = dict(meta)
        if wanted.get("seed") is None:
            wanted["seed"] = stored.get("seed")
        diff = [k for k in RESUME_KEYS if stored.get(k) != wanted.get(k)]
        if "data_sha256" in diff and stored.get("data_sha256") is None:
            raise IntengineError(f"{mp.name} records no data hash (written by an older intengine); refusing to "
                                 "resume on data that cannot be checked, use another --out")
        if "data_sha256" in diff:
            raise IntengineError(f"{out}: the data differs from the data this run started on (sha256 of the "
                                 f"selected split {str(stored.get('data_sha256'))[:12]}... -> "
                                 f"{str(wanted.get('data_sha256'))[:12]}...); refusing to resume, use another --out")
        if diff:
            shown = ", ".join(f"{k}: {stored.get(k)!r} -> {wanted.get(k)!r}" for k in diff)
            raise IntengineError(f"{out} was written with different options ({shown}); use another --out")
        finished = read_finished(out, layout)
        if out.stat().st_size == 0:  # killed while writing the header
            with open(out, "w") as fh:
                fh.write("\t".join(layout.columns) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        if stored.get("max") != wanted.get("max"):
            stored["max"] = wanted.get("max")
            _write_json_atomic(mp, stored)
        return finished, stored
    from intengine.smoothing import resolve_seed

    meta = dict(meta, kind=layout.kind)
    meta["seed"] = resolve_seed(meta.get("seed"))
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_json_atomic(mp, meta)
    with open(out, "w") as fh:
        fh.write("\t".join(layout.columns) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return set(), meta


@dataclass(frozen=True)
class CertifyOptions:
    """The options that, with the model, image, seed and image index, determine a row."""

    sigma: float
    n0: int
    n: int
    alpha: float
    batch: int
    sampler: str
    backend: str
    memory_budget: int | None = None  # bytes for one batch's activations (None: the default budget)


def certify_image(model, image, idx: int, seed: int, opts: CertifyOptions, progress=None):
    """CERTIFY of one dataset image: a pure function of its arguments (noise is keyed by ``idx``).

    The serial run and every cluster worker call this, so their rows are identical."""
    from intengine.smoothing import certify

    return certify(model, np.ascontiguousarray(image), sigma=opts.sigma, n0=opts.n0, n=opts.n, alpha=opts.alpha,
                   batch=opts.batch, seed=seed, sampler=opts.sampler, backend=opts.backend,
                   image_index=int(idx), progress=progress, memory_budget=opts.memory_budget)


def certify_dataset(model, model_path, data_path, out, *, split: str = "test", skip: int = 1,
                    max_count: int | None = None, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                    batch: int = 1000, seed: int | None = None, sigma: float | None = None,
                    sampler: str = "table", backend: str = "numba", images=None,
                    on_row=None, progress=None, max_idx: int | None = None, on_start=None, executor=None,
                    memory_budget: int | None = None) -> dict:
    """Run CERTIFY on the selected images of ``data_path`` and append rows to ``out``.

    ``images`` = (x uint8 (N,H,W,C), y int (N,)) overrides loading ``data_path`` (tests).
    ``on_row(idx, label, result)`` is called after each row is on disk, ``on_start(to do, already
    done)`` once before the first. ``executor(model_path, model_sha256, x, opts, todo, seed)`` yields
    ``(idx, result)`` in completion order (e.g. :class:`intengine.cluster.DaskExecutor`); None
    certifies in this process, in idx order.  Returns a summary dict.
    """
    x, y, indices, meta = dataset_run(model, model_path, data_path, split=split, skip=skip, max_count=max_count,
                                      max_idx=max_idx, n0=n0, n=n, alpha=alpha, seed=seed, sigma=sigma,
                                      sampler=sampler, images=images)
    opts = CertifyOptions(sigma=meta["sigma"], n0=int(n0), n=int(n), alpha=float(alpha), batch=int(batch),
                          sampler=sampler, backend=backend, memory_budget=memory_budget)

    def certify_one(idx, run_seed):
        return certify_image(model, x[idx], idx, run_seed, opts, progress)

    distribute = None
    if executor is not None:
        distribute = lambda todo, run_seed: executor(model_path, meta["model_sha256"], x, opts, todo, run_seed)
    t0 = time.perf_counter()
    todo, meta = append_rows(out, meta, indices, y, certify_one, on_row, on_start=on_start, distribute=distribute)
    return {
        "out": str(out), "selected": len(indices), "already_done": len(indices) - len(todo),
        "certified_now": len(todo), "seconds": time.perf_counter() - t0, "seed": meta["seed"],
    }


def dataset_run(model, model_path, data_path, *, split, skip, max_count, max_idx, n0, n, alpha, seed, sigma,
                sampler, images=None):
    """(x, y, selected indices, run metadata) of a dataset run; checks options and image shapes."""
    from intengine.certificate import check_options

    sigma = float(model.sigma if sigma is None else sigma)
    check_options(sigma=sigma, alpha=alpha, n0=max(1, n0), n=n)
    if images is None:
        from intengine.datasets import dataset_id, load_dataset

        x, y, _names = load_dataset(data_path, split=split)
        data_id = dataset_id(data_path)
    else:
        x, y = images
        data_id = str(Path(data_path).resolve()) if data_path else None
    if tuple(x.shape[1:]) != tuple(model.input_shape):
        raise IntengineError(f"dataset images have shape {tuple(x.shape[1:])}, the model expects {tuple(model.input_shape)}")
    indices = select_indices(len(x), skip, max_count, max_idx)
    from intengine.datasets import arrays_sha256
    from intengine.modelfile import tensors_digest

    tensors = getattr(model, "tensors", None)
    meta = {
        "model": str(Path(model_path).resolve()) if model_path else None,
        "model_sha256": file_sha256(model_path) if model_path else None,
        "model_tensors_sha256": tensors_digest(tensors) if tensors is not None else None,
        "data": data_id,
        "data_sha256": arrays_sha256(x, y),  # a resume on other content is refused (RESUME_KEYS)
        "split": split, "skip": int(skip), "max": max_count, "max_idx": max_idx, "n0": int(n0), "n": int(n),
        "alpha": float(alpha), "sigma": sigma, "sampler": sampler, "seed": seed,
    }
    return x, y, indices, meta


def append_rows(out: Path, meta: dict, indices, labels, certify_one, on_row=None, *,
                layout: Layout = CERTIFY_LAYOUT, on_start=None, distribute=None) -> tuple[list[int], dict]:
    """Create or resume ``out`` (see :func:`prepare_output`) and append one row per index not yet in it.

    ``certify_one(idx, seed)`` returns a result (``seed`` is the run's, drawn and stored when
    ``meta['seed']`` is None); ``distribute(todo, seed)``, when given, replaces it and yields
    ``(idx, result)`` in any order.  The output's lock (:mod:`intengine.outlock`) is held throughout;
    each row is written, flushed and fsync'ed as it arrives, then ``on_row(idx, label, result)`` is
    called.  Returns (the indices certified now, the metadata).
    """
    from intengine import outlock
    from intengine.safeio import write_error

    try:
        with outlock.hold(out):
            finished, meta = prepare_output(Path(out), meta, layout)
            todo = [i for i in indices if i not in finished]
            if on_start is not None:
                on_start(len(todo), len(indices) - len(todo))
            if distribute is None:
                rows = ((idx, certify_one(idx, meta["seed"])) for idx in todo)
            else:
                rows = distribute(todo, meta["seed"])
            write_rows(out, rows, todo, labels, on_row, layout)
    except OSError as exc:  # disk full, a directory in the way: one line, resumable
        raise write_error(out, exc) from None
    return todo, meta


def write_rows(out: Path, rows, todo, labels, on_row=None, layout: Layout = CERTIFY_LAYOUT) -> None:
    """Append ``(idx, result)`` rows as they come, each on disk before the next; each idx of ``todo`` once.

    Raises if ``rows`` ends before every idx of ``todo`` has its row (a row it yields twice or
    outside ``todo`` is a bug in the executor, refused rather than written)."""
    wanted = set(todo)
    try:
        with open(out, "a") as fh:
            for idx, res in rows:
                if idx not in wanted:
                    raise RuntimeError(f"executor returned image {idx} twice or outside the run")
                wanted.discard(idx)
                fh.write(layout.format_row(idx, int(labels[idx]), res))
                fh.flush()
                os.fsync(fh.fileno())
                if on_row is not None:
                    on_row(idx, int(labels[idx]), res)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # stops a cluster executor (its tasks, its LocalCluster) on any exit
    if wanted:
        raise RuntimeError(f"executor ended with {len(wanted)} images not certified")
