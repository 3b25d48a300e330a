"""Certification throughput, side by side: intengine vs float32 torch (Cohen et al.), torch int8, ONNX Runtime.

One command, same machine, same weights where the peer can use them; microseconds per noisy sample
*including noise generation*, and ratios to intengine:

* ``intengine``       -- integer table sampler + ``add_noise_clip`` + numba engine (VNNI conv where available);
                         the sampler's share is timed separately. Validated first: the numba classes equal
                         the reference backend's on the same noisy batch.
* ``floatrs-eager``   -- Cohen et al.'s CERTIFY loop: ``x.repeat``, ``randn_like * sigma``, float32 NCHW eager.
* ``floatrs-tuned``   -- the same in channels_last under ``torch.inference_mode``.
* ``torch-int8``      -- FloatRS-quant: float Gaussian noise, then torch's own int8 model (FX post-training
                         quantization, x86 backend).
* ``onnxruntime``     -- the engine's model exported to ONNX (QLinearConv ...), integer noise from our sampler.

Each peer runs in its own process (its own threads setting and peak RSS). ResNet-20 uses the shipped
model file; ResNet-50 (224x224, 1000 classes) is built with random weights and calibrated observers,
since speed does not depend on the weight values.

    python benchmarks/certify_speed.py                       # both models, all peers
    python benchmarks/certify_speed.py --models resnet20 --seconds 3
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEERS = ("intengine", "floatrs-eager", "floatrs-tuned", "torch-int8", "onnxruntime")
DEFAULT_R20 = REPO / "models" / "resnet20_sigma0.25.int8"


# ----------------------------------------------------------------------------- workers

def _timed(step, seconds: float, batch: int) -> float:
    """Microseconds per sample of ``step()`` (one batch), after one warm-up call, for >= ``seconds``."""
    step()
    done, start = 0, time.perf_counter()
    while True:
        step()
        done += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and done >= 2:
            return elapsed / (done * batch) * 1e6


def _example_image(shape, seed=0):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def worker_intengine(model_path, batch, seconds, validate):
    import numpy as np

    import intengine
    from kernels.numba_backend import vnni
    from kernels.sampler import make_sampler, sigma_sq_from_sigma

    model = intengine.load_model(model_path)
    h, w, c = model.input_shape
    d = h * w * c
    x = _example_image((h, w, c)).reshape(-1)
    sampler = make_sampler(sigma_sq_from_sigma(model.sigma), "table")
    noisy = np.empty((batch, d), np.uint8)
    failed = np.empty(batch, np.uint8)
    state = {"start": 0}

    def sample():
        sampler.add_noise_clip(x, 1234, 1, 0, state["start"], noisy, failed)
        state["start"] += batch

    def step():
        sample()
        model.classify(noisy.reshape(batch, h, w, c), backend="numba")

    agree = None
    if validate:
        k = validate
        sampler.add_noise_clip(x, 99, 1, 0, 0, noisy[:k], failed[:k])
        fast = model.classify(noisy[:k].reshape(k, h, w, c), backend="numba")
        ref = model.classify(noisy[:k].reshape(k, h, w, c), backend="reference")
        agree = int((fast == ref).sum())
        if agree != k:
            raise SystemExit(f"validation failed: numba and reference classes differ on {k - agree}/{k} samples")
    total = _timed(step, seconds, batch)
    sampling = _timed(sample, max(1.0, seconds / 3), batch)
    return {"us": total, "sampler_us": sampling, "validated": agree, "vnni": bool(vnni.AVAILABLE)}


def _float_net(arch):
    import torch

    from export import models as fm

    torch.manual_seed(0)
    net = fm.resnet20() if arch == "resnet20" else fm.resnet50(num_classes=1000)
    return net.eval()


def worker_floatrs(arch, batch, seconds, sigma, tuned):
    import torch

    net = _float_net(arch)
    size = 32 if arch == "resnet20" else 224
    x = torch.from_numpy(_example_image((size, size, 3))).permute(2, 0, 1).float().div(255).unsqueeze(0)
    if tuned:
        net = net.to(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode() if tuned else torch.no_grad():
            b = x.repeat(batch, 1, 1, 1)
            if tuned:
                b = b.contiguous(memory_format=torch.channels_last)
            noise = torch.randn_like(b) * sigma
            net(b + noise).argmax(1)

    return {"us": _timed(step, seconds, batch)}


def worker_torch_int8(arch, batch, seconds, sigma):
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    net = _float_net(arch)
    size = 32 if arch == "resnet20" else 224
    example = torch.rand(4, 3, size, size)
    prepared = prepare_fx(net, get_default_qconfig_mapping("x86"), example_inputs=(example,))
    with torch.no_grad():
        for _ in range(4):
            prepared(torch.rand(8, 3, size, size))
    qnet = convert_fx(prepared)
    x = torch.from_numpy(_example_image((size, size, 3))).permute(2, 0, 1).float().div(255).unsqueeze(0)

    def step():
        with torch.inference_mode():
            b = x.repeat(batch, 1, 1, 1)
            qnet(b + torch.randn_like(b) * sigma).argmax(1)

    return {"us": _timed(step, seconds, batch)}


def worker_onnxruntime(model_path, batch, seconds, threads):
    import numpy as np
    import onnxruntime as ort

    import intengine
    from export.onnx_export import export_onnx
    from kernels.sampler import make_sampler, sigma_sq_from_sigma

    model = intengine.load_model(model_path)
    h, w, c = model.input_shape
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(model_path, onnx_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = _example_image((h, w, c)).reshape(-1)
    sampler = make_sampler(sigma_sq_from_sigma(model.sigma), "table")
    noisy = np.empty((batch, h * w * c), np.uint8)
    failed = np.empty(batch, np.uint8)

    def step():
        sampler.add_noise_clip(x, 1234, 1, 0, 0, noisy, failed)
        logits = session.run(None, {name: noisy.reshape(batch, h, w, c)})[0]
        np.argmax(logits, axis=1)

    return {"us": _timed(step, seconds, batch)}


def worker_main(args) -> None:
    import resource

    if args.peer in ("floatrs-eager", "floatrs-tuned", "torch-int8"):
        import torch

        torch.set_num_threads(args.threads)
    if args.peer == "intengine":
        import numba

        numba.set_num_threads(args.threads)
        result = worker_intengine(args.model_path, args.batch, args.seconds, args.validate)
    elif args.peer in ("floatrs-eager", "floatrs-tuned"):
        result = worker_floatrs(args.arch, args.batch, args.seconds, args.sigma, args.peer == "floatrs-tuned")
    elif args.peer == "torch-int8":
        result = worker_torch_int8(args.arch, args.batch, args.seconds, args.sigma)
    else:
        result = worker_onnxruntime(args.model_path, args.batch, args.seconds, args.threads)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


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


def float_state_dict_bytes(arch: str) -> int:
    net = _float_net(arch)
    return sum(t.numel() * 4 for t in net.state_dict().values() if t.is_floating_point())


def spawn(peer, arch, model_path, batch, seconds, threads, sigma, validate) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", peer, "--arch", arch,
           "--model-path", str(model_path), "--batch", str(batch), "--seconds", str(seconds),
           "--threads", str(threads), "--sigma", str(sigma), "--validate", str(validate)]
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " | ".join(tail) or f"exit {proc.returncode}"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet20,resnet50")
    p.add_argument("--model", type=Path, default=DEFAULT_R20, help="ResNet-20 model.int8")
    p.add_argument("--peers", default=",".join(PEERS))
    p.add_argument("--batch-resnet20", type=int, default=400)
    p.add_argument("--batch-resnet50", type=int, default=32)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per peer")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--json", type=Path, help="also write the results here")
    # worker mode (internal)
    p.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    p.add_argument("--peer", help=argparse.SUPPRESS)
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
    rows = []
    print(f"threads={args.threads}  sigma={args.sigma}  seconds/peer={args.seconds}  (us per noisy sample, noise included)")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in [m for m in args.models.split(",") if m]:
            if arch == "resnet20":
                model_path, batch, validate = args.model, args.batch_resnet20, 16
            else:
                model_path, batch, validate = Path(tmp) / "resnet50.int8", args.batch_resnet50, 1
                build_resnet50(model_path)
            results = {}
            for peer in peers:
                results[peer] = spawn(peer, arch, model_path, batch, args.seconds, args.threads, args.sigma, validate)
                r = results[peer]
                print(f"  {arch:9s} {peer:14s} " + (f"{r['us']:10.1f} us" if "us" in r else f"ERROR {r['error']}"),
                      flush=True)
            sizes = {"int8_file_kb": model_path.stat().st_size / 1024,
                     "float32_state_dict_kb": float_state_dict_bytes(arch) / 1024}
            rows.append({"arch": arch, "batch": batch, "results": results, "sizes": sizes})

    print()
    header = "| model | peer | us / sample | intengine speed-up | peak RSS (MB) |"
    print(header)
    print("|---|---|---:|---:|---:|")
    for row in rows:
        ours = row["results"].get("intengine", {}).get("us")
        for peer, r in row["results"].items():
            if "us" not in r:
                print(f"| {row['arch']} | {peer} | error | | |")
                continue
            ratio = f"{r['us'] / ours:.2f}x" if ours else "-"
            extra = ""
            if peer == "intengine":
                extra = f" (sampler {r['sampler_us']:.1f} us = {100 * r['sampler_us'] / r['us']:.0f}%" \
                        f", VNNI {'on' if r['vnni'] else 'off'}, validated {r['validated']}/{r['validated']})"
            print(f"| {row['arch']} (batch {row['batch']}) | {peer}{extra} | {r['us']:.1f} | {ratio} | {r['peak_rss_mb']:.0f} |")
        s = row["sizes"]
        print(f"| {row['arch']} | file size: model.int8 {s['int8_file_kb']:.0f} KB vs float32 weights "
              f"{s['float32_state_dict_kb']:.0f} KB | | | |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
