"""CERTIFY and PREDICT (Cohen et al.) over fake model/sampler; the real sampler when available."""
from fractions import Fraction

import numpy as np
import pytest

from intengine import certificate as cert
from intengine import smoothing
from intengine.errors import IntengineError

from _cert_fakes import ConstantModel, FakeModel, install_fake_sampler


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))


def _image(model, value=None, seed=0):
    if value is not None:
        return np.full(model.input_shape, value, dtype=np.uint8)
    return np.random.default_rng(seed).integers(0, 256, size=model.input_shape, dtype=np.uint8)


def test_certify_constant_classifier_gets_table_radius(monkeypatch):
    requests = install_fake_sampler(monkeypatch)
    model = ConstantModel(label=2)
    res = smoothing.certify(model, _image(model, 100), n0=10, n=500, alpha=0.001, batch=64, seed=5)
    table = cert.certificate_table(500, 0.001, Fraction(65025, 16))
    assert res.label == 2 and not res.abstain and res.guess == 2
    assert res.count_top == 500 and res.counts_estimation == [0, 0, 500] and res.counts_selection == [0, 0, 10]
    assert res.radius_sq_int == int(table[500])
    p = cert.clopper_pearson_lower(500, 500, 0.001)
    assert res.radius == pytest.approx(0.25 * float(__import__("scipy.special").special.ndtri(p)))
    # integer radius and float radius describe the same certificate: m < (255 R)^2 <= m + 1 (+ margins)
    assert res.radius_sq_int < (255 * res.radius) ** 2 <= res.radius_sq_int + 1 + 1e-6
    assert requests == [(Fraction(65025, 16), "table")]
    assert res.seed == 5 and res.n0 == 10 and res.n == 500 and res.sigma == 0.25 and res.class_name == "class2"


def test_certify_result_independent_of_batch(monkeypatch):
    install_fake_sampler(monkeypatch)
    model = FakeModel()
    x = _image(model, seed=3)
    results = [smoothing.certify(model, x, n0=20, n=300, batch=b, seed=11, sigma=0.5) for b in (1, 7, 64, 1000)]
    keys = ("label", "abstain", "radius", "radius_sq_int", "count_top", "counts_selection", "counts_estimation")
    for r in results[1:]:
        assert all(getattr(r, k) == getattr(results[0], k) for k in keys)
    # and the batch really changed how classify was called
    assert max(b for b, _ in model.calls) == 300


def test_certify_depends_on_seed_and_image_index(monkeypatch):
    install_fake_sampler(monkeypatch)
    model = FakeModel()
    x = _image(model, seed=4)
    a = smoothing.certify(model, x, n0=10, n=200, seed=1, sigma=1.0)
    b = smoothing.certify(model, x, n0=10, n=200, seed=2, sigma=1.0)
    c = smoothing.certify(model, x, n0=10, n=200, seed=1, sigma=1.0, image_index=9)
    assert a.counts_estimation != b.counts_estimation or a.counts_selection != b.counts_selection
    assert a.counts_estimation != c.counts_estimation


def test_certify_abstains_when_votes_split(monkeypatch):
    install_fake_sampler(monkeypatch)
    # two classes that tie exactly on average: class 0 iff the noisy first pixel >= 128
    w = np.zeros((2, 12), dtype=np.int64)
    w[0, 0] = 1
    model = FakeModel(num_classes=2, weights=w)
    x = _image(model, 128)
    res = smoothing.certify(model, x, n0=20, n=400, seed=3, sigma=0.25)
    assert res.abstain and res.label is None and res.radius == 0.0 and res.radius_sq_int == -1
    assert res.class_name is None and res.guess in (0, 1)
    assert sum(res.counts_estimation) == 400


def test_failures_count_as_not_top(monkeypatch):
    install_fake_sampler(monkeypatch, fail_every=10)
    model = ConstantModel(label=0)
    res = smoothing.certify(model, _image(model, 50), n0=30, n=200, seed=0)
    # samples 0, 10, 20, ... fail in each stream: 3 of 30 selection, 20 of 200 estimation
    assert res.counts_selection == [27, 0, 0] and res.counts_estimation == [180, 0, 0]
    assert res.failed == 23 and res.failed_selection == 3 and res.failed_estimation == 20
    assert res.count_top == 180
    assert res.radius_sq_int == int(cert.certificate_table(200, 0.001, Fraction(65025, 16))[180])


