"""Integer kernels for intengine.

Two backends with the same op names and signatures:

* ``reference`` -- NumPy, int64 inside, written to be read: the specification.
* ``numba``     -- Numba kernels that must return the same bits for every input;
  conv2d uses an AVX-512 VNNI micro-kernel where the CPU has one.
* ``numba-portable`` -- the same Numba kernels with CPU-specific paths off.

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
    "numba-portable": "kernels.numba_backend.portable",
}

_cache: dict[str, SimpleNamespace] = {}


def get_backend(name: str) -> SimpleNamespace:
    """Return the op namespace of backend ``name`` ("reference", "numba" or "numba-portable")."""
    if name not in _MODULES:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {sorted(_MODULES)}")
    if name not in _cache:
        module = importlib.import_module(_MODULES[name])
        _cache[name] = SimpleNamespace(**{op: getattr(module, op) for op in OPS})
    return _cache[name]


class _Backends(dict):
    """``BACKENDS["numba"]`` -- a mapping view that imports backends on first use."""

    def __missing__(self, name):
        return get_backend(name)

    def __iter__(self):
        return iter(_MODULES)

    def __len__(self):
        return len(_MODULES)

    def keys(self):
        return list(_MODULES)


BACKENDS = _Backends()
