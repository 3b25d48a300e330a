"""What a newcomer meets first: Cohen-compatible dataset runs, notices, help texts, the report plot."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from intengine import cli, report, runs
from intengine.notices import COMPILE_TEXT, compile_notice

from _cert_fakes import FakeModel, install_fake_sampler

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat_chelsea.npy"


def _fake_cli_model(monkeypatch, tmp_path, input_shape):
    """A FakeModel the CLI loads for any path, a fake sampler, and a placeholder model file."""
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    install_fake_sampler(monkeypatch)
    model = FakeModel(input_shape=input_shape, num_classes=10)
    monkeypatch.setattr(cli, "_load_model", lambda path: model)
    mfile = tmp_path / "m.int8"
    mfile.write_bytes(b"fake")
    return model, mfile


@pytest.fixture
def fake(monkeypatch, tmp_path):
    model, mfile = _fake_cli_model(monkeypatch, tmp_path, (32, 32, 3))
    data = tmp_path / "d.npz"
    rng = np.random.default_rng(1)
    np.savez(data, x_test=rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), y_test=np.arange(12) % 10)
    return model, mfile, data


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def rows(path):
    return [ln.split("\t") for ln in Path(path).read_text().splitlines()[1:]]


def test_max_is_cohens_index_bound():
    # certify.py: for i in range(len(dataset)): if i % skip: continue; if i == max: break
    assert runs.select_indices(10_000, 100, max_idx=1000) == list(range(0, 1000, 100))
    assert runs.select_indices(10, 3, max_idx=7) == [0, 3, 6]
    assert runs.select_indices(10, 3, max_count=2, max_idx=9) == [0, 3]


def test_certify_dataset_cohen_spelling_and_max(fake, capsys, tmp_path):
    _, mfile, data = fake
    out = tmp_path / "r.tsv"
    rc, stdout, err = run(["certify-dataset", mfile, data, "--out", out, "--N", 40, "--N0", 5, "--seed", 1,
                           "--skip", 3, "--max", 9], capsys)
    assert rc == 0 and [r[0] for r in rows(out)] == ["0", "3", "6"]
    assert "[1/3] idx 0: label 0" in err and "[3/3] idx 6" in err  # per-image lines off a terminal
    meta = json.loads(runs.meta_path(out).read_text())
    assert meta["n"] == 40 and meta["n0"] == 5 and meta["max_idx"] == 9
    rc, stdout, _ = run(["certify-dataset", mfile, data, "--out", tmp_path / "c.tsv", "--n", 40, "--n0", 5,
                         "--max-images", 2, "--skip", 5, "--json"], capsys)
    summary = json.loads(stdout)
    assert rc == 0 and summary["rows"] == 2 and summary["mode"] == "certify" and "certified_accuracy" in summary


def test_predict_dataset_writes_cohens_predict_tsv_and_resumes(fake, capsys, tmp_path):
    _, mfile, data = fake
    out = tmp_path / "p.tsv"
    argv = ["predict-dataset", mfile, data, "--out", out, "--N", 40, "--seed", 2, "--max", 3]
    rc, stdout, _ = run(argv, capsys)
    assert rc == 0 and "3 images predicted now" in stdout
    assert out.read_text().split("\n")[0].split("\t")[:5] == ["idx", "label", "predict", "correct", "time"]
    r = rows(out)
    assert [x[0] for x in r] == ["0", "1", "2"] and all(x[3] == str(int(x[1] == x[2])) for x in r)
    rc, stdout, _ = run(argv[:-1] + [5], capsys)
    assert rc == 0 and "2 images predicted now, 3 already done" in stdout
    rc, _, err = run(["certify-dataset", mfile, data, "--out", out, "--n", 40, "--seed", 2], capsys)
    assert rc == 2 and err.startswith("intengine: error:")  # a predict file is never resumed as certify


def test_certify_dataset_accepts_digits(monkeypatch, capsys, tmp_path):
    pytest.importorskip("sklearn")
    _, mfile = _fake_cli_model(monkeypatch, tmp_path, (8, 8, 1))
    out = tmp_path / "d.tsv"
    rc, stdout, err = run(["certify-dataset", mfile, "digits", "--out", out, "--n", 30, "--n0", 5, "--max", 2,
                           "--seed", 0], capsys)
    assert rc == 0, err
    assert len(rows(out)) == 2 and json.loads(runs.meta_path(out).read_text())["data"] == "digits"


def test_threads_above_the_cores_says_so(fake, capsys):
    import numba

    _, mfile, _ = fake
    many = numba.config.NUMBA_NUM_THREADS + 5
    rc, _, err = run(["certify", mfile, CAT, "--n", 20, "--n0", 2, "--seed", 0, "--threads", many], capsys)
    assert rc == 0 and f"--threads {many} is more than the {numba.config.NUMBA_NUM_THREADS} available" in err
    rc, _, err = run(["certify", mfile, CAT, "--n", 20, "--n0", 2, "--seed", 0, "--threads", 1], capsys)
    assert "available" not in err


def test_compile_notice_only_when_the_numba_cache_is_cold(tmp_path):
    code = ("import numpy as np; from intengine.notices import numba_cache_is_cold as c; a = c(); "
            "from kernels.numba_backend import argmax; argmax(np.zeros((2, 3), np.uint8)); print(a, c())")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "nb"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=ROOT).stdout.split()
    assert out == ["True", "False"]


def test_compile_notice_text(monkeypatch, capsys):
    import intengine.notices as notices

    monkeypatch.setattr(notices, "numba_cache_is_cold", lambda: True)
    assert compile_notice("numba") and not compile_notice("reference")
    assert capsys.readouterr().err == COMPILE_TEXT + "\n"
    monkeypatch.setattr(notices, "numba_cache_is_cold", lambda: False)
    assert not compile_notice("numba")


def _subparsers(parser):
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_help_texts_describe_positionals_and_show_defaults(capsys):
    subs = _subparsers(cli.build_parser())
    for name, p in subs.items():
        for a in p._actions:
            if not a.option_strings:
                assert a.help, f"{name}: positional {a.dest} has no description"
    for name in ("certify", "certify-dataset", "predict-dataset"):
        helps = {a.dest: a.help for a in subs[name]._actions}
        assert "default" in helps["threads"] and "default" in helps["backend"]
    assert "default" in {a.dest: a.help for a in subs["certify-dataset"]._actions}["split"]
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: 30)", "(default: 0.1)", "(default: 128)", "(default: 2)"):
        assert default in text


def test_report_plot_has_title_and_legend_with_model_sigma_n(fake, capsys, tmp_path):
    _, mfile, data = fake
    out = tmp_path / "r.tsv"
    assert run(["certify-dataset", mfile, data, "--out", out, "--n", 40, "--n0", 5, "--seed", 1, "--max", 2,
                "--sigma", 0.5], capsys)[0] == 0
    bare = tmp_path / "bare.tsv"
    bare.write_text("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.3\t1\t0:00:01\n")
    shown = report.plot([report.read_results(out), report.read_results(bare)], tmp_path / "p.png")
    assert shown["title"].startswith("Certified accuracy") and (tmp_path / "p.png").is_file()
    assert shown["labels"] == ["m.int8, sigma 0.5, N 40 (r.tsv)", "bare"]


def test_dataset_bar_on_a_terminal_has_a_total(capsys):
    from types import SimpleNamespace

    from intengine.cli_dataset import _Progress

    p = _Progress("certify", bar=True)
    p.on_start(5, 2)
    p.on_row(0, 1, SimpleNamespace(abstain=False, label=1, radius=0.5, seconds=0.1))
    assert (p.bar.total, p.bar.n) == (5, 1)  # tqdm shows total and ETA from these
    p.close()
    assert "2 images already done, 5 to go" in capsys.readouterr().err
