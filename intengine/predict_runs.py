"""predict-dataset: Cohen et al.'s PREDICT over a dataset, their predict TSV plus raw counts, resumable.

Columns: Cohen's ``idx label predict correct time`` (predict = -1 for ABSTAIN, correct =
int(predict == label), time = ``str(datetime.timedelta)``), then

    count_top  count_runner_up  failed  seconds  counts

Resuming, the sidecar and the row-by-row fsync work exactly as in :mod:`intengine.runs`
(a predict file and a certify file are never mixed: their sidecar kinds differ).
"""
from __future__ import annotations

import datetime
import time

import numpy as np

from intengine.runs import Layout, append_rows, dataset_run

COHEN_PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
COLUMNS = COHEN_PREDICT_COLUMNS + ("count_top", "count_runner_up", "failed", "seconds", "counts")


def format_row(idx: int, label: int, result) -> str:
    """One TSV line (with newline) for a PREDICT result; Cohen's five columns first."""
    predict = -1 if result.abstain else int(result.label)
    fields = [
        str(int(idx)), str(int(label)), str(predict), str(int(predict == int(label))),
        str(datetime.timedelta(seconds=float(result.seconds))),
        str(int(result.count_top)), str(int(result.count_runner_up)), str(int(result.failed)),
        f"{float(result.seconds):.4f}", ",".join(str(int(c)) for c in result.counts_estimation),
    ]
    return "\t".join(fields) + "\n"


PREDICT_LAYOUT = Layout("intengine.predict_dataset", COLUMNS, len(COHEN_PREDICT_COLUMNS), format_row)


def predict_dataset(model, model_path, data_path, out, *, split: str = "test", skip: int = 1,
                    max_count: int | None = None, max_idx: int | None = None, n: int = 100_000,
                    alpha: float = 0.001, batch: int = 1000, seed: int | None = None, sigma: float | None = None,
                    sampler: str = "table", backend: str = "numba", images=None, on_row=None, on_start=None,
                    progress=None, memory_budget: int | None = None) -> dict:
    """Run PREDICT on the selected images and append rows to ``out``; see runs.certify_dataset."""
    from intengine.smoothing import predict

    x, y, indices, meta = dataset_run(model, model_path, data_path, split=split, skip=skip, max_count=max_count,
                                      max_idx=max_idx, n0=0, n=n, alpha=alpha, seed=seed, sigma=sigma,
                                      sampler=sampler, images=images)

    def predict_one(idx, run_seed):
        return predict(model, np.ascontiguousarray(x[idx]), sigma=meta["sigma"], n=n, alpha=alpha, batch=batch,
                       seed=run_seed, sampler=sampler, backend=backend, image_index=int(idx), progress=progress,
                       memory_budget=memory_budget)

    t0 = time.perf_counter()
    todo, meta = append_rows(out, meta, indices, y, predict_one, on_row, layout=PREDICT_LAYOUT, on_start=on_start)
    return {
        "out": str(out), "selected": len(indices), "already_done": len(indices) - len(todo),
        "predicted_now": len(todo), "seconds": time.perf_counter() - t0, "seed": meta["seed"],
    }


def read_predictions(path) -> tuple[np.ndarray, np.ndarray]:
    """(predict, correct) int64 arrays of the complete rows of a predict TSV."""
    from intengine.errors import IntengineError

    with open(path) as fh:
        lines = fh.read().split("\n")[:-1]  # a partial last line (no newline) is not a row
    if not lines or tuple(lines[0].split("\t")[:len(COHEN_PREDICT_COLUMNS)]) != COHEN_PREDICT_COLUMNS:
        raise IntengineError(f"{path} is not a predict-dataset results file")
    try:
        rows = [ln.split("\t") for ln in lines[1:] if ln]
        return (np.array([int(r[2]) for r in rows], dtype=np.int64),
                np.array([int(r[3]) for r in rows], dtype=np.int64))
    except (IndexError, ValueError):
        raise IntengineError(f"{path}: malformed row") from None
