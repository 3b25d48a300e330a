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
    _write(res / "intrs-consistency_train0.25_cert0.25.tsv",
           [(0, 1, 1, 0.8), (10, 2, 2, 0.5), (20, 3, 3, 0.3), (30, 4, 4, 0.1)])
    args = argparse.Namespace(sigmas=[0.25, 0.5], images=4, skip=10, grid_images=2, n0=100, n=10000, alpha=0.001,
                              seed=0, epochs=20, qat_epochs=6, freeze_epochs=2, data="x.npz",
                              methods=list(mod.METHODS))
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
    # the recipe's row and its gain over plain IntRS-quant on the same images
    assert summary["main"]["intrs-consistency@0.25"]["certified_accuracy"][:4] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert "| 0.25 | IntRS-quant + consistency (n=4) | 100.0 | 75.0 | 50.0 | 25.0 | 0.0 |" in text
    assert "| 0.25 IntRS-quant + consistency | +25.0 | +25.0 | +25.0 | +25.0 | +0.0 |" in text


def test_report_of_a_subset_of_methods_has_no_empty_sections(tmp_path):
    mod = _module()
    res = tmp_path / "results"
    _write(res / "intrs-quant_train0.50_cert0.50.tsv", [(0, 1, 1, 0.55), (20, 2, 2, 0.2)])
    _write(res / "intrs-consistency_train0.50_cert0.50.tsv", [(0, 1, 1, 0.75), (20, 2, 0, 0.0)])
    _write(res / "intrs-quant_train0.25_cert0.25.tsv", [(0, 1, 1, 0.55), (20, 2, 2, 0.2)])   # a grid train sigma
    args = argparse.Namespace(sigmas=[0.25, 0.5], images=2, skip=20, grid_images=0, n0=100, n=2000, alpha=0.001,
                              seed=0, epochs=20, qat_epochs=6, freeze_epochs=2, data="x.npz",
                              methods=["intrs-quant", "intrs-consistency"])
    mod.report(args, tmp_path)
    text = (tmp_path / "summary.md").read_text()
    assert "FloatRS" not in text and "Train sigma vs certify sigma" not in text
    assert "| 0.50 IntRS-quant + consistency | -50.0 | +0.0 | +0.0 | +50.0 |" in text   # same ACR, 0.375


def test_recipe_models_are_reused_only_with_the_recipes_options(tmp_path):
    mod = _module()
    shipped = REPO / "models" / "resnet20_sigma0.25.int8"
    from intengine.engine import load_model

    meta = load_model(shipped).metadata
    # the recipe's schedule as the shipped model was trained (sigma 0.25: 100 epochs), the plain one's defaults
    args = argparse.Namespace(epochs=20, qat_epochs=6, freeze_epochs=2, recipe_epochs=meta["epochs"],
                              recipe_qat_epochs=meta["qat_epochs"], recipe_freeze_epochs=meta["frozen_observer_epochs"],
                              recipe_cutout=mod._cutout_of(meta),
                              recipe_trivial_augment=mod._trivial_augment_of(meta), recipe_ema=mod._ema_of(meta),
                              recipe_lambda=meta.get("consistency_lambda"), seed=0, threads=2,
                              data=str(REPO.parent / "shared/data/cifar10_subset.npz"))
    consistent = meta.get("consistency_lambda", 0.0) > 0
    plain_why = mod._reusable(args, shipped, 0.25, "intrs-quant")
    recipe_why = mod._reusable(args, shipped, 0.25, "intrs-consistency")
    assert (plain_why is None) != (recipe_why is None)    # a model is one method's or the other's, never both
    assert (recipe_why is None) == consistent
    longer = argparse.Namespace(**{**vars(args), "recipe_epochs": meta["epochs"] + 1})
    assert "epochs" in mod._reusable(longer, shipped, 0.25, "intrs-consistency")   # another schedule is refused
    other_cutout = argparse.Namespace(**{**vars(args), "recipe_cutout": mod._cutout_of(meta) + 4})
    assert "cutout" in mod._reusable(other_cutout, shipped, 0.25, "intrs-consistency")   # another augmentation too
    other_ta = argparse.Namespace(**{**vars(args), "recipe_trivial_augment": not mod._trivial_augment_of(meta)})
    assert "trivial_augment" in mod._reusable(other_ta, shipped, 0.25, "intrs-consistency")
    assert ("--trivial-augment" in mod._train_args(other_ta, "intrs-consistency", 0.25, tmp_path / "m.int8")) \
        == other_ta.recipe_trivial_augment
    other_ema = argparse.Namespace(**{**vars(args), "recipe_ema": 0.99 if mod._ema_of(meta) != 0.99 else 0.0})
    assert "ema" in mod._reusable(other_ema, shipped, 0.25, "intrs-consistency")
    assert mod._ema_of({"weight_average": "exponential moving average of the float phase's weights, decay 0.999"}) \
        == 0.999 and mod._ema_of({}) == 0.0
    other_lambda = argparse.Namespace(**{**vars(args), "recipe_lambda": meta.get("consistency_lambda", 0.0) + 1})
    assert "consistency_lambda" in mod._reusable(other_lambda, shipped, 0.25, "intrs-consistency")   # another weight
    cmd = mod._train_args(other_lambda, "intrs-consistency", 0.25, tmp_path / "m.int8")
    assert float(cmd[cmd.index("--consistency") + 1]) == other_lambda.recipe_lambda      # and trains with it
    assert mod._cutout_of({"augmentation": "random crop (zero padding), horizontal flip, cutout 8x8"}) == 8
    assert mod._cutout_of({}) == 0
