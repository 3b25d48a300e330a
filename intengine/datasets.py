"""CIFAR-10 loaders: the ``.npz`` subset layout and the official ``cifar-10-batches-py`` folder.

Both return ``(x, y, names)``: ``x`` uint8 (N, 32, 32, 3) NHWC RGB in 0..255, ``y`` int64 (N,),
``names`` a list of class names.

The official folder stores Python pickles. intengine never unpickles: ``_parse_pickle`` below is a
minimal parser that understands only the few pickle opcodes these files use (dicts, lists, strings,
ints, and NumPy arrays through ``numpy.core.multiarray._reconstruct`` / ``numpy.dtype``, which it
rebuilds itself from the raw bytes) and rejects every other opcode and global, so a hostile file
cannot run code: nothing is ever imported or called by name.
"""
from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from pathlib import Path

import numpy as np

from intengine.errors import IntengineError

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SPLITS = ("train", "test")
# Largest array read from a dataset file (CIFAR-10's training images are 150 MB): a member whose
# header claims more is refused before anything is allocated.
MAX_ARRAY_BYTES = 2 << 30


def load_cifar10(path, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load a CIFAR-10 split from an ``.npz`` (x_train/y_train/x_test/y_test/label_names) or a batches folder."""
    if split not in SPLITS:
        raise IntengineError(f"unknown split {split!r}; choose 'train' or 'test'")
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError:  # a symlink loop, say; open_regular names it
        is_dir = False
    if is_dir:
        x, y, names = _load_batches_folder(path, split)
    else:
        x, y, names = _load_npz(path, split)
    return _check(x, y, names, path)


DIGITS = "digits"  # scikit-learn's 8x8 digits, accepted wherever a dataset path is


def load_dataset(spec, split: str = "test") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``load_cifar10(spec, split)``, or the digits set when ``spec`` is ``"digits"``."""
    if str(spec) == DIGITS:
        if split not in SPLITS:
            raise IntengineError(f"unknown split {split!r}; choose 'train' or 'test'")
        return load_digits_uint8(split)
    return load_cifar10(spec, split)


def dataset_id(spec) -> str:
    """How a run's metadata names its dataset: "digits" or the resolved path."""
    return DIGITS if str(spec) == DIGITS else str(Path(spec).resolve())


def _npz_member(zf: zipfile.ZipFile, path: Path, key: str, kinds: str = "biuf") -> np.ndarray:
    """One array of the archive: its .npy header is checked against the member's size first."""
    from intengine.npyfile import read_array

    try:
        info = zf.getinfo(f"{key}.npy")
    except KeyError:
        raise IntengineError(f"{path}: missing array {key!r}") from None
    with zf.open(info) as member:
        arr = read_array(member, f"{path}[{key}]", info.file_size, MAX_ARRAY_BYTES, kinds)
        if member.read(1):  # also makes zipfile check the CRC
            raise IntengineError(f"{path}[{key}]: trailing bytes after the array")
    return arr


def _load_npz(path: Path, split: str):
    from intengine.safeio import open_regular

    with open_regular(path, "dataset file") as fh:
        try:
            with zipfile.ZipFile(fh) as zf:
                names_in = set(zf.namelist())
                if f"x_{split}.npy" not in names_in or f"y_{split}.npy" not in names_in:
                    raise IntengineError(f"{path}: missing array x_{split} or y_{split} "
                                         f"(found {', '.join(sorted(n[:-4] for n in names_in)) or 'none'})")
                x = _npz_member(zf, path, f"x_{split}")
                y = _npz_member(zf, path, f"y_{split}")
                names = ([str(n) for n in _npz_member(zf, path, "label_names", "U")]
                         if "label_names.npy" in names_in else list(CIFAR10_NAMES))
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise IntengineError(f"{path}: not a readable .npz dataset ({msg})") from None
    return x, y, names


def arrays_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 (hex) of the selected split: dtype and shape of ``x`` and ``y``, then their bytes.

    What certify-dataset records to refuse a resume on other data (any layout, npz or folder)."""
    h = hashlib.sha256()
    for a in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{a.dtype.str}{a.shape}".encode("ascii"))
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _load_batches_folder(path: Path, split: str):
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for name in files:
        f = path / name
        if not f.exists():
            raise IntengineError(f"{path}: missing CIFAR-10 batch file {name}")
        data, labels = read_batch(f)
        xs.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(labels)
    meta = path / "batches.meta"
    names = read_meta(meta) if meta.exists() else list(CIFAR10_NAMES)
    return np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), names


def _check(x, y, names, path):
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] not in (1, 3):
        raise IntengineError(f"{path}: images must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise IntengineError(f"{path}: labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    if len(y) and (y.min() < 0 or y.max() >= len(names)):
        raise IntengineError(f"{path}: labels outside 0..{len(names) - 1}")
    return np.ascontiguousarray(x), y, list(names)


def load_digits_uint8(split: str = "test", seed: int = 0):
    """scikit-learn's 8x8 digits as uint8 (N, 8, 8, 1) in 0..255 (v*255/16 rounded), split 80/20 (fixed)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise IntengineError("the 'digits' dataset needs scikit-learn: pip install scikit-learn") from None

    d = load_digits()
    x = np.floor(d.images * (255.0 / 16.0) + 0.5).astype(np.uint8)[..., None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    idx = order[:cut] if split == "train" else order[cut:]
    return np.ascontiguousarray(x[idx]), y[idx], [str(i) for i in range(10)]


# ----------------------------------------------------------------------------- minimal pickle parser

class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _DType:
    def __init__(self, code: str):
        self.code = code
        self.byteorder = "|"

    def numpy(self) -> np.dtype:
        if self.code not in ("u1", "i1", "i4", "i8", "u4", "u8", "f4", "f8", "i2", "u2"):
            raise ValueError(f"dtype {self.code!r} not allowed")
        order = "<" if self.byteorder in ("|", "<", "=") else ">"
        return np.dtype(order + self.code)


class _Array:
    def __init__(self):
        self.array = None

    def build(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], _DType)):
            raise ValueError("unexpected ndarray state")
        _, shape, dtype, fortran, raw = state
        if not isinstance(raw, (bytes, bytearray)) or not all(isinstance(v, int) and v >= 0 for v in shape):
            raise ValueError("unexpected ndarray data")
        dt = dtype.numpy()
        count = int(np.prod(shape, dtype=np.int64))
        if count * dt.itemsize != len(raw):
            raise ValueError("ndarray size does not match its data")
        a = np.frombuffer(bytes(raw), dtype=dt, count=count)
        self.array = a.reshape(shape, order="F" if fortran else "C").astype(dt.newbyteorder("="))


