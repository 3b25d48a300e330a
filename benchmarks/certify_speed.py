"""Certification throughput, side by side, each peer configured as its own documentation recommends.

Microseconds per noisy sample *including noise generation*, on the same machine, in one run:

* ``intengine``       -- table sampler + fused ``add_noise_clip`` + the numba engine (the conv2d rung this
                         CPU selects: AVX-512 VNNI, AVX2 or portable). Validated first: the classes equal the
                         reference backend's on the same noisy batch.
* ``intengine-static`` -- the same engine with every thread given one equal share of each layer
                         (``INTENGINE_CLAIMS_PER_THREAD=1``: the static split of Numba's ``prange``) instead
                         of claiming small chunks dynamically; the A/B for the loaded rounds.
* ``floatrs-eager``   -- Cohen et al.'s CERTIFY loop: ``x.repeat``, ``randn_like * sigma``, float32 NCHW eager.
* ``floatrs-tuned``   -- the same in channels_last under ``torch.inference_mode``.
* ``torch-int8-fx``   -- torch's int8 path as its docs recommend: FX graph-mode post-training quantization,
                         x86 backend, conv-bn-relu fused (the float model uses ``F.relu``); the converted graph
                         is checked to hold exactly one quantize and one dequantize (no float islands).
                         Float noise, as torch's int8 models take float input.
* ``openvino``        -- the engine's model as standard QDQ ONNX (``export.onnx_export.export_qdq``: uint8 NHWC
                         input, int8 weights: with uint8 weights the plugin runs f32 convolutions) on
                         OpenVINO's CPU plugin with the
                         THROUGHPUT hint and the plugin's optimal number of async requests (the documented way
                         to fill every core), and with the LATENCY hint on one request; the faster is
                         reported. Integer noise from our sampler.
* ``onnxruntime``     -- the QDQ model with all graph optimizations (the default, ``ORT_ENABLE_ALL``),
                         intra-op threads = the run's threads; weights as ONNX Runtime's quantization docs
                         recommend for the CPU: int8 (U8S8) where it has VNNI (AVX-512 VNNI or AVX-VNNI:
                         ``vpdpbusd`` accumulates in int32), uint8 (zero point 128) elsewhere, where its fused
                         kernels add uint8 x int8 pairs in saturating 16-bit arithmetic (tests/test_onnx.py
                         measures up to 75 LSB with int8 weights) and uint8 x uint8 do not.

Each ONNX peer reports its agreement with the exact integer network (largest logit difference in LSB, top-1 agreement)
on a noisy batch, so a fast peer that computes a different network is visible as such.

Each peer reports what it executed: the conv2d rung (intengine), the oneDNN primitives of one forward
(``torch.backends.mkldnn.verbose``; none means FBGEMM ran), OpenVINO's runtime model (convolution
primitive types and precisions), ONNX Runtime's optimized graph (op types).

Protocol: every peer runs in its own long-lived process (its own threads setting and peak RSS). After all
are set up, rounds are interleaved: round r runs peer 1, 2, ... for ``--seconds`` each, while the others
wait idle. Reported: the fastest batch and the median batch over all rounds. Then the same rounds run
beside one background busy process (``--loaded``, default on), and each peer's loaded/idle throughput
is reported. ResNet-20 uses the shipped model file; ResNet-50 (224x224, 1000 classes) is built with
random weights and calibrated observers (speed does not depend on the weight values).

    python benchmarks/certify_speed.py                                  # both models, all peers
    python benchmarks/certify_speed.py --models resnet20 --rounds 3 --seconds 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEERS = ("intengine", "intengine-static", "floatrs-eager", "floatrs-tuned", "torch-int8-fx", "openvino",
         "onnxruntime")
DEFAULT_R20 = REPO / "models" / "resnet20_sigma0.25.int8"


# ----------------------------------------------------------------------------- workers

def _batch_times(step, seconds: float) -> list[float]:
    """Seconds of each ``step()`` call (one batch) for at least ``seconds`` and two batches."""
    times, start = [], time.perf_counter()
    while True:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if time.perf_counter() - start >= seconds and len(times) >= 2:
            return times


def _example_image(shape, seed=0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


class _CaptureStdout:
    """Capture what native code writes to file descriptor 1 (oneDNN's verbose lines)."""

    def __enter__(self):
        sys.stdout.flush()
        self._file = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(1)
        os.dup2(self._file.fileno(), 1)
        return self

    def __exit__(self, *exc):
        sys.stdout.flush()
        os.dup2(self._saved, 1)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()


def _ort_weight_type() -> str:
    """ONNX Runtime's recommended weight type on this CPU: int8 with VNNI, uint8 without (see the docstring)."""
    from kernels.numba_backend.microkernel import host_features

    f = host_features()
    return "int8" if f.get("avx512vnni") or f.get("avxvnni") else "uint8"


def _sampler_for(model, batch):
    import numpy as np

    from kernels.sampler import make_sampler, sigma_sq_from_sigma

    h, w, c = model.input_shape
    x = _example_image((h, w, c)).reshape(-1)
    sampler = make_sampler(sigma_sq_from_sigma(model.sigma), "table")
    noisy = np.empty((batch, h * w * c), np.uint8)
    failed = np.empty(batch, np.uint8)
    state = {"start": 0}

    def sample():
        sampler.add_noise_clip(x, 1234, 1, 0, state["start"], noisy, failed)
        state["start"] = (state["start"] + batch) % (1 << 31)
        return noisy.reshape(batch, h, w, c)

    return sample


def setup_intengine(args):
    import numba

    import intengine
    from kernels.numba_backend import op_conv2d, worksharing

    model = intengine.load_model(args.model_path)
    batch = args.batch
    sample = _sampler_for(model, batch)
    k = args.validate
    if k:
        noisy = sample()[:k]
        fast, ref = model.classify(noisy, backend="numba"), model.classify(noisy, backend="reference")
        if not (fast == ref).all():
            raise SystemExit(f"validation failed: numba and reference classes differ on {(fast != ref).sum()}/{k}")

    def step():
        model.classify(sample(), backend="numba")

    step()  # compile, pack weights, size the buffers
    sampling = statistics.median(_batch_times(sample, 1.0)) / batch * 1e6
    executed = (f"conv2d rung {op_conv2d.SELECTED} (available: {', '.join(op_conv2d.available_rungs())}), "
                f"numba {numba.threading_layer()} threads, {_split_text(worksharing.claims_per_thread())}; "
                f"sampler {sampling:.1f} us/sample; "
                f"validated {k}/{k} vs reference")
    return step, executed


def _split_text(claims: int) -> str:
    return "static split (one share per thread)" if claims == 1 else f"dynamic split ({claims} claims per thread)"


def _agreement(model, noisy, run) -> str:
    """A peer's uint8 logits on one noisy batch against the exact integer network (the engine)."""
    import numpy as np

    exact = model.forward(noisy).astype(np.int64)
    theirs = np.asarray(run(noisy)).astype(np.int64)
    top1 = float((exact.argmax(1) == theirs.argmax(1)).mean())
    return f"vs the exact network: max {np.abs(exact - theirs).max()} LSB, top-1 agreement {100 * top1:.1f}%"


def _float_net(arch):
    import torch

    from export import models as fm

    torch.manual_seed(0)
    net = fm.resnet20() if arch == "resnet20" else fm.resnet50(num_classes=1000)
    return net.eval()


def _onednn_summary(fn) -> str:
    """Which oneDNN primitives one call of ``fn`` executed ("none" means torch ran FBGEMM or ATen code)."""
    import torch

    with _CaptureStdout() as cap, torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        fn()
    counts = Counter()
    for line in cap.text.splitlines():
        parts = line.split(",")
        if line.startswith("onednn_verbose") and "exec" in parts and len(parts) > 6:
            i = parts.index("exec")
            counts[f"{parts[i + 2]}:{parts[i + 3]}"] += 1
    if not counts:
        return "oneDNN: no primitives (FBGEMM / ATen kernels)"
    return "oneDNN " + ", ".join(f"{k} x{v}" for k, v in counts.most_common(4))


def setup_floatrs(args, tuned):
    import torch

    net = _float_net(args.arch)
    size = 32 if args.arch == "resnet20" else 224
    x = torch.from_numpy(_example_image((size, size, 3))).permute(2, 0, 1).float().div(255).unsqueeze(0)
    if tuned:
        net = net.to(memory_format=torch.channels_last)
    batch, sigma = args.batch, args.sigma

    def step():
        with torch.inference_mode() if tuned else torch.no_grad():
            b = x.repeat(batch, 1, 1, 1)
            if tuned:
                b = b.contiguous(memory_format=torch.channels_last)
            net(b + torch.randn_like(b) * sigma).argmax(1)

    step()
    return step, "float32 " + _onednn_summary(step)


def setup_torch_int8_fx(args):
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    net = _float_net(args.arch)
    size = 32 if args.arch == "resnet20" else 224
    prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), example_inputs=(torch.rand(4, 3, size, size),))
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.rand(8, 3, size, size))
    qnet = convert_fx(prepared)
    # FX's own check that the whole network is integer: one quantize at the input, one dequantize at the end
    targets = Counter(str(n.target) for n in qnet.graph.nodes if n.op in ("call_function", "call_method"))
    quantizes = sum(v for k, v in targets.items() if "quantize_per_tensor" in k)
    dequantizes = sum(v for k, v in targets.items() if "dequantize" in k)
    if (quantizes, dequantizes) != (1, 1):
        raise SystemExit(f"torch FX left float islands: {quantizes} quantize / {dequantizes} dequantize nodes")
    x = torch.from_numpy(_example_image((size, size, 3))).permute(2, 0, 1).float().div(255).unsqueeze(0)
    batch, sigma = args.batch, args.sigma

    def step():
        with torch.inference_mode():
            b = x.repeat(batch, 1, 1, 1)
            qnet(b + torch.randn_like(b) * sigma).argmax(1)

    step()
    return step, f"FX graph: 1 quantize + 1 dequantize; engine x86; {_onednn_summary(step)}"


