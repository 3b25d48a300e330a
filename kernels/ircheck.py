"""Prove that a compiled Numba function is integer-only.

The hot loop (sampling, noise addition, every layer, argmax, counting and the
certificate lookup) must run on hardware without floating point.  We check
this on the LLVM IR that Numba generates for the real argument types: any
floating-point type (``half``, ``float``, ``double``, ...) or instruction
(``fadd``, ``fcmp``, ``sitofp``, ...) anywhere in the module fails the check.
The IR includes Numba's CPython wrapper, so the check is conservative: it
also rejects floats that only the boxing code would touch.
"""
from __future__ import annotations

import re
import warnings

FLOAT_TOKENS = (
    # types
    "half", "bfloat", "float", "double", "x86_fp80", "fp128", "ppc_fp128",
    # arithmetic and comparison
    "fadd", "fsub", "fmul", "fdiv", "frem", "fneg", "fcmp",
    # conversions
    "sitofp", "uitofp", "fptosi", "fptoui", "fpext", "fptrunc",
)
_FLOAT_RE = re.compile(r"\b(" + "|".join(FLOAT_TOKENS) + r")\b")
# Float intrinsics such as @llvm.sqrt.f64 or @llvm.fma.v8f32 name their type with fNN.
_INTRINSIC_RE = re.compile(r"@llvm\.[\w.]*\.(v\d+)?f(16|32|64|80|128)\b")


def float_tokens_in_ir(llvm_ir: str) -> list[str]:
    """Return the offending lines (stripped) of ``llvm_ir``; empty means integer-only."""
    hits = []
    for line in llvm_ir.splitlines():
        code = line.split(";", 1)[0]  # drop IR comments, which may mention anything
        if _FLOAT_RE.search(code) or _INTRINSIC_RE.search(code):
            hits.append(code.strip())
    return hits


def _recompiled_ir(dispatcher, sig) -> str:
    """IR of a fresh, uncached compilation of ``dispatcher.py_func`` for ``sig``."""
    import numba

    options = dict(dispatcher.targetoptions)
    options.pop("cache", None)
    fresh = numba.njit(**options)(dispatcher.py_func)
    fresh.compile(sig)
    return fresh.inspect_llvm(fresh.signatures[0])


def llvm_ir_for(dispatcher, *example_args) -> str:
    """Compile ``dispatcher`` for the types of ``example_args`` and return its LLVM IR.

    Code loaded from Numba's on-disk cache carries no IR (``inspect_llvm`` then
    returns a placeholder that would pass any check), so such a function is
    recompiled without the cache for the same signature and that IR is returned.
    """
    import numba

    dispatcher(*example_args)
    wanted = tuple(numba.typeof(a) for a in example_args)
    sig = next((s for s in dispatcher.signatures if tuple(s) == wanted), dispatcher.signatures[-1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Inspection disabled for cached code"
        llvm_ir = dispatcher.inspect_llvm(sig)
        if "define " not in llvm_ir:
            llvm_ir = _recompiled_ir(dispatcher, sig)
    if "define " not in llvm_ir:
        raise RuntimeError(f"no LLVM IR available for {getattr(dispatcher, '__name__', dispatcher)}")
    return llvm_ir


def assert_integer_only(dispatcher, *example_args) -> None:
    """Raise AssertionError naming the float instructions found in ``dispatcher``'s IR."""
    hits = float_tokens_in_ir(llvm_ir_for(dispatcher, *example_args))
    if hits:
        shown = "\n  ".join(hits[:8])
        raise AssertionError(
            f"{getattr(dispatcher, '__name__', dispatcher)} uses floating point "
            f"({len(hits)} IR lines), e.g.:\n  {shown}"
        )
