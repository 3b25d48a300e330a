"""Certificates never taken on trust (issue 13: B3 bounds on N, B10 tampered cache, B11 tiny alpha)."""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from fractions import Fraction

import mpmath
import numpy as np
import pytest

from intengine import certificate as cert
from intengine.errors import IntengineError

SIGMA_SQ = Fraction(65025, 16)  # sigma = 0.25


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cert, "_memory_cache", {})


def test_b3_n_and_n0_bounded():
    for kw in (dict(n=10**12), dict(n0=10**12), dict(n=cert.MAX_N + 1), dict(n0=0), dict(n=-1)):
        with pytest.raises(IntengineError, match="must be an integer in"):
            cert.check_options(**kw)
    cert.check_options(n=cert.MAX_N, n0=cert.MAX_N)


def test_b10_tampered_cache_is_not_trusted():
    """B10: raised entries plus a rewritten sha256 in the cache gave a false certificate."""
    n, alpha = 1000, 0.001
    honest = cert.certificate_table(n, alpha, SIGMA_SQ).copy()
    stem, _ = cert._cache_key(n, alpha, SIGMA_SQ)
    d = cert.cache_dir()
    forged = np.full(n + 1, 10**9, dtype=np.int32)  # certify everything, abstentions included
    np.save(d / f"{stem}.npy", forged)
    info = json.loads((d / f"{stem}.json").read_text())
    info["sha256"] = hashlib.sha256(forged.tobytes()).hexdigest()
    (d / f"{stem}.json").write_text(json.dumps(info))
    cert._memory_cache.clear()
    assert np.array_equal(cert.certificate_table(n, alpha, SIGMA_SQ), honest)
    # one entry raised by a little more than its slack is caught too
    nz = np.flatnonzero(honest >= 0)
    sneaky = honest.copy()
    sneaky[nz[len(nz) // 2]:] += 200
    assert not cert.table_is_sound(sneaky, n, alpha, SIGMA_SQ)
    lowered = honest.copy()
    lowered[nz[-1]] = lowered[nz[-1]] // 2
    lowered = np.minimum.accumulate(lowered[::-1])[::-1]
    assert cert.table_is_sound(lowered, n, alpha, SIGMA_SQ)  # lower is always sound


def test_b10_cache_file_hostile_shapes_are_ignored():
    n, alpha = 200, 0.01
    honest = cert.certificate_table(n, alpha, SIGMA_SQ).copy()
    stem, _ = cert._cache_key(n, alpha, SIGMA_SQ)
    npy = cert.cache_dir() / f"{stem}.npy"
    with open(npy, "wb") as fh:  # header claiming 10^12 entries
        np.lib.format.write_array_header_1_0(fh, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)})
    cert._memory_cache.clear()
    assert np.array_equal(cert.certificate_table(n, alpha, SIGMA_SQ), honest)


def test_b11_alpha_outside_the_verified_range_is_refused():
    for alpha in (1e-300, 1e-13, 0.6, 0.999999):
        with pytest.raises(IntengineError, match="alpha must be in"):
            cert.check_options(alpha=alpha)
    cert.check_options(alpha=cert.ALPHA_MIN)
    cert.check_options(alpha=cert.ALPHA_MAX)


def test_b11_table_is_nondecreasing_even_where_scipy_is_not():
    """At alpha = 1e-300 (now refused) scipy's beta.ppf made the raw table non-monotone; the
    construction itself must still return a nondecreasing table and may only lower entries."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table, _ = cert._build_table(100_000, 1e-300, SIGMA_SQ)
    assert np.all(np.diff(table.astype(np.int64)) >= 0)


def _mp_unsound(table, n, alpha, idx):
    bad = []
    with mpmath.workdps(50):
        s = mpmath.sqrt(mpmath.mpf(SIGMA_SQ.numerator) / SIGMA_SQ.denominator)
        for k in idx:
            m = int(table[k])
            if m >= 0 and mpmath.betainc(k, n - k + 1, 0, mpmath.ncdf(mpmath.sqrt(m) / s), regularized=True) >= alpha:
                bad.append(k)
    return bad


@pytest.mark.parametrize("n,alpha", [(100_000, cert.ALPHA_MIN), (100_000, 0.001), (1000, cert.ALPHA_MAX),
                                     (1, cert.ALPHA_MAX), (2, cert.ALPHA_MIN)])
def test_b11_tables_sound_across_the_allowed_alpha_range(n, alpha):
    """The range is verified: every entry in float64 (table_is_sound), and the entries nearest
    nA = N (where beta.ppf fails first) exactly in 50-digit mpmath."""
    table = cert.certificate_table(n, alpha, SIGMA_SQ, use_disk=False)
    assert cert.table_is_sound(table, n, alpha, SIGMA_SQ)
    assert np.all(np.diff(table.astype(np.int64)) >= 0)
    assert _mp_unsound(table, n, alpha, range(max(0, n - 15), n + 1)) == []
