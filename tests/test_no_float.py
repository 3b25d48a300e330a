"""No float in the hot loop: the LLVM IR of every Numba kernel is integer-only.

Numba code loaded from the on-disk cache carries no IR, so the kernels are
compiled and inspected in a child process with an empty ``NUMBA_CACHE_DIR``.
The child runs every op of the numba backend once on small real arguments,
recording the exact arguments each ``@njit`` kernel receives from its wrapper,
then calls :func:`kernels.ircheck.assert_integer_only` on each kernel with
those arguments (so the check covers the types the engine really uses), and
on the scalar requantization helpers.

Also here: a deliberately float kernel must be caught, and ``kernels/`` and
``intengine/`` must never import torch or onnx.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

import kernels
from kernels.ircheck import assert_integer_only, float_tokens_in_ir, llvm_ir_for

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import importlib, json, sys
    import numpy as np
    from numba.core.registry import CPUDispatcher
    import kernels
    from kernels.fixedpoint import (multiply_by_quantized_multiplier_scalar,
                                    quantize_multipliers, requantize_round_half_up_scalar)
    from kernels.ircheck import assert_integer_only

    recorded = {}

    def record(op, module):
        for name, obj in list(vars(module).items()):
            # the kernels the Python wrappers call (by convention named *_kernel); the
            # helpers they call are linked into their IR and checked with them
            if isinstance(obj, CPUDispatcher) and name.endswith("_kernel"):
                def spy(*args, _obj=obj, _name=name):
                    recorded.setdefault(f"{op}:{_name}", (_obj, args))
                    return _obj(*args)
                setattr(module, name, spy)

    for op in kernels.OPS:
        record(op, importlib.import_module(f"kernels.numba_backend.op_{op}"))
    for module in ("vnni", "avx2", "microkernel"):  # the SIMD conv rungs and their shared padding kernel
        record("conv2d", importlib.import_module(f"kernels.numba_backend.{module}"))

    rng = np.random.default_rng(0)
    fast = kernels.get_backend("numba")
    x = rng.integers(0, 256, size=(2, 6, 6, 3), dtype=np.uint8)
    w = rng.integers(-127, 128, size=(4, 3, 3, 3), dtype=np.int8)
    m, s = quantize_multipliers([0.01, 0.02, 0.5, 1.5])
    fast.conv2d(x, w, np.arange(4, dtype=np.int32), 3, m, s, 7, 1, 1, 7, 255)
    for name in kernels.available_backends():  # every conv2d rung this CPU has
        if name.startswith("numba-"):
            conv = kernels.get_backend(name).conv2d
            conv(x, w, np.arange(4, dtype=np.int32), 3, m, s, 7, 1, 1, 7, 255)
            # the engine's conv fused with its residual add (_conv2d_add_<rung>_kernel)
            fused = conv.prepare_add(w, np.arange(4, dtype=np.int32), 3, m, s, 7, 1, 1, 7, 255, input_shape=x.shape[1:],
                                     add=(7, 1 << 30, -1, 9, 1 << 30, -2, 128, 0, 255))
            y = np.empty((2, 6, 6, 4), np.uint8)
            fused(x, rng.integers(0, 256, size=y.shape, dtype=np.uint8), y, np.empty_like(y))
    fast.linear(x.reshape(2, -1), rng.integers(-127, 128, size=(4, 108), dtype=np.int8), np.arange(4, dtype=np.int32), 3, m, s, 7, 0, 255)
    fast.add_round_half_up(x, x[::-1].copy(), 1, 1 << 30, -1, 2, 1 << 30, -2, 128, 0, 255)
    fast.avg_pool_round_half_up(x, 3, 1, 0, 1 << 30, -3, 0, 0, 255)
    fast.max_pool(x, 3, 2, 1)
    fast.argmax(x.reshape(2, -1))

    results = {}
    def check(name, dispatcher, args):
        try:
            assert_integer_only(dispatcher, *args)
            results[name] = ""
        except AssertionError as error:
            results[name] = str(error)

    for name, (dispatcher, args) in recorded.items():
        check(name, dispatcher, args)
    # the one home of requantization, for the argument types the kernels pass
    check("fixedpoint:requantize_round_half_up_scalar", requantize_round_half_up_scalar,
          (np.int64(-12345), np.int32(1 << 30), np.int32(-5)))
    check("fixedpoint:requantize_round_half_up_scalar(int64)", requantize_round_half_up_scalar,
          (np.int64(-12345), 1 << 30, -5))
    check("fixedpoint:multiply_by_quantized_multiplier_scalar", multiply_by_quantized_multiplier_scalar,
          (np.int64(-12345), np.int32(1 << 30), np.int32(-5)))
    json.dump(results, sys.stdout)
    """
)


