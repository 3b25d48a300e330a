"""benchmarks/intrs_compare.py: the tables it writes from Cohen-format result files (synthetic rows)."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from intengine.runs import HEADER

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("intrs_compare", REPO / "benchmarks" / "intrs_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows):
    """rows: (idx, label, predict, radius); correct = predict == label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [HEADER]
    for idx, label, predict, radius in rows:
        lines.append("\t".join([str(idx), str(label), str(predict), f"{radius:.6f}", str(int(predict == label)),
                                "0:00:01", "-1" if predict < 0 else "5", "9", "0", "1.0", "9,1", "90,10"]))
    path.write_text("\n".join(lines) + "\n")


def test_report_tables_gaps_and_grid(tmp_path):
    mod = _module()
    res = tmp_path / "results"
    # 4 images (idx 0, 10, 20, 30); grid uses the first 2
    _write(res / "floatrs-fp_train0.25_cert0.25.tsv", [(0, 1, 1, 0.6), (10, 2, 2, 0.3), (20, 3, -1, 0.0), (30, 4, 5, 0.9)])
    _write(res / "intrs-quant_train0.25_cert0.25.tsv", [(0, 1, 1, 0.55), (10, 2, 2, 0.2), (20, 3, 3, 0.26), (30, 4, -1, 0.0)])
    _write(res / "floatrs-quant_train0.25_cert0.25.tsv", [(0, 1, 1, 0.1), (10, 2, 0, 0.3), (20, 3, -1, 0.0), (30, 4, -1, 0.0)])
    _write(res / "intrs-quant_train0.25_cert0.50.tsv", [(0, 1, 1, 1.2), (10, 2, -1, 0.0)])
    args = argparse.Namespace(sigmas=[0.25, 0.5], images=4, skip=10, grid_images=2, n0=100, n=10000, alpha=0.001,
                              seed=0, epochs=20, qat_epochs=6, freeze_epochs=2, data="x.npz")
    summary = mod.report(args, tmp_path)
    fp = summary["main"]["floatrs-fp@0.25"]["certified_accuracy"]
    iq = summary["main"]["intrs-quant@0.25"]["certified_accuracy"]
    assert fp[:4] == pytest.approx([0.5, 0.5, 0.25, 0.0])    # r = 0, 0.25, 0.5, 0.75
    assert iq[:4] == pytest.approx([0.75, 0.5, 0.25, 0.0])
    assert summary["main"]["floatrs-quant@0.25"]["certified_rate"] == pytest.approx(0.5)
    text = (tmp_path / "summary.md").read_text()
    assert "| 0.25 IntRS-quant | +25.0 | +0.0 | +0.0 |" in text
    assert "| 0.25 FloatRS-quant | -25.0 | -50.0 | -25.0 |" in text
    # grid: the diagonal is the main run restricted to the first 2 images, off-diagonal its own file
    assert summary["grid"]["0.25->0.25"]["n"] == 2 and summary["grid"]["0.25->0.25"]["certified_accuracy"][0] == 1.0
    assert summary["grid"]["0.25->0.50"]["certified_accuracy"][:5] == pytest.approx([0.5, 0.5, 0.5, 0.5, 0.5])
    assert (tmp_path / "plots" / "sigma0.25.png").stat().st_size > 1000
