"""certify-dataset: Cohen's TSV, raw counts, resume without duplicates, refusal on changed options."""
import json

import numpy as np
import pytest

from intengine import runs
from intengine.errors import IntengineError
from intengine.report import read_results

from _cert_fakes import FakeModel, install_fake_sampler


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    install_fake_sampler(monkeypatch)
    model = FakeModel()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(9, 2, 2, 3), dtype=np.uint8)
    y = rng.integers(0, 3, size=9)
    data = tmp_path / "data.npz"
    np.savez(data, x_test=x, y_test=y, x_train=x, y_train=y, label_names=np.array(["a", "b", "c"]))
    mfile = tmp_path / "model.int8"
    mfile.write_bytes(b"fake model bytes")
    return model, mfile, data, tmp_path / "out" / "results.tsv"


KW = dict(n0=10, n=100, alpha=0.01, batch=32, seed=42, sigma=0.5)


def _rows(out):
    lines = out.read_text().splitlines()
    return lines[0], [ln.split("\t") for ln in lines[1:]]


def test_select_indices():
    assert runs.select_indices(10, 3) == [0, 3, 6, 9]
    assert runs.select_indices(10, 3, 2) == [0, 3]
    assert runs.select_indices(10, 1, 0) == []
    with pytest.raises(IntengineError):
        runs.select_indices(10, 0)


def test_tsv_format_and_counts(setup):
    model, mfile, data, out = setup
    summary = runs.certify_dataset(model, mfile, data, out, skip=2, **KW)
    header, rows = _rows(out)
    assert header.split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
    assert [int(r[0]) for r in rows] == [0, 2, 4, 6, 8]
    assert summary["certified_now"] == 5 and summary["seed"] == 42
    y = np.load(data)["y_test"]
    for r in rows:
        idx, label, predict, radius, correct = int(r[0]), int(r[1]), int(r[2]), float(r[3]), int(r[4])
        assert label == y[idx] and correct == int(predict == label)
        m = int(r[6])
        assert (predict == -1) == (m == -1) and (radius == 0.0) == (predict == -1)
        est = [int(v) for v in r[11].split(",")]
        sel = [int(v) for v in r[10].split(",")]
        assert sum(est) == 100 and sum(sel) == 10 and len(est) == 3
        assert r[5].count(":") == 2  # Cohen's str(timedelta)
    meta = json.loads(runs.meta_path(out).read_text())
    assert meta["n"] == 100 and meta["seed"] == 42 and meta["skip"] == 2
    res = read_results(out)
    assert len(res.idx) == 5


def test_rows_match_single_certify(setup):
    from intengine.smoothing import certify

    model, mfile, data, out = setup
    runs.certify_dataset(model, mfile, data, out, max_count=2, **KW)
    _, rows = _rows(out)
    x = np.load(data)["x_test"]
    kw = {k: v for k, v in KW.items()}
    r1 = certify(model, x[1], image_index=1, **kw)
    assert rows[1][11] == ",".join(map(str, r1.counts_estimation))
    assert int(rows[1][6]) == r1.radius_sq_int


def test_resume_after_interrupt_no_duplicates(setup):
    model, mfile, data, out = setup
    runs.certify_dataset(model, mfile, data, out, max_count=3, **KW)
    full_first = out.read_text()
    # simulate a kill in the middle of writing row 4: partial line at the end
    with open(out, "a") as fh:
        fh.write("3\t1\t2\t0.12")
    summary = runs.certify_dataset(model, mfile, data, out, **KW)
    assert summary["already_done"] == 3 and summary["certified_now"] == 6
    _, rows = _rows(out)
    assert [int(r[0]) for r in rows] == list(range(9))
    assert out.read_text().startswith(full_first)
    # a third run does nothing
    again = runs.certify_dataset(model, mfile, data, out, **KW)
    assert again["certified_now"] == 0
    # and the resumed file equals an uninterrupted run (times aside)
    other = out.with_name("fresh.tsv")
    runs.certify_dataset(model, mfile, data, other, **KW)
    strip = lambda p: [r[:5] + r[6:9] + r[10:] for r in _rows(p)[1]]
    assert strip(out) == strip(other)


def test_resume_refuses_changed_options(setup):
    model, mfile, data, out = setup
    runs.certify_dataset(model, mfile, data, out, max_count=1, **KW)
    for change in (dict(n=200), dict(alpha=0.001), dict(seed=7), dict(sigma=0.25), dict(n0=20)):
        with pytest.raises(IntengineError, match="different options"):
            runs.certify_dataset(model, mfile, data, out, max_count=2, **dict(KW, **change))
    with pytest.raises(IntengineError, match="different options"):
        runs.certify_dataset(model, mfile, data, out, max_count=2, skip=2, **KW)
    mfile.write_bytes(b"another model")
    with pytest.raises(IntengineError, match="model_sha256"):
        runs.certify_dataset(model, mfile, data, out, **KW)


def test_resume_without_seed_uses_stored_seed(setup):
    model, mfile, data, out = setup
    kw = dict(KW, seed=None)
    first = runs.certify_dataset(model, mfile, data, out, max_count=2, **kw)
    second = runs.certify_dataset(model, mfile, data, out, max_count=4, **kw)
    assert first["seed"] == second["seed"] and second["certified_now"] == 2


def test_refuses_foreign_file(setup):
    model, mfile, data, out = setup
    out.parent.mkdir(parents=True)
    out.write_text("something else\n")
    with pytest.raises(IntengineError, match="missing"):
        runs.certify_dataset(model, mfile, data, out, **KW)
    runs.meta_path(out).write_text(json.dumps({"kind": "intengine.certify_dataset"}))
    with pytest.raises(IntengineError):
        runs.certify_dataset(model, mfile, data, out, **KW)


def test_shape_mismatch(setup, tmp_path):
    _, mfile, data, out = setup
    model = FakeModel(input_shape=(4, 4, 3))
    with pytest.raises(IntengineError, match="shape"):
        runs.certify_dataset(model, mfile, data, out, **KW)


def test_resume_after_kill_during_header(setup):
    model, mfile, data, out = setup
    runs.certify_dataset(model, mfile, data, out, max_count=0, **KW)
    out.write_text("idx\tlab")  # header cut short
    runs.certify_dataset(model, mfile, data, out, max_count=2, **KW)
    header, rows = _rows(out)
    assert header == runs.HEADER and [int(r[0]) for r in rows] == [0, 1]
