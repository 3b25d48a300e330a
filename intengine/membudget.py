"""The batch of noisy samples is capped by a memory budget computed before anything is allocated.

The estimate per noisy sample, from the validated activation shapes (uint8, per image):

* every activation once: the executor keeps one reusable buffer per conv/add node and the
  remaining outputs live until their last reader;
* the input once more: the noisy-copy buffer of ``smoothing.sample_counts``;
* 64 bytes per element of the largest activation: the widest layer's temporaries (the reference
  backend works in int64: widened and padded input, window taps, accumulator, requantization
  steps -- at most eight int64 copies; the Numba kernels need far less).

So the estimate errs on the large side; the default budget (2 GiB) leaves ResNet-20 at the
default batch of 1000 (~1.4 MB per sample).
"""
from __future__ import annotations

import math
import re

from intengine.errors import IntengineError

DEFAULT_MEMORY_BUDGET = 2 << 30
TEMP_BYTES_PER_ELEMENT = 64
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1.5GiB"``, ``"100000"`` (bytes) -> bytes; binary units."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not m:
        raise IntengineError(f"memory budget must be a size such as 2G, 512M or 100000 (bytes), got {text!r}")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value < 1:
        raise IntengineError(f"memory budget must be at least 1 byte, got {text!r}")
    return value


def bytes_per_sample(model) -> int:
    """Estimated peak bytes per noisy sample (see the module docstring)."""
    shapes = getattr(model, "activation_shapes", None) or {"input": tuple(model.input_shape)}
    sizes = [math.prod(s) for s in shapes.values()]
    return sum(sizes) + math.prod(model.input_shape) + TEMP_BYTES_PER_ELEMENT * max(sizes)


def cap_batch(model, batch: int, budget: int | None) -> int:
    """``batch`` shrunk so that ``batch * bytes_per_sample(model) <= budget``; IntengineError if not even
    one sample fits.  ``budget`` None = :data:`DEFAULT_MEMORY_BUDGET`."""
    budget = DEFAULT_MEMORY_BUDGET if budget is None else int(budget)
    per = bytes_per_sample(model)
    fit = budget // per
    if fit < 1:
        raise IntengineError(f"one noisy sample of this model needs about {per / 2**20:,.1f} MiB, more than the "
                             f"memory budget of {budget / 2**20:,.1f} MiB (raise --memory-budget)")
    return max(1, min(int(batch), fit))
