"""Discrete Gaussian sampling speed: draws per second, one thread and all threads.

Side by side, for sigma in {0.12, 0.25, 0.5, 1.0} (pixel scale, sigma_int = 255 sigma):

* ``table``       -- alias table with failure bin, Numba ``Sampler.fill`` (int32 out);
* ``table+clip``  -- the certification hot path ``Sampler.add_noise_clip`` (uint8 out);
* ``cks``         -- exact Canonne-Kamath-Steinke sampler, Numba;
* ``numpy float`` -- ``np.rint(rng.standard_normal(n) * sigma_int)`` (float64, NumPy is single-threaded);
* ``python cks``  -- the pure-Python CKS reference (a small count only).

Batches are (B, 3072) noisy CIFAR-10 images; the best of ``--repeats`` runs counts.
Run: ``python benchmarks/sampler.py`` (``--scale 0.25`` for a quick look).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numba  # noqa: E402
import numpy as np  # noqa: E402

from kernels.sampler import make_sampler, sigma_sq_from_sigma  # noqa: E402
from kernels.sampler.api import alias_table  # noqa: E402
from kernels.sampler.cks import CksParams, discrete_gaussian_py  # noqa: E402

D = 3072
SEED = 20261124


def best_rate(fn, draws, repeats):
    fn()  # warm-up (compilation, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return draws / best


def with_threads(n, fn, draws, repeats):
    before = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        return best_rate(fn, draws, repeats)
    finally:
        numba.set_num_threads(before)


def fmt(rate):
    return f"{rate / 1e6:10.2f}" if rate >= 1e5 else f"{rate / 1e6:10.4f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the batch sizes")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    all_threads = numba.config.NUMBA_NUM_THREADS
    b_fast = max(1, int(2048 * args.scale))
    b_cks = max(1, int(64 * args.scale))
    n_py = max(100, int(1000 * args.scale))

    rows = []
    for sigma in ("0.12", "0.25", "0.5", "1.0"):
        sigma_sq = sigma_sq_from_sigma(sigma)
        t0 = time.perf_counter()
        alias_table(sigma_sq)
        build_s = time.perf_counter() - t0
        table = make_sampler(sigma_sq, "table")
        cks = make_sampler(sigma_sq, "cks")
        out = np.empty((b_fast, D), np.int32)
        out8 = np.empty((b_fast, D), np.uint8)
        failed = np.empty(b_fast, np.uint8)
        out_c = np.empty((b_cks, D), np.int32)
        failed_c = np.empty(b_cks, np.uint8)
        x = np.random.default_rng(0).integers(0, 256, D, dtype=np.uint8)
        sigma_int = float(sigma) * 255
        rng = np.random.default_rng(SEED)

        def numpy_float():
            np.rint(rng.standard_normal(b_fast * D) * sigma_int).astype(np.int32)

        kernels = {
            "table": (lambda: table.fill(SEED, 1, 0, 0, out, failed), b_fast * D),
            "table+clip": (lambda: table.add_noise_clip(x, SEED, 1, 0, 0, out8, failed), b_fast * D),
            "cks": (lambda: cks.fill(SEED, 1, 0, 0, out_c, failed_c), b_cks * D),
        }
        rates = {}
        for name, (fn, draws) in kernels.items():
            rates[name] = (with_threads(1, fn, draws, args.repeats), with_threads(all_threads, fn, draws, args.repeats))
        r = best_rate(numpy_float, b_fast * D, args.repeats)
        rates["numpy float"] = (r, r)
        p = CksParams(sigma_sq)
        t0 = time.perf_counter()
        discrete_gaussian_py(p, (SEED & 0xFFFFFFFF, SEED >> 32), 1, 0, [0], n_py)
        r = n_py / (time.perf_counter() - t0)
        rates["python cks"] = (r, r)
        rows.append((sigma, sigma_sq, build_s, rates))

    base = "numpy float"
    print(f"draws per second (millions), {all_threads} threads available; ratio = rate / {base} (1 thread)\n")
    print(f"| sigma | sigma_int^2 | sampler | 1 thread | {all_threads} threads | ratio 1t | ratio {all_threads}t | ns/draw {all_threads}t |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for sigma, sigma_sq, build_s, rates in rows:
        ref = rates[base][0]
        for name, (r1, rn) in rates.items():
            print(
                f"| {sigma} | {sigma_sq} | {name} | {fmt(r1)} | {fmt(rn)} | {r1 / ref:8.2f} | {rn / ref:8.2f} |"
                f" {1e9 / rn:9.1f} |"
            )
    print("\ntable build (first use, decimal arithmetic + exact alias construction):")
    for sigma, sigma_sq, build_s, rates in rows:
        per_image = D / rates["table+clip"][1] * 1e6
        print(f"  sigma {sigma}: build {build_s * 1e3:7.1f} ms; noise for one 32x32x3 image {per_image:6.1f} us (table+clip, {all_threads} threads)")


if __name__ == "__main__":
    main()
