"""Certified-accuracy tables and plots from Cohen-format TSV files."""
import numpy as np
import pytest

from intengine import report
from intengine.errors import IntengineError

HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"


def _write(path, rows, extra_partial=False):
    text = HEADER + "".join(f"{i}\t{l}\t{p}\t{r}\t{int(p == l)}\t0:00:01\n" for i, l, p, r in rows)
    if extra_partial:
        text += "99\t1\t"
    path.write_text(text)
    return path


ROWS = [(0, 1, 1, 0.3), (1, 2, 2, 0.8), (2, 0, -1, 0.0), (3, 3, 5, 0.9), (4, 4, 4, 1.6)]


def test_summary_numbers(tmp_path):
    res = report.read_results(_write(tmp_path / "a.tsv", ROWS, extra_partial=True))
    s = report.summarize(res, radii=(0, 0.25, 0.5, 1.0, 1.5, 2.0))
    assert s["n"] == 5
    assert s["certified_accuracy"] == pytest.approx([3 / 5, 3 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0])
    assert s["acr"] == pytest.approx((0.3 + 0.8 + 1.6) / 5)
    assert s["abstain_rate"] == pytest.approx(1 / 5)
    assert s["certified_rate"] == pytest.approx(4 / 5)
    assert s["mean_radius_correct"] == pytest.approx((0.3 + 0.8 + 1.6) / 3)


def test_radius_equal_threshold_counts(tmp_path):
    # Cohen's rule: certified at r when radius >= r
    res = report.read_results(_write(tmp_path / "b.tsv", [(0, 1, 1, 0.5)]))
    assert report.certified_accuracy(res, [0.5, 0.5000001]).tolist() == [1.0, 0.0]


def test_table_and_plot(tmp_path):
    a = report.read_results(_write(tmp_path / "a.tsv", ROWS))
    b = report.read_results(_write(tmp_path / "b.tsv", ROWS[:2]))
    table = report.format_table([report.summarize(a), report.summarize(b)])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["file", "n", "r=0"] and "ACR" in lines[0]
    assert lines[2].split()[:3] == ["a.tsv", "5", "60.0"]
    assert lines[3].split()[:3] == ["b.tsv", "2", "100.0"]
    png = tmp_path / "plot.png"
    report.plot([a, b], png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_extra_columns_ignored(tmp_path):
    p = tmp_path / "c.tsv"
    p.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\tradius_sq_int\n0\t1\t1\t0.25\t1\t0:00:01\t4000\n")
    assert report.summarize(report.read_results(p))["n"] == 1


def test_errors(tmp_path):
    with pytest.raises(IntengineError, match="not found"):
        report.read_results(tmp_path / "nope.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\n1\t2\n")
    with pytest.raises(IntengineError, match="header"):
        report.read_results(bad)
    bad.write_text(HEADER + "0\tx\t1\t0.2\t1\t0\n")
    with pytest.raises(IntengineError, match="line 2"):
        report.read_results(bad)
    with pytest.raises(IntengineError):
        report.parse_radii("0,abc")
    with pytest.raises(IntengineError):
        report.parse_radii("-1")
    assert report.parse_radii("0, 0.5,1") == (0.0, 0.5, 1.0)


def test_empty_file(tmp_path):
    p = tmp_path / "e.tsv"
    p.write_text(HEADER)
    s = report.summarize(report.read_results(p))
    assert s["n"] == 0 and s["acr"] == 0.0 and np.all(np.array(s["certified_accuracy"]) == 0)