_ALLOWED_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_MARK = object()


def _parse_pickle(data: bytes):
    """Evaluate a pickle holding only dicts/lists/tuples/str/bytes/int/None/bool and NumPy arrays."""
    stack, memo, pos = [], {}, 0
    n = len(data)

    def take(k):
        nonlocal pos
        if pos + k > n:
            raise ValueError("truncated pickle")
        chunk = data[pos:pos + k]
        pos += k
        return chunk

    def pop_mark():
        items = []
        while True:
            if not stack:
                raise ValueError("mark not found")
            v = stack.pop()
            if v is _MARK:
                return items[::-1]
            items.append(v)

    def line():
        nonlocal pos
        end = data.find(b"\n", pos)
        if end < 0:
            raise ValueError("truncated pickle")
        text = data[pos:end].decode("ascii")
        pos = end + 1
        return text

    while True:
        op = take(1)
        if op == b"\x80":  # PROTO
            take(1)
        elif op == b"\x95":  # FRAME
            take(8)
        elif op == b"(":  # MARK
            stack.append(_MARK)
        elif op == b"}":
            stack.append({})
        elif op == b"]":
            stack.append([])
        elif op == b")":
            stack.append(())
        elif op == b"N":
            stack.append(None)
        elif op == b"\x88":
            stack.append(True)
        elif op == b"\x89":
            stack.append(False)
        elif op == b"K":  # BININT1
            stack.append(take(1)[0])
        elif op == b"M":  # BININT2
            stack.append(struct.unpack("<H", take(2))[0])
        elif op == b"J":  # BININT
            stack.append(struct.unpack("<i", take(4))[0])
        elif op == b"\x8a":  # LONG1
            k = take(1)[0]
            stack.append(int.from_bytes(take(k), "little", signed=True))
        elif op in (b"U", b"C"):  # SHORT_BINSTRING (py2 str) / SHORT_BINBYTES
            stack.append(bytes(take(take(1)[0])))
        elif op in (b"T", b"B"):  # BINSTRING / BINBYTES
            k = struct.unpack("<I", take(4))[0]
            stack.append(bytes(take(k)))
        elif op == b"\x8c":  # SHORT_BINUNICODE
            stack.append(take(take(1)[0]).decode("utf-8"))
        elif op == b"X":  # BINUNICODE
            k = struct.unpack("<I", take(4))[0]
            stack.append(take(k).decode("utf-8"))
        elif op == b"t":
            stack.append(tuple(pop_mark()))
        elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
            k = op[0] - 0x84
            if len(stack) < k:
                raise ValueError("stack underflow")
            items = stack[-k:]
            del stack[-k:]
            stack.append(tuple(items))
        elif op == b"q":  # BINPUT
            memo[take(1)[0]] = stack[-1]
        elif op == b"r":  # LONG_BINPUT
            memo[struct.unpack("<I", take(4))[0]] = stack[-1]
        elif op == b"\x94":  # MEMOIZE
            memo[len(memo)] = stack[-1]
        elif op == b"h":  # BINGET
            stack.append(memo[take(1)[0]])
        elif op == b"j":  # LONG_BINGET
            stack.append(memo[struct.unpack("<I", take(4))[0]])
        elif op == b"s":  # SETITEM
            v, k = stack.pop(), stack.pop()
            stack[-1][_key(k)] = v
        elif op == b"u":  # SETITEMS
            items = pop_mark()
            d = stack[-1]
            for i in range(0, len(items) - 1, 2):
                d[_key(items[i])] = items[i + 1]
        elif op == b"a":  # APPEND
            v = stack.pop()
            stack[-1].append(v)
        elif op == b"e":  # APPENDS
            items = pop_mark()
            stack[-1].extend(items)
        elif op in (b"c", b"\x93"):  # GLOBAL / STACK_GLOBAL
            if op == b"c":
                module, name = line(), line()
            else:
                name, module = stack.pop(), stack.pop()
            if (module, name) not in _ALLOWED_GLOBALS:
                raise ValueError(f"refusing global {module}.{name}")
            stack.append(_Global(module, name))
        elif op == b"R":  # REDUCE
            args, fn = stack.pop(), stack.pop()
            stack.append(_reduce(fn, args))
        elif op == b"b":  # BUILD
            state = stack.pop()
            obj = stack[-1]
            if isinstance(obj, _Array):
                obj.build(state)
            elif isinstance(obj, _DType) and isinstance(state, tuple) and len(state) >= 2:
                obj.byteorder = state[1] if isinstance(state[1], str) else "|"
            else:
                raise ValueError("unexpected BUILD")
        elif op == b".":  # STOP
            if len(stack) != 1:
                raise ValueError("malformed pickle")
            return _resolve(stack[0])
        else:
            raise ValueError(f"unsupported pickle opcode {op!r} at byte {pos - 1}")


