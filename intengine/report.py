"""Certified-accuracy tables and plots from certify-dataset TSV files (Cohen's format).

Definitions (over all rows of a file, abstentions included):

* certified accuracy at r   = #{correct == 1 and radius >= r} / #rows   (Cohen et al.'s rule;
  at r = 0 it is the smoothed classifier's accuracy, an ABSTAIN is never correct);
* ACR (average certified radius) = sum over correct rows of radius / #rows  (Zhai et al., MACER);
* abstention rate           = #{predict == -1} / #rows;
* certified                 = #{predict != -1} / #rows  (a label with a radius > 0).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from intengine.errors import IntengineError

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)


@dataclass
class Results:
    path: Path
    idx: np.ndarray       # int64 (N,)
    label: np.ndarray     # int64 (N,)
    predict: np.ndarray   # int64 (N,), -1 = abstain
    radius: np.ndarray    # float64 (N,)
    correct: np.ndarray   # int64 (N,) 0/1


def read_results(path) -> Results:
    """Read a Cohen-format TSV (extra columns ignored; a partial last line is ignored)."""
    from intengine.safeio import open_regular

    p = Path(path)
    with open_regular(p, "results file") as fh:
        raw = fh.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise IntengineError(f"{p}: not a results .tsv file (not UTF-8 text)") from None
    lines = text.split("\n")
    if lines and lines[-1] != "":
        lines = lines[:-1]  # partial last line of an interrupted run
    rows = list(csv.reader([ln for ln in lines if ln], delimiter="\t"))
    if not rows:
        raise IntengineError(f"{p} is empty")
    header = rows[0]
    need = ["idx", "label", "predict", "radius", "correct"]
    if any(c not in header for c in need):
        raise IntengineError(f"{p}: header must name the columns {' '.join(need)}, got {' '.join(header)}")
    col = {c: header.index(c) for c in need}
    vals = {c: [] for c in need}
    for k, r in enumerate(rows[1:], start=2):
        try:
            for c in need:
                vals[c].append(float(r[col[c]]) if c == "radius" else int(r[col[c]]))
        except (IndexError, ValueError):
            raise IntengineError(f"{p}: line {k} is malformed") from None
    return Results(p, *(np.asarray(vals[c], dtype=np.float64 if c == "radius" else np.int64) for c in need))


def certified_accuracy(res: Results, radii) -> np.ndarray:
    """float64 (len(radii),): fraction of rows correct with radius >= r."""
    if len(res.idx) == 0:
        return np.zeros(len(radii))
    ok = res.correct.astype(bool)
    return np.array([np.mean(ok & (res.radius >= r)) for r in radii], dtype=np.float64)


def summarize(res: Results, radii=DEFAULT_RADII) -> dict:
    n = len(res.idx)
    ok = res.correct.astype(bool)
    return {
        "file": str(res.path),
        "n": n,
        "radii": [float(r) for r in radii],
        "certified_accuracy": [float(a) for a in certified_accuracy(res, radii)],
        "acr": float(np.sum(res.radius * ok) / n) if n else 0.0,
        "abstain_rate": float(np.mean(res.predict == -1)) if n else 0.0,
        "certified_rate": float(np.mean(res.predict != -1)) if n else 0.0,
        "mean_radius_correct": float(np.mean(res.radius[ok])) if ok.any() else 0.0,
    }


def format_table(summaries: list[dict]) -> str:
    """A plain-text table like IntRS Table 2: one row per file, certified accuracy (%) per radius."""
    if not summaries:
        return ""
    radii = summaries[0]["radii"]
    head = ["file", "n"] + [f"r={r:g}" for r in radii] + ["ACR", "abstain%", "certified%"]
    body = []
    for s in summaries:
        body.append([Path(s["file"]).name, str(s["n"])]
                    + [f"{100 * a:.1f}" for a in s["certified_accuracy"]]
                    + [f"{s['acr']:.3f}", f"{100 * s['abstain_rate']:.1f}", f"{100 * s['certified_rate']:.1f}"])
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]
    lines.append("certified accuracy in % (correct and radius >= r, pixel-scale l2); ACR = mean over all "
                 "images of radius if correct else 0")
    return "\n".join(lines)


def run_meta(res: Results) -> dict:
    """The sidecar ``<file>.meta.json`` of a results file written by intengine ({} when absent or unreadable)."""
    import json

    try:
        meta = json.loads(Path(str(res.path) + ".meta.json").read_text())
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def curve_label(res: Results) -> str:
    """Legend text: model file, sigma and N from the run's sidecar, else the file name."""
    meta = run_meta(res)
    if not meta.get("model"):
        return res.path.stem
    parts = [Path(str(meta["model"])).name]
    if meta.get("sigma") is not None:
        parts.append(f"sigma {float(meta['sigma']):g}")
    if meta.get("n") is not None:
        parts.append(f"N {int(meta['n']):,}")
    return f"{', '.join(parts)} ({res.path.name})"


def plot(results: list[Results], out_png, labels=None) -> dict:
    """Certified accuracy vs radius, one step curve per file, written to ``out_png``; returns title and labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r_max = max([float(r.radius.max()) if len(r.radius) else 0.0 for r in results] + [0.5])
    grid = np.linspace(0.0, r_max * 1.05, 400)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = list(labels) if labels else [curve_label(r) for r in results]
    for name, res in zip(names, results):
        ax.plot(grid, 100 * certified_accuracy(res, grid), label=name, drawstyle="steps-post")
    sizes = sorted({len(r.idx) for r in results})
    title = f"Certified accuracy of the smoothed classifier ({'/'.join(map(str, sizes))} images)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("radius (l2, pixel scale [0,1])")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return {"title": title, "labels": names}


def parse_radii(text: str | None):
    if text is None:
        return DEFAULT_RADII
    try:
        radii = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise IntengineError(f"--radii must be comma-separated numbers, got {text!r}") from None
    if not radii or any(not np.isfinite(r) or r < 0 for r in radii):
        raise IntengineError(f"--radii must be finite numbers >= 0, got {text!r}")
    return tuple(radii)
