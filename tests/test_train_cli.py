"""`intengine train` schedules: no-QAT export, refused schedules, chance-level warning, progress, subsets."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import cli_train  # noqa: E402
from export.train import TrainConfig, check_config, train  # noqa: E402
from intengine.datasets import load_digits_uint8  # noqa: E402
from intengine.engine import load_model  # noqa: E402

QUICK = ["--data", "digits", "--arch", "small", "--train-images", "200", "--batch-size", "64", "--lr", "0.05"]


def _train(tmp_path, *extra):
    out = tmp_path / "m.int8"
    rc = cli_train.main(QUICK + ["--out", str(out), "--checkpoint", str(tmp_path / "m.ckpt"), *extra])
    return rc, out


def test_no_qat_epochs_still_exports_an_integer_model(tmp_path):
    rc, out = _train(tmp_path, "--epochs", "1", "--qat-epochs", "0")
    assert rc == 0
    m = load_model(out)
    prov = m.metadata
    assert prov["float_epochs"] == 1 and prov["qat_epochs"] == 0 and prov["train_images"] == 200
    assert "--train-images 200" in prov["command"]
    x = load_digits_uint8("test")[0][:16]
    assert m.classify(x).shape == (16,)


def test_default_one_epoch_schedule_trains_in_float_first():
    assert TrainConfig(epochs=1).schedule() == (1, 0, 0)
    assert TrainConfig(epochs=3).schedule()[0] >= 1
    check_config(TrainConfig(epochs=1))


@pytest.mark.parametrize("extra,msg", [
    (["--epochs", "1", "--lr", "0"], "--lr must be"),
    (["--epochs", "2", "--qat-epochs", "2"], "no float epoch"),
    (["--epochs", "0"], "--epochs must be"),
    (["--epochs", "1", "--qat-epochs", "-1"], "--qat-epochs must be"),
    (["--epochs", "1", "--train-images", "1"], "--train-images must be"),
])
def test_schedules_that_cannot_train_are_refused(tmp_path, capsys, extra, msg):
    rc, out = _train(tmp_path, *extra)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and not out.exists()


def test_chance_level_model_warns_loudly_and_says_so_in_model_and_card(tmp_path, capsys, monkeypatch):
    import export.train as tr
    from export.card import card_text

    monkeypatch.setattr(tr, "evaluate", lambda *a, **k: 0.086)  # what the 1-epoch model reached
    rc, out = _train(tmp_path, "--epochs", "1")
    err = capsys.readouterr().err
    assert rc == 0 and "WARNING" in err and "chance" in err
    warning = load_model(out).metadata["warning"]
    assert "8.6%" in warning and "10.0%" in warning
    assert "WARNING" in card_text(out, None)
    assert cli_train.chance_warning(0.5, 10) is None and cli_train.chance_warning(0.12, 10)


def test_progress_inside_each_epoch_and_train_subset():
    x, y, _ = load_digits_uint8("train")
    xs, ys = cli_train.subset(x, y, 130, seed=1)
    assert len(xs) == 130 and np.array_equal(xs, cli_train.subset(x, y, 130, seed=1)[0])
    calls = []
    cfg = TrainConfig(arch="small", epochs=1, qat_epochs=0, batch_size=64, lr=0.05, flip=False)
    train(cfg, xs, ys, xs[:20], ys[:20], 10, log=lambda s: None, progress=lambda *a: calls.append(a))
    assert calls == [(0, 1, 3), (0, 2, 3), (0, 3, 3)]