@pytest.fixture(scope="module")
def ir_results(tmp_path_factory):
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = str(tmp_path_factory.mktemp("numba_cache"))  # empty: compile from scratch
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


@pytest.mark.parametrize("op", kernels.OPS)
def test_every_numba_op_is_integer_only(ir_results, op):
    checked = {name: error for name, error in ir_results.items() if name.startswith(op + ":")}
    assert checked, f"no @njit kernel of numba op {op} was compiled and inspected"
    failures = {name: error for name, error in checked.items() if error}
    assert not failures, failures


def test_requantization_helpers_are_integer_only(ir_results):
    checked = {k: v for k, v in ir_results.items() if k.startswith("fixedpoint:")}
    assert len(checked) == 3
    assert not any(checked.values()), checked


# ----------------------------------------------------------------- the check can fail


@njit
def _float_requantize(acc, scale_num, scale_den):
    # what the hot loop must never do: requantize through a float
    return np.int64(acc * (scale_num / scale_den) + 0.5)


@njit
def _integer_requantize(acc, multiplier, shift):
    return (acc * multiplier + (np.int64(1) << (30 - shift))) >> (31 - shift)


@njit
def _float_compare(x, y):
    return np.float32(x) < np.float32(y)


def test_float_kernel_is_caught():
    with pytest.raises(AssertionError, match="floating point"):
        assert_integer_only(_float_requantize, np.int64(1000), np.int64(3), np.int64(7))
    with pytest.raises(AssertionError, match="floating point"):
        assert_integer_only(_float_compare, np.int64(1), np.int64(2))


def test_integer_kernel_passes_in_process():
    # uncached: its IR is available in this process; proves the checker is not always failing
    assert_integer_only(_integer_requantize, np.int64(-1000), np.int64(1 << 30), np.int64(-3))
    assert float_tokens_in_ir(llvm_ir_for(_integer_requantize, np.int64(1), np.int64(1 << 30), np.int64(0))) == []


def test_float_tokens_in_ir_on_text():
    assert float_tokens_in_ir("  %2 = sitofp i64 %1 to double\n") != []
    assert float_tokens_in_ir("  %3 = call <8 x float> @llvm.fma.v8f32(<8 x float> %a)\n") != []
    assert float_tokens_in_ir("  %4 = add nsw i64 %1, %2 ; not a float\n") == []


# ----------------------------------------------------------------- no torch / onnx


IMPORT_RE = re.compile(r"^\s*(?:import\s+([\w.]+)|from\s+([\w.]+)\s+import)", re.MULTILINE)
FORBIDDEN = ("torch", "onnx", "onnxruntime")


@pytest.mark.parametrize("package", ["kernels", "intengine"])
def test_runtime_never_imports_torch_or_onnx(package):
    sources = sorted((REPO / package).rglob("*.py"))
    assert sources, f"no sources under {package}/"
    offenders = []
    for path in sources:
        text = path.read_text(encoding="utf-8")
        for match in IMPORT_RE.finditer(text):
            module = (match.group(1) or match.group(2)).split(".")[0]
            if module in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)}: {match.group(0).strip()}")
        for name in FORBIDDEN:
            if re.search(rf"(importlib\.import_module|__import__)\(\s*['\"]{name}\b", text):
                offenders.append(f"{path.relative_to(REPO)}: dynamic import of {name}")
    assert not offenders, offenders


