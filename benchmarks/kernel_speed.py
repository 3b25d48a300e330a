"""Conv throughput on every distinct ResNet-20 conv shape: intengine (Numba) vs torch int8 vs torch float32.

    python benchmarks/kernel_speed.py [--batch 256] [--threads 2] [--repeat 5]

First checks, per shape on a small batch, that the Numba conv is bit-identical
to the NumPy reference (and reports its distance to torch's int8 conv), then
times each implementation on the same shapes in one run and prints GMAC/s and
ratios.  MACs = N * OH * OW * O * KH * KW * C.  Each timing is the best of
``--repeat`` runs after one warm-up run (the minimum is the least disturbed by
other load on a shared machine).  Torch int8 uses the x86 engine with
channels_last quantized tensors and weights packed once; torch float32 uses
channels_last tensors under inference mode.  intengine's time includes its
argument checks and the per-call int16 widening of the weights.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernels  # noqa: E402
from kernels.fixedpoint import quantize_multipliers  # noqa: E402

# (name, H=W, C, O, kernel, stride, padding): CIFAR ResNet-20 with 1x1 (option B) shortcuts
RESNET20_CONVS = [
    ("stem 3x3", 32, 3, 16, 3, 1, 1),
    ("stage1 3x3", 32, 16, 16, 3, 1, 1),
    ("stage2 3x3 s2", 32, 16, 32, 3, 2, 1),
    ("stage2 1x1 s2", 32, 16, 32, 1, 2, 0),
    ("stage2 3x3", 16, 32, 32, 3, 1, 1),
    ("stage3 3x3 s2", 16, 32, 64, 3, 2, 1),
    ("stage3 1x1 s2", 16, 32, 64, 1, 2, 0),
    ("stage3 3x3", 8, 64, 64, 3, 1, 1),
]


def make_case(rng, batch, size, c, o, k):
    x = rng.integers(0, 256, size=(batch, size, size, c), dtype=np.uint8)
    weight = rng.integers(-127, 128, size=(o, k, k, c), dtype=np.int8)
    bias = rng.integers(-2000, 2000, size=o).astype(np.int32)
    s_in, s_out = 1 / 255, 0.05
    # std of acc ~ sqrt(K) * rms(x) * std(w) ~ sqrt(K) * 147 * 73; aim for ~ +-40 output steps
    real = 40.0 / ((k * k * c) ** 0.5 * 147.0 * 73.0)
    s_w = np.full(o, real * s_out / s_in)
    m, s = quantize_multipliers(s_in * s_w / s_out)
    return x, weight, bias, m, s, s_in, s_w, s_out


def timed(fn, repeat):
    fn()  # warm-up (compilation, packing caches)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


class TorchConvs:
    """torch int8 (x86 engine) and float32 convs on the same integers, built once per shape."""

    def __init__(self, torch, x, weight, bias, s_in, s_w, s_out, zp_in, zp_out, stride, padding):
        self.torch = torch
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q_x = torch._make_per_tensor_quantized_tensor(
                torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), s_in, zp_in)
            self.q_x = q_x.contiguous(memory_format=torch.channels_last)
            q_w = torch._make_per_channel_quantized_tensor(
                torch.from_numpy(np.ascontiguousarray(weight.transpose(0, 3, 1, 2))),
                torch.from_numpy(s_w), torch.zeros(len(s_w), dtype=torch.int64), 0)
        bias_real = torch.from_numpy(bias * s_in * s_w).float()
        self.packed = torch.ops.quantized.conv2d_prepack(q_w, bias_real, [stride, stride],
                                                         [padding, padding], [1, 1], 1)
        self.s_out, self.zp_out = s_out, zp_out
        self.f_x = self.q_x.dequantize().contiguous(memory_format=torch.channels_last)
        self.f_w = q_w.dequantize().contiguous(memory_format=torch.channels_last)
        self.f_b = bias_real
        self.stride, self.padding = stride, padding

    def int8(self):
        return self.torch.ops.quantized.conv2d(self.q_x, self.packed, self.s_out, self.zp_out)

    def float32(self):
        with self.torch.inference_mode():
            return self.torch.nn.functional.conv2d(self.f_x, self.f_w, self.f_b, self.stride, self.padding)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="noise samples per call (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="threads for numba and torch (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--check-batch", type=int, default=4, help="batch of the bit-exactness check")
    args = parser.parse_args(argv)

    import numba

    numba.set_num_threads(args.threads)
    try:
        import torch
    except ImportError:  # the benchmark still reports intengine's numbers
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)
        engines = torch.backends.quantized.supported_engines
        torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"

    reference = kernels.get_backend("reference")
    fast = kernels.get_backend("numba")
    rng = np.random.default_rng(0)
    zp_in, zp_out = 0, 128

    print(f"# numba {numba.__version__} threads={args.threads} batch={args.batch} repeat={args.repeat}"
          + (f"; torch {torch.__version__} engine={torch.backends.quantized.engine}" if torch else "; torch absent"))
    print("# bit-exactness: numba vs reference on a batch of", args.check_batch)
    for name, size, c, o, k, stride, padding in RESNET20_CONVS:
        x, weight, bias, m, s, s_in, s_w, s_out = make_case(rng, args.check_batch, size, c, o, k)
        conv_args = (x, weight, bias, zp_in, m, s, zp_out, stride, padding, 0, 255)
        expected = reference.conv2d(*conv_args)
        got = fast.conv2d(*conv_args)
        if not np.array_equal(expected, got):
            print(f"FAIL {name}: numba differs from the reference in {np.count_nonzero(expected != got)} outputs")
            return 1
        line = f"  ok {name:14s} ({np.count_nonzero((expected > 0) & (expected < 255)) / expected.size:.0%} unclamped)"
        if torch is not None:
            theirs = TorchConvs(torch, x, weight, bias, s_in, s_w, s_out, zp_in, zp_out, stride, padding)
            diff = expected.astype(np.int64) - theirs.int8().int_repr().numpy().transpose(0, 2, 3, 1)
            line += f"; vs torch int8: max |diff| {np.abs(diff).max()} LSB, mean {diff.mean():+.4f}"
        print(line)

    header = (f"{'layer':14s} {'input':>10s} {'O':>3s} {'k/s':>4s} {'GMAC':>6s} | {'intengine':>9s} "
              f"{'torch i8':>9s} {'torch f32':>9s} | {'/i8':>5s} {'/f32':>5s}   (GMAC/s)")
    print(header)
    print("-" * len(header))
    totals = {"numba": 0.0, "int8": 0.0, "f32": 0.0}
    total_macs = 0
    for name, size, c, o, k, stride, padding in RESNET20_CONVS:
        x, weight, bias, m, s, s_in, s_w, s_out = make_case(rng, args.batch, size, c, o, k)
        out_size = (size + 2 * padding - k) // stride + 1
        macs = args.batch * out_size * out_size * o * k * k * c
        total_macs += macs
        t_numba = timed(lambda: fast.conv2d(x, weight, bias, zp_in, m, s, zp_out, stride, padding, 0, 255),
                        args.repeat)
        totals["numba"] += t_numba
        rate = {"numba": macs / t_numba / 1e9}
        if torch is not None:
            convs = TorchConvs(torch, x, weight, bias, s_in, s_w, s_out, zp_in, zp_out, stride, padding)
            t_int8 = timed(convs.int8, args.repeat)
            t_f32 = timed(convs.float32, args.repeat)
            totals["int8"] += t_int8
            totals["f32"] += t_f32
            rate["int8"], rate["f32"] = macs / t_int8 / 1e9, macs / t_f32 / 1e9
        print(f"{name:14s} {f'{size}x{size}x{c}':>10s} {o:>3d} {f'{k}/{stride}':>4s} {macs / 1e9:6.2f} | "
              + f"{rate['numba']:9.1f} "
              + (f"{rate['int8']:9.1f} {rate['f32']:9.1f} | {rate['numba'] / rate['int8']:5.2f} "
                 f"{rate['numba'] / rate['f32']:5.2f}" if torch is not None else ""))
    print("-" * len(header))
    line = f"{'all shapes':14s} {'':>10s} {'':>3s} {'':>4s} {total_macs / 1e9:6.2f} | {total_macs / totals['numba'] / 1e9:9.1f} "
    if torch is not None:
        r8, rf = total_macs / totals["int8"] / 1e9, total_macs / totals["f32"] / 1e9
        line += f"{r8:9.1f} {rf:9.1f} | {totals['int8'] / totals['numba']:5.2f} {totals['f32'] / totals['numba']:5.2f}"
    print(line)
    print("# ratios > 1: intengine is faster; 'all shapes' = total MACs / total time (each shape once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
