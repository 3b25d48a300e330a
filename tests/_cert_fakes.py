"""Small stand-ins for the engine model and the sampler, used by the smoothing/runs/CLI tests.

FakeModel: an integer linear classifier on uint8 HWC images.  FakeSampler: noise keyed by
(seed, stream, image_index, sample_index) like the real sampler, with optional injected
table-sampler failures.  Both follow the contract in docs/architecture.md.
"""
from __future__ import annotations

import numpy as np


class FakeModel:
    """classify(x) = argmax_k (W_k . (x - 128)), ties -> lowest k; W int64 (K, H*W*C)."""

    def __init__(self, input_shape=(2, 2, 3), num_classes=3, weights=None, sigma=0.25, class_names=None):
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        d = int(np.prod(input_shape))
        if weights is None:
            rng = np.random.default_rng(7)
            weights = rng.integers(-3, 4, size=(num_classes, d))
        self.weights = np.asarray(weights, dtype=np.int64)
        self.sigma = sigma
        self.clip = "clip"
        self.class_names = class_names or [f"class{k}" for k in range(num_classes)]
        self.calls = []

    def classify(self, x, backend="numba"):
        assert x.dtype == np.uint8 and x.shape[1:] == self.input_shape
        self.calls.append((x.shape[0], backend))
        flat = x.reshape(x.shape[0], -1).astype(np.int64) - 128
        return np.argmax(flat @ self.weights.T, axis=1).astype(np.int32)


class ConstantModel(FakeModel):
    """Always returns class ``label``."""

    def __init__(self, label=1, **kw):
        super().__init__(**kw)
        self.label = label

    def classify(self, x, backend="numba"):
        return np.full(x.shape[0], self.label, dtype=np.int32)


class FakeSampler:
    """add_noise_clip with rounded-Gaussian noise keyed by (seed, stream, image_index, sample index)."""

    def __init__(self, sigma_sq, method="table", fail_every=0):
        self.sigma = float(sigma_sq) ** 0.5
        self.method = method
        self.fail_every = fail_every  # sample index i fails when fail_every and i % fail_every == 0

    def add_noise_clip(self, x_flat, seed, stream, image_index, sample_start, out, failed):
        for b in range(out.shape[0]):
            i = sample_start + b
            rng = np.random.default_rng([seed % 2**63, stream, image_index, i])
            n = np.rint(rng.normal(0.0, self.sigma, size=x_flat.shape[0])).astype(np.int64)
            out[b] = np.clip(x_flat.astype(np.int64) + n, 0, 255).astype(np.uint8)
            failed[b] = 1 if (self.fail_every and i % self.fail_every == 0) else 0


def install_fake_sampler(monkeypatch, fail_every=0):
    """Route intengine.smoothing.get_sampler to FakeSampler (records the requests)."""
    import intengine.smoothing as smoothing

    requests = []

    def get_sampler(sigma_sq, method):
        requests.append((sigma_sq, method))
        if method not in smoothing.SAMPLERS:
            from intengine.errors import IntengineError

            raise IntengineError(f"unknown sampler {method!r}")
        return FakeSampler(sigma_sq, method, fail_every=fail_every)

    monkeypatch.setattr(smoothing, "get_sampler", get_sampler)
    return requests
