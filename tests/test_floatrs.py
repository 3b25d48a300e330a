"""The float-noise baselines (export/floatrs.py): reproducible noise, sound radii, FloatRS-quant input grid."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.special import ndtr

torch = pytest.importorskip("torch")

from export.floatrs import (  # noqa: E402
    CHUNK,
    certify_float,
    certify_float_quant,
    gaussian_noise,
    quantize_noisy,
    radius_sq_int_below,
)


def test_noise_does_not_depend_on_the_batch_cut():
    whole = gaussian_noise(7, 1, 3, 0, 5 * CHUNK, 12)
    parts = np.concatenate([gaussian_noise(7, 1, 3, s, 2 * CHUNK, 12) for s in (0, 2 * CHUNK)]
                           + [gaussian_noise(7, 1, 3, 4 * CHUNK, CHUNK, 12)])
    np.testing.assert_array_equal(whole, parts)
    assert not np.array_equal(whole, gaussian_noise(7, 0, 3, 0, 5 * CHUNK, 12))  # streams differ
    assert not np.array_equal(whole, gaussian_noise(7, 1, 4, 0, 5 * CHUNK, 12))  # images differ
    assert abs(float(whole.std()) - 1.0) < 0.05


@pytest.mark.parametrize("radius", [0.0, 1e-3, 0.1, 0.25, 1 / 255, 2 / 255, 0.7, 3.0])
def test_radius_sq_int_below_is_the_largest_integer_strictly_inside(radius):
    m = radius_sq_int_below(radius)
    r2 = (255 * radius) ** 2
    assert m < r2 or (m == 0 and r2 == 0)
    assert m + 1 >= r2 * (1 - 1e-9)


def test_quantize_noisy_rounds_and_clips_to_the_input_grid():
    x = np.array([0, 10, 128, 250, 255], dtype=np.uint8)
    z = np.array([[-1.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.02, -0.011, 0.1, -0.2]], dtype=np.float32)
    got = quantize_noisy(x, z, 0.25)
    want = np.clip(np.rint(x[None, :] + 63.75 * z), 0, 255)
    np.testing.assert_array_equal(got, want.astype(np.uint8))
    assert got[0, 0] == 0 and got[0, 4] == 255


class _Linear(torch.nn.Module):
    """Two classes split by the hyperplane w.x + b = 0 on the [0, 1]-scale image (NCHW)."""

    def __init__(self, w: np.ndarray, b: float):
        super().__init__()
        self.fc = torch.nn.Linear(w.size, 2)
        with torch.no_grad():
            self.fc.weight[:] = torch.tensor(np.stack([np.zeros_like(w), w]), dtype=torch.float32)
            self.fc.bias[:] = torch.tensor([0.0, b])

    def forward(self, x):
        return self.fc(x.permute(0, 2, 3, 1).reshape(len(x), -1))


@pytest.mark.parametrize("offset", [0.05, 0.15, 0.3])
def test_float_radius_never_exceeds_the_true_distance_of_a_linear_classifier(offset):
    """For f(x) = [w.x + b > 0] the smoothed classifier is f and its exact l2 robust radius is the
    distance to the hyperplane, |w.x + b| / |w|; CERTIFY's radius must stay below it."""
    rng = np.random.default_rng(1)
    h, w_, c = 4, 4, 3
    w = rng.standard_normal(h * w_ * c)
    w /= np.linalg.norm(w)
    x = rng.integers(60, 200, (h, w_, c), dtype=np.uint8)
    b = -float(w @ (x.reshape(-1) / 255.0)) + offset  # distance to the boundary = offset
    sigma = 0.25
    res = certify_float(_Linear(w, b), x, sigma=sigma, n0=50, n=3000, alpha=0.001, batch=500, seed=5,
                        channels_last=False)
    assert res.label == 1 and 0 < res.radius < offset
    # and it is not vacuous: close to sigma PhiInv(p) with p the true probability
    p_true = float(ndtr(offset / sigma))
    assert res.count_top == pytest.approx(3000 * p_true, rel=0.05)
    assert res.radius_sq_int < (255 * res.radius) ** 2


def test_float_quant_counts_are_reproducible_and_batch_independent():
    from intengine.engine import load_model

    repo = Path(__file__).resolve().parents[1]
    model = load_model(repo / "models" / "resnet20_sigma0.25.int8")
    x = np.load(repo / "examples" / "cat_chelsea.npy")
    a = certify_float_quant(model, x, sigma=0.25, n0=100, n=600, batch=200, seed=3)
    b = certify_float_quant(model, x, sigma=0.25, n0=100, n=600, batch=600, seed=3)
    assert a.counts_estimation == b.counts_estimation and a.counts_selection == b.counts_selection
    assert sum(a.counts_estimation) == 600 and a.sigma_sq_int == "continuous"
