"""``.npy`` files read without trusting their headers: the shape and dtype in the header are checked
against the file's size before any data is read, so a 3 KB file claiming 10^18 elements is a
one-line error, not a MemoryError.  Plain numeric dtypes only (never objects, never pickle)."""
from __future__ import annotations

import math
import os
import tokenize

import numpy as np
from numpy.lib import format as npformat

from intengine.errors import IntengineError

NUMERIC_KINDS = "biuf"


def array_header(fh, where: str, kinds: str = NUMERIC_KINDS) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of the ``.npy`` stream ``fh`` (positioned at its start);
    leaves ``fh`` at the first data byte.  IntengineError for anything but a numeric array."""
    try:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError, TypeError, RecursionError, tokenize.TokenError) as exc:
        # numpy parses the header dict with ast/tokenize, which has its own error types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IntengineError(f"cannot read {where} as a .npy array ({msg})") from None
    if dtype.hasobject:
        raise IntengineError(f"cannot read {where} as a .npy array (it holds Python objects; "
                             "only plain numeric arrays are read, never pickled data)")
    if dtype.kind not in kinds or dtype.itemsize == 0 or dtype.fields is not None or dtype.subdtype is not None:
        raise IntengineError(f"{where}: dtype {dtype} is not a plain numeric dtype")
    return shape, fortran, dtype


def check_size(where: str, shape, dtype: np.dtype, available: int, max_bytes: int | None = None) -> int:
    """Bytes the header's (shape, dtype) needs; IntengineError unless exactly ``available`` are there."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != available:
        raise IntengineError(f"{where}: the header claims shape {tuple(shape)} of {dtype} ({nbytes:,} bytes) but "
                             f"the file holds {available:,} data bytes (truncated or forged header)")
    if max_bytes is not None and nbytes > max_bytes:
        raise IntengineError(f"{where}: array of {nbytes:,} bytes is larger than the {max_bytes:,} allowed")
    return nbytes


def read_array(fh, where: str, available: int, max_bytes: int | None = None,
               kinds: str = NUMERIC_KINDS) -> np.ndarray:
    """Header check (see :func:`check_size`), then the data; ``available`` = bytes from ``fh``'s
    position (the start of the ``.npy`` stream) to its end."""
    start = fh.tell()
    shape, fortran, dtype = array_header(fh, where, kinds)
    check_size(where, shape, dtype, available - (fh.tell() - start), max_bytes)
    buf = bytearray(math.prod(shape) * dtype.itemsize)
    view, got = memoryview(buf), 0
    while got < len(buf):  # zip members return short reads
        k = fh.readinto(view[got:])
        if not k:
            raise IntengineError(f"{where}: file changed size while being read")
        got += k
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def load_npy(path, what: str, max_bytes: int | None = None) -> np.ndarray:
    """The array in the regular ``.npy`` file ``path`` (a ``what`` in messages)."""
    from intengine.safeio import open_regular

    with open_regular(path, what) as fh:
        try:
            return read_array(fh, str(path), os.fstat(fh.fileno()).st_size, max_bytes)
        except OSError as exc:
            raise IntengineError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
