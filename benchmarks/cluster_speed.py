"""certify-dataset throughput on a Dask LocalCluster: images/hour per layout, scheduler overhead per task.

    python benchmarks/cluster_speed.py --images 12 --n 2000 --layouts 1x2,2x1

For each layout WORKERSxTHREADS it runs ``intengine certify-dataset ... --workers W
--threads-per-worker T`` on the first ``--images`` CIFAR-10 test images (a fresh --out each time)
and reports wall time, images/hour and the per-image compute (the ``seconds`` column).  Then it
times no-op task round trips on a 2-worker LocalCluster: one at a time (latency) and 400 in flight
(scheduler throughput).  Output: one line per measurement, and a JSON summary with --json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_layout(model, data, images, n, workers, threads, tmp) -> dict:
    out = Path(tmp) / f"r_{workers}x{threads}.tsv"
    cmd = [sys.executable, "-m", "intengine.cli", "certify-dataset", str(model), str(data), "--out", str(out),
           "--n", str(n), "--max", str(images), "--seed", "0", "--no-progress",
           "--workers", str(workers), "--threads-per-worker", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = out.read_text().splitlines()
    col = lines[0].split("\t").index("seconds")
    secs = [float(ln.split("\t")[col]) for ln in lines[1:]]
    return {"layout": f"{workers}x{threads}", "images": len(secs), "n": n, "wall_s": wall,
            "images_per_hour_incl_startup": 3600 * len(secs) / wall,
            "compute_s_per_image": sum(secs) / len(secs), "compute_s_sum": sum(secs),
            "overhead_s": wall - sum(secs) / workers}


def noop(x):
    return x


def scheduler_overhead(rounds: int = 200, burst: int = 400) -> dict:
    import logging

    from distributed import Client, LocalCluster, wait

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, silence_logs=logging.CRITICAL) as cluster, \
            Client(cluster) as client:
        client.submit(noop, -1, pure=False).result()  # warm
        t0 = time.perf_counter()
        for i in range(rounds):
            client.submit(noop, i, pure=False).result()
        latency = (time.perf_counter() - t0) / rounds
        t0 = time.perf_counter()
        futs = [client.submit(noop, i, pure=False) for i in range(burst)]
        wait(futs)
        throughput = (time.perf_counter() - t0) / burst
    return {"noop_round_trip_s": latency, "noop_per_task_in_flight_s": throughput}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "models" / "resnet20_sigma0.25.int8"))
    ap.add_argument("--data", default=os.environ.get("INTENGINE_DATA", str(ROOT.parent / "shared" / "data" /
                                                                          "cifar10_subset.npz")))
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--layouts", default="1x2,2x1", help="comma-separated WORKERSxTHREADS")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for layout in args.layouts.split(","):
            w, t = (int(v) for v in layout.split("x"))
            r = run_layout(args.model, args.data, args.images, args.n, w, t, tmp)
            results.append(r)
            print(f"{r['layout']}: {r['images']} images N={r['n']} in {r['wall_s']:.1f} s "
                  f"({r['images_per_hour_incl_startup']:.0f} images/hour incl. start-up), compute "
                  f"{r['compute_s_per_image']:.2f} s/image, wall - compute/workers = {r['overhead_s']:.1f} s",
                  flush=True)
    o = scheduler_overhead()
    print(f"no-op task: {1e3 * o['noop_round_trip_s']:.2f} ms round trip one at a time, "
          f"{1e3 * o['noop_per_task_in_flight_s']:.2f} ms per task with 400 in flight")
    if args.json:
        print(json.dumps({"layouts": results, **o}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
