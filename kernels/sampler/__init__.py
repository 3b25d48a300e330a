"""Integer-only discrete Gaussian noise: Philox4x32-10, exact CKS sampler, table sampler.

Public API (the contract in ``docs/architecture.md``, section "Noise"; details in
``docs/sampler.md``):

* ``sigma_sq_from_sigma(sigma) -> Fraction``: ``(Fraction(str(sigma)) * 255) ** 2``.
* ``sample_discrete_gaussian(sigma_sq, size, seed, stream=0, method="table"|"cks") -> int32``;
  a table-sampler failure appears as ``FAIL = INT32_MIN``.
* ``make_sampler(sigma_sq, method="table"|"cks") -> Sampler`` with ``fill`` and
  ``add_noise_clip`` (Numba, integer-only, parallel over samples).
* ``resolve_seed(seed) -> int``: ``None`` draws a 64-bit seed from the OS; report it.

Modules: ``philox`` (PRNG), ``cks`` (exact sampler, the specification and
oracle), ``table`` (alias table with failure bin, the fast default; its
docstring holds the soundness argument), ``params`` (sigma^2, FAIL), ``api``.
"""
from kernels.sampler.api import METHODS, Sampler, alias_table, make_sampler, sample_discrete_gaussian
from kernels.sampler.params import FAIL, as_sigma_sq, sigma_sq_from_sigma
from kernels.sampler.philox import resolve_seed

__all__ = [
    "FAIL",
    "METHODS",
    "Sampler",
    "alias_table",
    "as_sigma_sq",
    "make_sampler",
    "resolve_seed",
    "sample_discrete_gaussian",
    "sigma_sq_from_sigma",
]
