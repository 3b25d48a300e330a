"""Integer kernels for intengine.

Two backends with the same op names and signatures:

* ``reference`` -- NumPy, int64 inside, written to be read: the specification.
* ``numba``     -- Numba kernels that must return the same bits for every input;
  conv2d runs the best rung of the ladder this CPU has: AVX-512 VNNI, AVX2, portable.
* ``numba-portable``, ``numba-avx2``, ``numba-vnni512`` -- the numba backend with conv2d forced
  onto one rung (``numba-avx2`` and ``numba-vnni512`` raise ValueError on CPUs without them;
  :func:`available_backends` lists what this CPU runs). ``INTENGINE_ISA=avx2`` (or ``portable``)
  caps the rung that ``numba`` picks, process-wide.

``get_backend(name)`` returns a namespace with the ops listed in ``OPS``.
The numba backend is imported lazily so that importing ``kernels`` stays cheap.
"""
from __future__ import annotations

import importlib
from types import SimpleNamespace

OPS = (
    "conv2d",
    "linear",
    "add_round_half_up",
    "avg_pool_round_half_up",
    "max_pool",
    "argmax",
)

_MODULES = {
    "reference": "kernels.reference",
    "numba": "kernels.numba_backend",
    "numba-portable": "kernels.numba_backend",
    "numba-avx2": "kernels.numba_backend",
    "numba-vnni512": "kernels.numba_backend",
}

_cache: dict[str, SimpleNamespace] = {}


def get_backend(name: str) -> SimpleNamespace:
    """Return the op namespace of backend ``name`` (see the module doc for the names)."""
    if name not in _MODULES:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {sorted(_MODULES)}")
    if name not in _cache:
        module = importlib.import_module(_MODULES[name])
        ops = {op: getattr(module, op) for op in OPS}
        if name.startswith("numba-"):  # one conv2d rung forced
            rung = name[len("numba-"):]
            conv = importlib.import_module("kernels.numba_backend.op_conv2d")
            if rung not in conv.available_rungs():
                raise ValueError(f"kernel backend {name!r} needs a CPU feature this one lacks "
                                 f"(available conv2d rungs: {', '.join(conv.available_rungs())})")
            ops["conv2d"] = getattr(conv, f"conv2d_{rung}")
        _cache[name] = SimpleNamespace(**ops)
    return _cache[name]


def available_backends() -> tuple[str, ...]:
    """Every backend name this CPU can run: reference, numba, and each conv2d rung it has."""
    conv = importlib.import_module("kernels.numba_backend.op_conv2d")
    return ("reference", "numba") + tuple(f"numba-{rung}" for rung in conv.available_rungs())


class _Backends(dict):
    """``BACKENDS["numba"]`` -- a mapping view that imports backends on first use."""

    def __missing__(self, name):
        return get_backend(name)

    def __iter__(self):
        return iter(available_backends())

    def __len__(self):
        return len(available_backends())

    def keys(self):
        return list(available_backends())


BACKENDS = _Backends()
