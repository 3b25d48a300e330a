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


def test_cutout_blacks_out_one_clipped_square_per_image():
    from export.train import augment

    x = np.full((64, 32, 32, 3), 200, np.uint8)
    plain = augment(x, np.random.default_rng(5), flip=False)
    cut = augment(x, np.random.default_rng(5), flip=False, cutout=8)  # the same crops, then one square each
    changed = (plain != cut).any(-1)
    for i in range(len(x)):
        rows, cols = np.nonzero(changed[i])
        if len(rows) == 0:  # the square fell on the crop's own zero border
            continue
        # the square clipped to the image and to the crop's border: a rectangle of at most 8 x 8, all black
        assert (cut[i][changed[i]] == 0).all()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert height <= 8 and width <= 8 and changed[i].sum() == height * width
    assert changed.sum(axis=(1, 2)).max() == 64 and (changed.sum(axis=(1, 2)) > 0).mean() > 0.8
    # without cutout nothing more is drawn: the generator is where the plain recipe leaves it
    rng_plain, rng_zero = np.random.default_rng(9), np.random.default_rng(9)
    augment(x, rng_plain)
    augment(x, rng_zero, cutout=0)
    assert rng_plain.integers(0, 2**62) == rng_zero.integers(0, 2**62)


def test_trivial_augment_operations():
    from export.trivial_augment import OPS, SIGNED, apply_op, trivial_augment

    rng = np.random.default_rng(3)
    image = rng.integers(40, 190, (32, 32, 3), dtype=np.uint8)   # not full range: autocontrast has work to do
    for op in OPS:
        for m in (-1.0, -0.5, 0.0, 0.5, 1.0):
            out = apply_op(image, op, m)
            assert out.shape == image.shape and out.dtype == np.uint8
            if m == 0 and op not in ("autocontrast", "equalize"):   # magnitude 0 leaves the image alone
                assert np.array_equal(out, image), op
        if op != "identity":
            assert not np.array_equal(apply_op(image, op, 1.0), image), op
        if op in SIGNED and op != "sharpness":   # the two signs go opposite ways
            assert not np.array_equal(apply_op(image, op, 1.0), apply_op(image, op, -1.0)), op
    # geometric operations fill with the crop padding's black; a shift by 0.45 of the side uncovers 14 columns
    assert (apply_op(image, "translate_x", 1.0)[:, -14:] == 0).all()
    assert (apply_op(image, "translate_x", -1.0)[:, :14] == 0).all()
    gray = image[..., :1]
    assert apply_op(gray, "rotate", 0.5).shape == gray.shape   # 1-channel images (digits) too
    with pytest.raises(ValueError, match="unknown augmentation"):
        apply_op(image, "blur", 0.5)
    batch = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    a = trivial_augment(batch, np.random.default_rng(1))
    assert np.array_equal(a, trivial_augment(batch, np.random.default_rng(1)))   # a seed repeats it
    assert 0 < (a != batch).any(axis=(1, 2, 3)).mean() < 1   # most images changed, identity (1/14) not


def test_trivial_augment_draws_only_when_asked():
    from export.train import augment

    x = np.full((16, 32, 32, 3), 90, np.uint8)
    rng_plain, rng_off, rng_on = (np.random.default_rng(9) for _ in range(3))
    augment(x, rng_plain)
    augment(x, rng_off, trivial=False)
    assert rng_plain.integers(0, 2**62) == rng_off.integers(0, 2**62)
    augment(x, rng_on, trivial=True)
    assert np.random.default_rng(9).integers(0, 2**62) != rng_on.integers(0, 2**62)


@pytest.mark.parametrize("cfg,msg", [(TrainConfig(cutout=-1), "--cutout must be"),
                                     (TrainConfig(weight_decay=-1e-4), "--weight-decay must be"),
                                     (TrainConfig(weight_decay=float("nan")), "--weight-decay must be")])
def test_bad_augmentation_settings_are_refused(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        check_config(cfg)


def test_cutout_and_weight_decay_are_recorded_and_bind_a_resume(tmp_path, capsys):
    from export.card import card_text

    rc, out = _train(tmp_path, "--epochs", "2", "--qat-epochs", "1", "--cutout", "4", "--weight-decay", "0.001",
                     "--trivial-augment")
    assert rc == 0
    prov = load_model(out).metadata
    assert prov["weight_decay"] == 0.001 and "cutout 4x4" in prov["augmentation"]
    assert "TrivialAugment" in prov["augmentation"] and "--trivial-augment" in prov["command"]
    assert "--cutout 4" in prov["command"] and "--weight-decay 0.001" in prov["command"]
    assert "cutout 4x4; SGD weight decay 0.001" in card_text(out, None)
    capsys.readouterr()
    rc = cli_train.main(QUICK + ["--epochs", "2", "--qat-epochs", "1", "--cutout", "6", "--weight-decay", "0.001",
                                 "--resume", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "b.int8")])
    err = capsys.readouterr().err
    assert rc == 2 and "another recipe" in err and "cutout 4 -> 6" in err and "trivial_augment True -> False" in err


def test_weight_average_is_the_model_kept_and_survives_resume(tmp_path):
    import shutil

    import torch

    x, y, _ = load_digits_uint8("train")
    xs, ys = cli_train.subset(x, y, 256, seed=2)
    cfg = TrainConfig(arch="small", mode="float", epochs=2, batch_size=64, lr=0.05, flip=False, ema=0.9)
    ckpt, after_first = tmp_path / "m.ckpt", tmp_path / "epoch1.ckpt"

    def keep_first_epoch(epoch, done, total):   # epoch 0's checkpoint is written before epoch 1's first step
        if epoch == 1 and done == 1:
            shutil.copy(ckpt, after_first)

    straight = train(cfg, xs, ys, xs[:32], ys[:32], 10, checkpoint=str(ckpt), log=lambda s: None,
                     progress=keep_first_epoch)["model"].state_dict()
    state = torch.load(ckpt, weights_only=True)
    average = {k[len("module."):]: v for k, v in state["ema"].items() if k.startswith("module.")}
    from export.models import build

    params = dict(build("small", 10, 1, 8).named_parameters())
    # the run returns the averaged weights, not the last ones; batch-norm statistics are measured again
    assert all(torch.equal(straight[k], average[k]) for k in params)
    assert not all(torch.equal(straight[k], state["model"][k]) for k in params)
    assert not torch.equal(straight["stem.1.running_mean"], average["stem.1.running_mean"])
    resumed = train(cfg, xs, ys, xs[:32], ys[:32], 10, resume=str(after_first), log=lambda s: None)
    assert all(torch.equal(straight[k], v) for k, v in resumed["model"].state_dict().items())
    with pytest.raises(ValueError, match="ema 0.9 -> 0.5"):
        train(TrainConfig(**{**cfg.__dict__, "ema": 0.5}), xs, ys, xs, ys, 10, resume=str(after_first))
    with pytest.raises(ValueError, match="--ema must be"):
        check_config(TrainConfig(ema=1.0))


def test_weight_average_is_recorded(tmp_path):
    from export.card import card_text

    rc, out = _train(tmp_path, "--epochs", "2", "--qat-epochs", "1", "--ema", "0.99")
    prov = load_model(out).metadata
    assert rc == 0 and "decay 0.99" in prov["weight_average"] and "--ema 0.99" in prov["command"]
    assert "| weight average | exponential moving average of the float phase's weights, decay 0.99 |" \
        in card_text(out, None)