def setup_openvino(args):
    import numpy as np
    import openvino as ov

    import intengine
    from export.onnx_export import export_qdq

    model = intengine.load_model(args.model_path)
    batch = args.batch
    h, w, c = model.input_shape
    tmp = tempfile.mkdtemp()
    # int8 weights: with uint8 weights OpenVINO's CPU plugin falls back to f32 convolutions
    onnx_path = export_qdq(args.model_path, os.path.join(tmp, "model.onnx"), weight_type="int8")
    core = ov.Core()
    ov_model = core.read_model(str(onnx_path))
    ov_model.reshape([batch, h, w, c])
    threads = {"INFERENCE_NUM_THREADS": args.threads}
    compiled = {
        "throughput": core.compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **threads}),
        "latency": core.compile_model(ov_model, "CPU", {"PERFORMANCE_HINT": "LATENCY", **threads}),
    }
    sample = _sampler_for(model, batch)

    # THROUGHPUT: the plugin's optimal number of requests, each on a slice of the batch (async)
    cm = compiled["throughput"]
    n_req = max(1, min(batch, cm.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    bounds = np.linspace(0, batch, n_req + 1).astype(int)
    sliced = []
    for i in range(n_req):
        sub = ov_model.clone()
        sub.reshape([int(bounds[i + 1] - bounds[i]), h, w, c])
        sliced.append(core.compile_model(sub, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT", **threads}))
    requests = [m.create_infer_request() for m in sliced]

    def step_throughput(x=None):
        x = sample() if x is None else x
        for i, req in enumerate(requests):
            req.start_async({0: x[bounds[i]:bounds[i + 1]]})
        for req in requests:
            req.wait()
        return np.concatenate([req.get_output_tensor(0).data for req in requests])

    latency_request = compiled["latency"].create_infer_request()

    def step_latency(x=None):
        return latency_request.infer({0: sample() if x is None else x})[0]

    timings = {}
    for name, fn in (("throughput", step_throughput), ("latency", step_latency)):
        fn()
        timings[name] = min(_batch_times(fn, 1.0))
    best = min(timings, key=timings.get)
    run = step_throughput if best == "throughput" else step_latency
    agreement = _agreement(model, sample(), run)

    def step():
        np.argmax(run(), axis=1)

    runtime = (sliced[0] if best == "throughput" else compiled["latency"]).get_runtime_model()
    convs = Counter()
    for op in runtime.get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "Convolution":
            convs[f"{info['primitiveType'].astype(str)} ({info['runtimePrecision'].astype(str)})"] += 1
    executed = (f"{best} hint ({n_req} async requests)" if best == "throughput" else "latency hint (1 request)")
    executed += f"; version {ov.get_version().split('-')[0]}; convolutions: " + ", ".join(
        f"{k} x{v}" for k, v in convs.most_common()) + f"; {agreement}"
    return step, executed


def setup_onnxruntime(args):
    import numpy as np
    import onnx
    import onnxruntime as ort

    import intengine
    from export.onnx_export import export_qdq

    model = intengine.load_model(args.model_path)
    tmp = tempfile.mkdtemp()
    onnx_path = export_qdq(args.model_path, os.path.join(tmp, "model.onnx"), weight_type=_ort_weight_type())
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    sample = _sampler_for(model, args.batch)

    def run(x=None):
        return session.run(None, {name: sample() if x is None else x})[0]

    def step():
        np.argmax(run(), axis=1)

    step()
    ops = Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    executed = (f"onnxruntime {ort.__version__}, CPUExecutionProvider, {_ort_weight_type()} weights, optimized graph: "
                + ", ".join(f"{k} x{v}" for k, v in ops.most_common(5)) + f"; {_agreement(model, sample(), run)}")
    return step, executed


SETUP = {
    "intengine": setup_intengine,
    "intengine-static": setup_intengine,
    "floatrs-eager": lambda a: setup_floatrs(a, tuned=False),
    "floatrs-tuned": lambda a: setup_floatrs(a, tuned=True),
    "torch-int8-fx": setup_torch_int8_fx,
    "openvino": setup_openvino,
    "onnxruntime": setup_onnxruntime,
}


def worker_main(args) -> None:
    """Set the peer up, print READY, then time one round per ``round SECONDS`` line on stdin."""
    import resource

    if not args.peer.startswith("intengine"):
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    else:
        import numba

        numba.set_num_threads(args.threads)
    step, executed = SETUP[args.peer](args)
    print("READY " + json.dumps({"executed": executed}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] != "round":
            break
        times = _batch_times(step, float(cmd[1]))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("ROUND " + json.dumps({"batch_seconds": times, "peak_rss_mb": rss}), flush=True)


# ----------------------------------------------------------------------------- driver

def build_resnet50(path: Path) -> None:
    """A ResNet-50 model.int8 with random weights and observers calibrated on random images."""
    import numpy as np
    import torch

    from export import convert, qat

    qnet = qat.quantize_model(_float_net("resnet50"))
    qnet.train()
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for _ in range(2):
            qnet(torch.from_numpy(rng.integers(0, 256, (4, 3, 224, 224)).astype(np.float32) / 255))
    qnet.freeze_observers(True)
    qnet.eval()
    convert.write_model(qnet, path, sigma=0.25, class_names=[str(i) for i in range(1000)],
                        provenance={"note": "random weights, for speed benchmarks only"})


class Worker:
    def __init__(self, peer, arch, model_path, batch, threads, sigma, validate):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", peer, "--arch", arch,
               "--model-path", str(model_path), "--batch", str(batch), "--threads", str(threads),
               "--sigma", str(sigma), "--validate", str(validate)]
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        if peer == "intengine-static":
            env["INTENGINE_CLAIMS_PER_THREAD"] = "1"
        self.peer = peer
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        self.executed, self.error, self.rounds = "", None, []
        ready = self._read("READY")
        if ready is None:
            self.error = self._stderr_tail()
        else:
            self.executed = ready["executed"]

    def _read(self, tag):
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        return None

    def _stderr_tail(self):
        self.proc.kill()
        tail = (self.proc.stderr.read() or "").strip().splitlines()[-3:]
        return " | ".join(tail) or f"exit {self.proc.poll()}"

    def round(self, seconds):
        if self.error:
            return None
        self.proc.stdin.write(f"round {seconds}\n")
        self.proc.stdin.flush()
        result = self._read("ROUND")
        if result is None:
            self.error = self._stderr_tail()
        return result

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()


def _busy_process():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run_rounds(workers, rounds, seconds, batch, label):
    per_peer = {w.peer: [] for w in workers}
    rss = {}
    for r in range(rounds):
        for w in workers:
            res = w.round(seconds)
            if res is not None:
                per_peer[w.peer].extend(t / batch * 1e6 for t in res["batch_seconds"])
                rss[w.peer] = res["peak_rss_mb"]
        best = ", ".join(f"{p} {min(v):.0f}" for p, v in per_peer.items() if v)
        print(f"  [{label}] round {r + 1}/{rounds}: fastest us/sample so far: {best}", flush=True)
    return {p: {"fastest_us": min(v), "median_us": statistics.median(v), "batches": len(v), "peak_rss_mb": rss[p]}
            for p, v in per_peer.items() if v}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet50")
    p.add_argument("--model", type=Path, default=DEFAULT_R20, help="ResNet-20 model.int8")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--batch-resnet20", type=int, default=400)
    p.add_argument("--batch-resnet50", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per peer and round (default 3)")
    p.add_argument("--no-loaded", action="store_true", help="skip the rounds beside a background busy process")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--json", type=Path, help="also write the results here")
    # worker mode (internal)
    p.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--arch", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--validate", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        args.peer = args.worker
        worker_main(args)
        return 0

    peers = [x for x in args.peers.split(",") if x]
    print(f"threads={args.threads} sigma={args.sigma} rounds={args.rounds} x {args.seconds} s per peer "
          f"(us per noisy sample, noise included; cpu: {_cpu_name()})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in [m for m in args.models.split(",") if m]:
            if arch == "resnet20":
                model_path, batch, validate = args.model, args.batch_resnet20, 16
            else:
                model_path, batch, validate = Path(tmp) / "resnet50.int8", args.batch_resnet50, 2
                build_resnet50(model_path)
            workers = []
            for peer in peers:  # set up one at a time, so no set-up overlaps a timed round
                w = Worker(peer, arch, model_path, batch, args.threads, args.sigma, validate)
                print(f"  {arch} {peer}: " + (f"ERROR {w.error}" if w.error else w.executed), flush=True)
                workers.append(w)
            try:
                idle = run_rounds(workers, args.rounds, args.seconds, batch, f"{arch} idle")
                loaded = {}
                if not args.no_loaded:
                    busy = _busy_process()
                    try:
                        time.sleep(0.5)
                        loaded = run_rounds(workers, args.rounds, args.seconds, batch, f"{arch} loaded")
                    finally:
                        busy.kill()
            finally:
                for w in workers:
                    w.close()
            rows.append({"arch": arch, "batch": batch, "idle": idle, "loaded": loaded,
                         "executed": {w.peer: w.executed for w in workers},
                         "errors": {w.peer: w.error for w in workers if w.error},
                         "int8_file_kb": model_path.stat().st_size / 1024})
    print()
    print(report(rows, args))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def report(rows, args) -> str:
    out = ["| model | peer | fastest batch (us/sample) | median | intengine speed-up (fastest) | "
           "loaded / idle throughput | peak RSS (MB) |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ours = row["idle"].get("intengine", {}).get("fastest_us")
        for peer, r in sorted(row["idle"].items(), key=lambda kv: kv[1]["fastest_us"]):
            ratio = f"{r['fastest_us'] / ours:.2f}x" if ours else "-"
            loaded = row["loaded"].get(peer)
            lo = f"{r['median_us'] / loaded['median_us']:.2f}" if loaded else "-"
            name = f"**{peer}**" if peer == "intengine" else peer
            out.append(f"| {row['arch']} (batch {row['batch']}) | {name} | {r['fastest_us']:.1f} | "
                       f"{r['median_us']:.1f} | {ratio} | {lo} | {r['peak_rss_mb']:.0f} |")
        for peer, err in row["errors"].items():
            out.append(f"| {row['arch']} | {peer} | error: {err} | | | | |")
    out.append("")
    out.append("What each peer executed:")
    for row in rows:
        for peer, text in row["executed"].items():
            if text:
                out.append(f"* {row['arch']} {peer}: {text}")
    out.append("")
    out.append("Loaded / idle: median throughput beside one background busy process over median throughput alone.")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
