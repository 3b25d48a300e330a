"""Consistency regularization (`intengine train --consistency`): the objective's math, the noise keys, the CLI."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export import cli_train  # noqa: E402
from export.train import (COPY_SEED_STEP, TRAIN_NOISE_STREAM, TrainConfig, check_config,  # noqa: E402
                          consistency_objective, epoch_noise_key, paper_lambda)
from intengine.engine import load_model  # noqa: E402

QUICK = ["--data", "digits", "--arch", "small", "--train-images", "200", "--batch-size", "64", "--lr", "0.05"]


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _objective_numpy(logits, target, copies, lbd, eta):
    """The paper's formula written out in float64: (1/m) sum CE_j + lbd (1/m) sum KL(p_bar||p_j) + eta H(p_bar)."""
    z = logits.reshape(copies, -1, logits.shape[-1]).astype(np.float64)
    p = _softmax(z)                                             # (m, B, K)
    ce = np.mean([-np.log(p[j, np.arange(len(target)), target]) for j in range(copies)])
    p_bar = p.mean(0)
    kl = np.mean([(p_bar * (np.log(p_bar) - np.log(p[j]))).sum(-1) for j in range(copies)])
    h = -(p_bar * np.log(p_bar)).sum(-1).mean()
    return ce + lbd * kl + eta * h


@pytest.mark.parametrize("copies,lbd,eta", [(2, 20.0, 0.5), (3, 10.0, 0.5), (2, 1.0, 0.0), (4, 0.3, 2.0)])
def test_objective_is_the_papers_formula(copies, lbd, eta):
    rng = np.random.default_rng(copies)
    logits = rng.normal(0, 3, (copies * 5, 10)).astype(np.float32)
    target = rng.integers(0, 10, 5)
    got = consistency_objective(torch.tensor(logits), torch.tensor(target), copies, lbd, eta).item()
    assert got == pytest.approx(_objective_numpy(logits, target, copies, lbd, eta), rel=1e-5)


def test_objective_without_regularizer_is_cross_entropy_and_agreeing_copies_cost_only_entropy():
    rng = np.random.default_rng(0)
    z = torch.tensor(rng.normal(0, 2, (6, 10)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 10, 6))
    ce = torch.nn.functional.cross_entropy(z, y)
    assert consistency_objective(z, y, 1, 20.0).item() == pytest.approx(ce.item())
    assert consistency_objective(torch.cat([z, z]), y, 2, 0.0).item() == pytest.approx(ce.item())
    # identical copies: KL = 0, only the entropy of the (common) prediction remains
    p = torch.softmax(z, 1)
    h = -(p * p.log()).sum(1).mean()
    got = consistency_objective(torch.cat([z, z]), y, 2, 20.0, eta=0.5).item()
    assert got == pytest.approx((ce + 0.5 * h).item(), rel=1e-5)
    # disagreeing copies cost more than agreeing ones at the same cross-entropy of copy 0
    zz = torch.cat([z, z.flip(1)])
    assert consistency_objective(zz, y, 2, 20.0).item() > consistency_objective(zz, y, 2, 0.0).item() + 1.0


def test_objective_gradient_pulls_copies_together():
    z0 = torch.tensor([[2.0, 0.0, 0.0]])
    z1 = torch.tensor([[0.0, 2.0, 0.0]], requires_grad=True)
    loss = consistency_objective(torch.cat([z0, z1]), torch.tensor([2]), 2, 20.0, eta=0.0)
    loss.backward()
    assert z1.grad[0, 0] < 0 < z1.grad[0, 1]   # descent raises copy 1's class-0 logit, lowers its class-1 logit


