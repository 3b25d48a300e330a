"""intengine: certified robustness for quantized networks, computed with integers only.

Python API (see README.md, "Python API"; each name is imported on first use, so
``import intengine`` stays cheap):

* ``load_model(path)`` -> Model;  ``load_image(image, model=None)`` -> uint8 HWC array
* ``certify(model, image, *, sigma, n0, n, alpha, seed, ...)`` -> SmoothingResult (label, radius, to_dict())
* ``predict(model, image, *, sigma, n, alpha, seed, ...)`` -> SmoothingResult (label or ABSTAIN)
* ``certify_dataset(model, data, out, ...)`` / ``predict_dataset(...)`` -> DatasetResult (Cohen's TSV files)
"""

__version__ = "0.1.0"

__all__ = ["load_model", "load_image", "certify", "predict", "certify_dataset", "predict_dataset",
           "IntengineError"]


def __getattr__(name):
    if name == "IntengineError":
        from intengine.errors import IntengineError

        return IntengineError
    if name in __all__:
        from intengine import api

        return getattr(api, name)
    raise AttributeError(f"module 'intengine' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