def test_ircheck_sees_through_the_numba_cache():
    # cached code has no IR of its own; llvm_ir_for recompiles it instead of passing vacuously
    from kernels.fixedpoint import requantize_round_half_up_scalar

    args = (np.int64(-12345), np.int32(1 << 30), np.int32(-5))
    llvm_ir = llvm_ir_for(requantize_round_half_up_scalar, *args)
    assert "define " in llvm_ir and " mul " in llvm_ir and "ashr" in llvm_ir
    assert_integer_only(requantize_round_half_up_scalar, *args)


def test_every_fast_path_was_inspected(ir_results):
    # fast paths taken only for some inputs (big tensors, VNNI CPUs) must be in the proof too
    from kernels.numba_backend import avx2, vnni

    expected = {"add_round_half_up:_add_vector_kernel", "conv2d:_conv2d_kernel"}
    if vnni.AVAILABLE:
        expected |= {"conv2d:_conv2d_vnni_kernel", "conv2d:_conv2d_add_vnni_kernel", "conv2d:_pad_input_kernel"}
    if avx2.AVAILABLE:
        expected |= {"conv2d:_conv2d_avx2_kernel", "conv2d:_conv2d_add_avx2_kernel", "conv2d:_pad_input_kernel"}
    assert expected <= set(ir_results), sorted(set(ir_results))


# An AVX-512 VNNI CPU for cross-compilation: the names LLVM knows, the features the rung needs.
VNNI_CPU = ("icelake-server", "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512cd,+avx512vnni,+avx2,+avx,+fma,"
                              "+bmi,+bmi2,+popcnt,+sse4.2,+sse4.1,+ssse3,+sse3,+sse2,+sse,+cx16,+lzcnt,+movbe,+f16c")


@pytest.mark.slow
def test_vnni_rung_lowers_integer_only_for_a_vnni_cpu(tmp_path):
    # On a CPU without AVX-512 VNNI the vnni512 rung never runs, so the equivalence tests cannot reach
    # it; compile it (never execute) for a VNNI CPU in a child with an empty cache: the generated IR
    # must lower (vpdpbusd in the assembly) and be integer-only, on every machine CI may use.
    code = textwrap.dedent(
        """
        from numba import types
        from kernels.ircheck import float_tokens_in_ir
        from kernels.numba_backend import vnni
        arr = lambda dt, nd=1: types.Array(dt, nd, "C")
        i64 = types.int64
        sig = (arr(types.uint8), i64, i64, arr(types.int8), i64, i64, i64, i64, i64, i64, i64,
               arr(types.int64), arr(types.int64), arr(types.int32), arr(types.int32), arr(types.int64),
               i64, i64, i64, i64, arr(types.uint8, 4), arr(types.uint8), i64, i64, i64)
        kernel = vnni._conv2d_vnni_kernel
        kernel.compile(sig)
        llvm_ir, asm = kernel.inspect_llvm(sig), kernel.inspect_asm(sig)
        assert "define " in llvm_ir, "no IR"
        hits = float_tokens_in_ir(llvm_ir)
        assert not hits, hits[:5]
        # the conv fused with its residual add: the same driver plus add_row's arguments
        # (residual, residual border, add output, its border, OH, OW, C) + kernel_params' 14 scalars
        add_args = types.Tuple((arr(types.uint8), i64, arr(types.uint8)) + (i64,) * 18)
        fused_sig = sig[:-2] + (add_args,) + sig[-2:]  # after out_pad, before n_workers, grain
        fused = vnni._conv2d_add_vnni_kernel
        fused.compile(fused_sig)
        fused_ir = fused.inspect_llvm(fused_sig)
        assert "define " in fused_ir and not float_tokens_in_ir(fused_ir), float_tokens_in_ir(fused_ir)[:5]
        print("vpdpbusd", asm.count("vpdpbusd"))
        """)
    env = dict(os.environ, NUMBA_CPU_NAME=VNNI_CPU[0], NUMBA_CPU_FEATURES=VNNI_CPU[1],
               NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    child = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                           timeout=1200)
    assert child.returncode == 0, (child.stdout + child.stderr)[-3000:]
    assert int(child.stdout.split()[-1]) >= 6 * 2 * 4  # every register block, full and partial tiles