def test_noise_copies_have_their_own_keys_and_copy_0_is_the_plain_bank():
    assert epoch_noise_key(7, 3) == epoch_noise_key(7, 3, 0) == (7, TRAIN_NOISE_STREAM + 3)
    assert epoch_noise_key(7, 3, 1) == (7 + COPY_SEED_STEP, TRAIN_NOISE_STREAM + 3)
    assert epoch_noise_key(7, 203, 0) == (7 + 2**32, TRAIN_NOISE_STREAM + 3)
    assert epoch_noise_key(2**64 - 1, 0, 1)[0] < 2**64
    keys = {epoch_noise_key(0, e, j) for e in range(400) for j in range(16)}
    assert len(keys) == 400 * 16


def test_paper_settings_by_sigma():
    assert [paper_lambda(s) for s in (0.12, 0.25, 0.5, 1.0)] == [20.0, 20.0, 20.0, 10.0]
    ns = cli_train.argparse.Namespace
    assert cli_train.consistency_settings(ns(consistency="paper", sigma=1.0, noise_copies=None)) == (10.0, 2)
    assert cli_train.consistency_settings(ns(consistency="3", sigma=0.25, noise_copies=4)) == (3.0, 4)
    assert cli_train.consistency_settings(ns(consistency=None, sigma=0.25, noise_copies=None)) == (0.0, 1)


@pytest.mark.parametrize("cfg,msg", [
    (TrainConfig(consistency=20.0, noise_copies=1), "needs --noise-copies >= 2"),
    (TrainConfig(consistency=-1.0, noise_copies=2), "--consistency must be"),
    (TrainConfig(consistency=float("nan"), noise_copies=2), "--consistency must be"),
    (TrainConfig(noise_copies=0), "--noise-copies must be"),
    (TrainConfig(consistency=1.0, noise_copies=2, consistency_eta=-0.5), "--consistency-eta must be"),
])
def test_bad_consistency_settings_are_refused(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        check_config(cfg)


def test_cli_bad_lambda_is_one_line(tmp_path, capsys):
    rc = cli_train.main(QUICK + ["--epochs", "1", "--consistency", "lots", "--out", str(tmp_path / "m.int8")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--consistency must be a number" in err


def test_consistency_training_records_its_recipe_and_reruns_from_the_command(tmp_path):
    out = tmp_path / "m.int8"
    rc = cli_train.main(QUICK + ["--epochs", "2", "--qat-epochs", "1", "--consistency", "--out", str(out),
                                 "--checkpoint", str(tmp_path / "m.ckpt")])
    assert rc == 0
    prov = load_model(out).metadata
    assert prov["consistency_lambda"] == 20.0 and prov["noise_copies"] == 2 and prov["consistency_eta"] == 0.5
    assert "KL(p_bar || p_j)" in prov["objective"]
    assert " --consistency " in prov["command"] + " "
    # the recorded command parses back to the same recipe
    parser = cli_train.argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    again = parser.parse_args(prov["command"].split()[2:])
    assert cli_train.consistency_settings(again) == (20.0, 2)
    # the card's engine-vs-torch agreement, measured from the QAT checkpoint
    import re

    from export.card import torch_agreement
    from intengine.datasets import load_digits_uint8

    text = torch_agreement(load_model(out), str(tmp_path / "m.ckpt"), load_digits_uint8("test")[0][:64])
    assert len(re.findall(r"differ by at most [01] LSB", text)) == 2, text   # float64 torch: ties only


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path, capsys):
    ckpt = tmp_path / "m.ckpt"
    assert cli_train.main(QUICK + ["--epochs", "2", "--qat-epochs", "1", "--out", str(tmp_path / "a.int8"),
                                   "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    rc = cli_train.main(QUICK + ["--epochs", "2", "--qat-epochs", "1", "--consistency", "--resume", str(ckpt),
                                 "--out", str(tmp_path / "b.int8"), "--checkpoint", str(tmp_path / "b.ckpt")])
    err = capsys.readouterr().err
    assert rc == 2 and "another recipe" in err and "consistency 0.0 -> 20.0" in err and err.count("\n") == 1
    assert not (tmp_path / "b.int8").exists()