def _key(k):
    if isinstance(k, (bytes, str, int)):
        return k.decode("latin-1") if isinstance(k, bytes) else k
    raise ValueError("unsupported dict key")


def _reduce(fn, args):
    if not isinstance(fn, _Global) or not isinstance(args, tuple):
        raise ValueError("unexpected REDUCE")
    if fn.name == "_reconstruct":
        return _Array()
    if fn.name == "dtype" and args and isinstance(args[0], (str, bytes)):
        code = args[0].decode("ascii") if isinstance(args[0], bytes) else args[0]
        return _DType(code)
    if fn.name == "encode" and len(args) == 2 and isinstance(args[0], str) and args[1] == "latin1":
        return args[0].encode("latin-1")  # Python 3 writes bytes this way at protocol 2
    raise ValueError(f"unexpected call to {fn.module}.{fn.name}")


def _resolve(v):
    if isinstance(v, _Array):
        if v.array is None:
            raise ValueError("incomplete ndarray")
        return v.array
    if isinstance(v, dict):
        return {k: _resolve(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_resolve(x) for x in v]
    if isinstance(v, (_Global, _DType)):
        raise ValueError("dangling object")
    return v


# A CIFAR-10 batch file is ~31 MB; anything far larger is not one.
MAX_BATCH_FILE_BYTES = 256 << 20


def _read_pickle_dict(path: Path) -> dict:
    from intengine.safeio import open_regular

    with open_regular(path, "CIFAR-10 batch file") as fh:
        if os.fstat(fh.fileno()).st_size > MAX_BATCH_FILE_BYTES:
            raise IntengineError(f"{path}: larger than {MAX_BATCH_FILE_BYTES >> 20} MiB; not a CIFAR-10 batch file")
        try:
            data = fh.read(MAX_BATCH_FILE_BYTES + 1)
        except OSError as exc:
            raise IntengineError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        obj = _parse_pickle(data)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError,
            RecursionError, struct.error) as exc:
        raise IntengineError(f"{path}: not a CIFAR-10 batch file ({str(exc) or type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise IntengineError(f"{path}: not a CIFAR-10 batch file (no dictionary)")
    return obj


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data uint8 (N, 3072) channel-major rows, labels int64 (N,)) of one cifar-10-batches-py file."""
    d = _read_pickle_dict(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise IntengineError(f"{path}: 'data' must be a uint8 (N, 3072) array")
    if not isinstance(labels, list) or len(labels) != len(data) or not all(isinstance(v, int) for v in labels):
        raise IntengineError(f"{path}: 'labels' must be a list of {len(data)} ints")
    return data, np.asarray(labels, dtype=np.int64)


def read_meta(path: Path) -> list[str]:
    names = _read_pickle_dict(path).get("label_names")
    if not isinstance(names, list) or not names:
        raise IntengineError(f"{path}: 'label_names' missing")
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
