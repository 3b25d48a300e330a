"""The Python API (intengine.load_model / load_image / certify / predict / certify_dataset / predict_dataset)."""
from __future__ import annotations

import json
import os
import pydoc
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import intengine
from intengine import cli
from intengine.errors import IntengineError

from _cert_fakes import ConstantModel, FakeModel, install_fake_sampler

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat_chelsea.npy"
NAMES = ("load_model", "load_image", "certify", "predict", "certify_dataset", "predict_dataset")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    install_fake_sampler(monkeypatch)
    model = FakeModel(input_shape=(32, 32, 3), num_classes=10, class_names=[f"c{k}" for k in range(10)])
    model.path = None
    return model


def test_top_level_names_documented_and_cheap_to_import():
    for name in NAMES:
        assert callable(getattr(intengine, name)) and getattr(intengine, name).__doc__
    doc = pydoc.render_doc(intengine, renderer=pydoc.plaintext)
    assert all(name in doc for name in NAMES)
    code = "import sys, intengine; assert 'numpy' not in sys.modules and 'intengine.api' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    with pytest.raises(AttributeError):
        intengine.no_such_name


def test_every_image_form_gives_the_same_result(fake):
    u8 = np.load(CAT)
    forms = [CAT, str(CAT), u8, u8.astype(np.float32) / 255, np.transpose(u8, (2, 0, 1)).astype(np.float64) / 255,
             np.transpose(u8, (2, 0, 1)), u8[None]]
    results = [intengine.certify(fake, f, n=60, n0=10, seed=5, batch=32) for f in forms]
    for r in results[1:]:
        assert r.to_dict() | {"seconds": 0} == results[0].to_dict() | {"seconds": 0}
    for f in forms:
        np.testing.assert_array_equal(intengine.load_image(f), u8)
        np.testing.assert_array_equal(intengine.load_image(f, fake), u8)
    with pytest.raises(IntengineError, match="float images must lie in"):
        intengine.certify(fake, u8 * 2.0, n=10, n0=1)


def test_results_repr_and_to_dict_match_the_cli_json(fake, monkeypatch, capsys, tmp_path):
    res = intengine.certify(fake, CAT, n=50, n0=5, seed=3, batch=16)
    assert repr(res).startswith("SmoothingResult(certify: ") and "count_top=" in repr(res)
    assert len(repr(res)) < 300
    monkeypatch.setattr(cli, "_load_model", lambda path: fake)
    mfile = tmp_path / "m.int8"
    mfile.write_bytes(b"fake")
    assert cli.main(["certify", str(mfile), str(CAT), "--n", "50", "--n0", "5", "--seed", "3", "--batch", "16",
                     "--json"]) == 0
    cli_json = json.loads(capsys.readouterr().out)
    assert set(cli_json) == set(res.to_dict())
    assert cli_json["radius_sq_int"] == res.radius_sq_int and cli_json["label"] == res.label
    pred = intengine.predict(ConstantModel(label=4, input_shape=(32, 32, 3), num_classes=10), CAT, n=40, seed=1)
    assert pred.label == 4 and "predict: label=4" in repr(pred)


def test_model_repr():
    m = intengine.load_model(ROOT / "models" / "resnet20_sigma0.25.int8")
    text = repr(m)
    assert re.search(r"arch='resnet20', input=32x32x3 uint8, classes=10, sigma=0.25, parameters=[\d,]+", text)
    assert f"{m.parameter_count():,}" in text


def test_dataset_runs_return_results_with_the_cli_json_keys(fake, monkeypatch, capsys, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    y = np.array([1, 2, 3, 4, 5])
    fake.path = str(tmp_path / "m.int8")
    Path(fake.path).write_bytes(b"fake")
    run = intengine.certify_dataset(fake, (x, y), tmp_path / "c.tsv", skip=2, max=4, n=30, n0=5, seed=2)
    assert (run.mode, run.rows, run.done_now, run.selected) == ("certify", 2, 2, 2)  # idx 0, 2
    assert len(run.certified_accuracy) == len(run.radii) and "DatasetResult(certify" in repr(run)
    again = intengine.certify_dataset(fake, (x, y), tmp_path / "c.tsv", skip=2, n=30, n0=5, seed=2)
    assert (again.rows, again.done_now, again.already_done) == (3, 1, 2)
    pr = intengine.predict_dataset(fake, (x, y), tmp_path / "p.tsv", max_images=3, n=30, seed=2)
    assert (pr.mode, pr.rows, pr.acr) == ("predict", 3, None)
    assert (tmp_path / "p.tsv").read_text().split("\n")[0].split("\t")[:5] == ["idx", "label", "predict",
                                                                                "correct", "time"]
    np.savez(tmp_path / "d.npz", x_test=x, y_test=y)
    monkeypatch.setattr(cli, "_load_model", lambda path: fake)
    assert cli.main(["certify-dataset", fake.path, str(tmp_path / "d.npz"), "--out", str(tmp_path / "j.tsv"),
                     "--N", "30", "--N0", "5", "--seed", "2", "--json", "--max", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == set(run.to_dict()) and out["rows"] == 2


def _readme_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the README's Python API section has one python block"
    return blocks[0]


@pytest.mark.slow  # four real certify/predict runs at N = 1000 (~25 s of CPU on 2 AVX2 cores)
def test_readme_python_api_example_runs(tmp_path, monkeypatch, capsys):
    for name in ("models", "examples"):
        (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_readme_python_block(), "README.md:Python API", "exec"), ns)
    out = capsys.readouterr().out
    assert "Model(arch='resnet20'" in out and "SmoothingResult(certify" in out and "DatasetResult(certify" in out
    assert ns["res"].label is not None and ns["run"].rows == 2
    assert (tmp_path / "results.tsv").is_file()


@pytest.mark.slow
def test_examples_readme_table_is_what_certify_measures():
    """One row of examples/README.md's out-of-distribution table, re-measured with its stated command."""
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    text = (ROOT / "examples" / "README.md").read_text()
    header = next(ln for ln in text.splitlines() if ln.startswith("| model |"))
    images = [c.strip() for c in header.strip("|").split("|")[1:]]
    row = next(ln for ln in text.splitlines() if ln.startswith("| `resnet20_sigma0.25`"))
    cells = [c.strip() for c in row.strip("|").split("|")[1:]]
    model = intengine.load_model(ROOT / "models" / "resnet20_sigma0.25.int8")
    for image, cell in zip(images, cells):
        res = intengine.certify(model, ROOT / "examples" / f"{image}.npy", n=1000, seed=0)
        assert cell == ("ABSTAIN" if res.abstain else f"{names[res.label]}, {res.radius:.3f}"), image
