"""The `intengine` command line: outputs, JSON keys, one-line errors with exit code 2."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from intengine import cli

from _cert_fakes import ConstantModel, install_fake_sampler

ROOT = Path(__file__).resolve().parents[1]
CAT = ROOT / "examples" / "cat_chelsea.npy"
JSON_KEYS = ("label", "abstain", "radius", "radius_sq_int", "count_top", "n0", "n", "alpha", "sigma", "seed", "seconds")


@pytest.fixture
def fake(monkeypatch, tmp_path):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    install_fake_sampler(monkeypatch)
    model = ConstantModel(label=3, input_shape=(32, 32, 3), num_classes=10,
                          class_names=["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                       "truck"])
    monkeypatch.setattr(cli, "_load_model", lambda path: model)
    mfile = tmp_path / "m.int8"
    mfile.write_bytes(b"fake")
    return model, mfile


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_certify_json(fake, capsys):
    _, mfile = fake
    rc, out, err = run(["certify", mfile, CAT, "--n", 200, "--n0", 20, "--seed", 3, "--json", "--batch", 64], capsys)
    assert rc == 0 and err == ""
    d = json.loads(out)
    assert all(k in d for k in JSON_KEYS)
    assert d["label"] == 3 and d["abstain"] is False and d["n"] == 200 and d["n0"] == 20 and d["seed"] == 3
    assert d["sigma"] == 0.25 and d["alpha"] == 0.001 and d["radius_sq_int"] >= 0 and d["class_name"] == "cat"


def test_certify_human(fake, capsys):
    _, mfile = fake
    rc, out, _ = run(["certify", mfile, CAT, "--n", 200, "--n0", 20, "--seed", 3, "--sigma", 0.5], capsys)
    assert rc == 0
    assert "class 3 (cat)" in out and "|delta|^2 <=" in out and "200/200" in out and "sigma 0.5" in out
    assert "time" in out and "seed 3" in out


def test_predict_json_and_human(fake, capsys):
    _, mfile = fake
    rc, out, _ = run(["predict", mfile, CAT, "--n", 100, "--seed", 1, "--json"], capsys)
    d = json.loads(out)
    assert rc == 0 and d["label"] == 3 and all(k in d for k in JSON_KEYS)
    rc, out, _ = run(["predict", mfile, CAT, "--n", 100, "--seed", 1], capsys)
    assert rc == 0 and "class 3 (cat)" in out


def test_seed_reported_when_absent(fake, capsys):
    _, mfile = fake
    rc, out, _ = run(["certify", mfile, CAT, "--n", 50, "--n0", 5, "--json"], capsys)
    assert rc == 0 and isinstance(json.loads(out)["seed"], int)


@pytest.mark.parametrize("extra,msg", [
    (["--sigma", "0"], "sigma"), (["--sigma", "-0.5"], "sigma"), (["--alpha", "0"], "alpha"),
    (["--alpha", "1"], "alpha"), (["--n0", "0"], "n0"), (["--n", "0"], "n must"), (["--batch", "0"], "batch"),
])
def test_bad_options_one_line(fake, capsys, extra, msg):
    _, mfile = fake
    rc, out, err = run(["certify", mfile, CAT] + extra, capsys)
    assert rc == 2 and out == ""
    assert err.startswith("intengine: error: ") and msg in err and err.count("\n") == 1


def test_bad_images_one_line(fake, capsys, tmp_path):
    _, mfile = fake
    cases = {"missing.npy": None, "wrong.npy": np.zeros((8, 8, 3), np.uint8),
             "nan.npy": np.full((32, 32, 3), np.nan, np.float32), "range.npy": np.full((32, 32, 3), 300, np.int32)}
    for name, arr in cases.items():
        p = tmp_path / name
        if arr is not None:
            np.save(p, arr)
        rc, out, err = run(["certify", mfile, p], capsys)
        assert rc == 2 and err.startswith("intengine: error: ") and err.count("\n") == 1, (name, err)
    txt = tmp_path / "img.txt"
    txt.write_text("x")
    rc, _, err = run(["predict", mfile, txt], capsys)
    assert rc == 2 and ".npy" in err


def test_dataset_and_report(fake, capsys, tmp_path):
    _, mfile = fake
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x_test=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), y_test=np.array([3, 3, 1, 3]))
    out = tmp_path / "r.tsv"
    argv = ["certify-dataset", mfile, data, "--out", out, "--n", 50, "--n0", 5, "--seed", 1, "--max", 3]
    rc, stdout, err = run(argv, capsys)
    assert rc == 0 and "3 images certified now" in stdout
    assert len(out.read_text().splitlines()) == 4
    rc, stdout, _ = run(argv[:-1] + [4], capsys)
    assert rc == 0 and "1 images certified now, 3 already done" in stdout
    rc, stdout, err = run(argv[:-4] + ["--seed", 2], capsys)
    assert rc == 2 and "different options" in err
    png = tmp_path / "p.png"
    rc, stdout, _ = run(["report", out, out, "--plot", png, "--radii", "0,0.5"], capsys)
    assert rc == 0 and "r=0.5" in stdout and png.exists()
    rc, stdout, _ = run(["report", out, "--json"], capsys)
    assert json.loads(stdout)[0]["n"] == 4
    rc, _, err = run(["report", tmp_path / "none.tsv"], capsys)
    assert rc == 2 and "not found" in err


def test_torch_commands_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "export.onnx_export", None)  # import -> ImportError
    rc, _, err = run(["export-onnx", "whatever"], capsys)
    assert rc == 2 and "install intengine[onnx]" in err and err.count("\n") == 1


def test_torch_command_forwards_arguments(monkeypatch, capsys):
    import types

    mod = types.ModuleType("export.cli_train")
    seen = {}
    mod.add_arguments = lambda p: p.add_argument("--epochs", type=int)
    mod.run = lambda a: seen.setdefault("epochs", a.epochs) and 0
    monkeypatch.setitem(sys.modules, "export.cli_train", mod)
    rc, _, _ = run(["train", "--epochs", "3"], capsys)
    assert rc == 0 and seen == {"epochs": 3}


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["certify"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["nope"])
    assert e.value.code == 2


def test_console_script_missing_model_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "intengine.cli", "certify", str(tmp_path / "none.int8"), str(CAT)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("intengine: error: ") and "Traceback" not in p.stderr and p.stderr.count("\n") == 1


def test_info_missing_model(capsys, tmp_path):
    rc, _, err = run(["info", tmp_path / "none.int8"], capsys)
    assert rc == 2 and err.startswith("intengine: error: ")


# --- end to end with the real engine, sampler and shipped model ------------------------

MODEL = ROOT / "models" / "resnet20_sigma0.25.int8"


@pytest.mark.slow
def test_end_to_end_real_model(tmp_path, monkeypatch):
    assert MODEL.exists(), f"shipped model {MODEL} is missing"
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    args = [sys.executable, "-m", "intengine.cli", "certify", str(MODEL), str(CAT), "--n", "500", "--n0", "50",
            "--seed", "1", "--json"]
    a = json.loads(subprocess.run(args + ["--batch", "500"], capture_output=True, text=True, check=True).stdout)
    b = json.loads(subprocess.run(args + ["--batch", "37", "--threads", "1"], capture_output=True, text=True,
                                  check=True).stdout)
    for k in ("label", "radius", "radius_sq_int", "count_top", "counts_estimation", "counts_selection"):
        assert a[k] == b[k]
    assert all(k in a for k in JSON_KEYS)
    c = json.loads(subprocess.run(args + ["--sampler", "cks"], capture_output=True, text=True, check=True).stdout)
    assert c["failed"] == 0 and c["n"] == 500
    info = subprocess.run([sys.executable, "-m", "intengine.cli", "info", str(MODEL)], capture_output=True, text=True)
    assert info.returncode == 0 and info.stdout.strip()
