"""intengine: certified robustness for quantized networks, computed with integers only."""

__version__ = "0.1.0"


def load_model(path):
    """Load and validate a ``model.int8`` file; see :mod:`intengine.engine`."""
    from intengine.engine import load_model as _load_model

    return _load_model(path)