def test_predict_constant_and_split(monkeypatch):
    install_fake_sampler(monkeypatch)
    model = ConstantModel(label=1)
    res = smoothing.predict(model, _image(model, 9), n=100, alpha=0.001, seed=1)
    assert res.label == 1 and not res.abstain and res.count_top == 100 and res.count_runner_up == 0
    assert res.radius is None and res.radius_sq_int is None and res.mode == "predict"
    w = np.zeros((2, 12), dtype=np.int64)
    w[0, 0] = 1
    split = FakeModel(num_classes=2, weights=w)
    res = smoothing.predict(split, _image(split, 128), n=200, seed=2)
    assert res.abstain and res.label is None
    assert res.p_value > 0.001


def test_predict_failures_go_to_runner_up(monkeypatch):
    install_fake_sampler(monkeypatch, fail_every=2)
    model = ConstantModel(label=0)
    # 10 of 20 samples fail: nA = 10, nB = 0 + 10 failures -> tie -> abstain
    res = smoothing.predict(model, _image(model, 9), n=20, seed=1, alpha=0.05)
    assert res.count_top == 10 and res.count_runner_up == 10 and res.abstain


def test_predict_matches_binomtest(monkeypatch):
    from scipy.stats import binomtest

    install_fake_sampler(monkeypatch)
    model = FakeModel(num_classes=3)
    for s in range(6):
        x = _image(model, seed=s)
        res = smoothing.predict(model, x, n=60, alpha=0.01, seed=s, sigma=0.5)
        counts = sorted(res.counts_estimation, reverse=True)
        t = counts[0] + counts[1]
        passes = counts[0] > counts[1] and binomtest(counts[0], t, 0.5).pvalue <= 0.01
        assert res.abstain == (not passes)


def test_progress_callback(monkeypatch):
    install_fake_sampler(monkeypatch)
    model = ConstantModel(label=0)
    seen = []
    smoothing.certify(model, _image(model, 1), n0=10, n=50, batch=20, seed=0, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(10, 60), (30, 60), (50, 60), (60, 60)]


@pytest.mark.parametrize("kw,msg", [(dict(sigma=0.0), "sigma"), (dict(sigma=-1.0), "sigma"), (dict(alpha=1.5), "alpha"),
                                    (dict(n0=0), "n0"), (dict(n=0), "n must"), (dict(batch=0), "batch"),
                                    (dict(seed=-1), "seed"), (dict(sampler="nope"), "sampler")])
def test_certify_rejects_bad_options(monkeypatch, kw, msg):
    install_fake_sampler(monkeypatch)
    model = ConstantModel()
    with pytest.raises(IntengineError, match=msg):
        smoothing.certify(model, _image(model, 1), **dict(dict(n0=5, n=5), **kw))


def test_certify_rejects_bad_image(monkeypatch):
    install_fake_sampler(monkeypatch)
    model = ConstantModel()
    with pytest.raises(IntengineError, match="shape"):
        smoothing.certify(model, np.zeros((3, 2, 2), dtype=np.uint8), n0=5, n=5)
    with pytest.raises(IntengineError, match="uint8"):
        smoothing.certify(model, np.zeros((2, 2, 3), dtype=np.float32), n0=5, n=5)


def test_result_to_dict_has_contract_keys(monkeypatch):
    install_fake_sampler(monkeypatch)
    model = ConstantModel()
    d = smoothing.certify(model, _image(model, 1), n0=5, n=50, seed=0).to_dict()
    for k in ("label", "abstain", "radius", "radius_sq_int", "count_top", "n0", "n", "alpha", "sigma", "seed",
              "seconds", "counts_selection", "counts_estimation", "failed", "sampler"):
        assert k in d
    import json

    json.dumps(d)


def test_resolve_seed():
    assert smoothing.resolve_seed(5) == 5
    s = smoothing.resolve_seed(None)
    assert 0 <= s < 2**64
    with pytest.raises(IntengineError):
        smoothing.resolve_seed(2**64)


# --- with the real sampler (kernels.sampler) ------------------------------------------------

@pytest.mark.parametrize("method", ["table", "cks"])
def test_real_sampler_batch_invariance(method):
    model = FakeModel()
    x = _image(model, seed=8)
    a = smoothing.certify(model, x, n0=16, n=200, batch=200, seed=123, sampler=method, backend="reference")
    b = smoothing.certify(model, x, n0=16, n=200, batch=13, seed=123, sampler=method, backend="reference")
    assert a.counts_selection == b.counts_selection and a.counts_estimation == b.counts_estimation
    assert a.radius_sq_int == b.radius_sq_int and a.failed == 0
