"""Opening user-named files: regular files only, never blocking, one-line errors.

A FIFO, socket or device named as a model, image, dataset or results file would block ``open``
(FIFO) or stream for ever (``/dev/zero``), so every such file is opened with ``O_NONBLOCK`` and
checked with ``fstat`` on the opened descriptor: the check and the use see the same file (no
race between a ``stat`` and the ``open``).  ``O_NONBLOCK`` is cleared again before reading;
on a regular file it has no effect anyway.
"""
from __future__ import annotations

import errno
import os
import stat

from intengine.errors import IntengineError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def open_error(path, what: str, exc: OSError) -> IntengineError:
    """The one-line error for an ``OSError`` raised while opening ``path`` (a ``what``)."""
    if exc.errno == errno.ENOENT:
        return IntengineError(f"{what} not found: {path}")
    if exc.errno == errno.ELOOP:
        return IntengineError(f"{path}: too many levels of symbolic links (a symlink loop?)")
    if exc.errno == errno.EISDIR:
        return IntengineError(f"{path}: is a directory, not a {what}")
    if exc.errno == errno.ENOTDIR:
        return IntengineError(f"{what} not found: {path} (a component of the path is not a directory)")
    return IntengineError(f"{path}: cannot open {what} ({exc.strerror or exc})")


def open_regular(path, what: str):
    """Open ``path`` for binary reading if it is a regular file; IntengineError otherwise.

    ``what`` names the file's role in messages ("model file", "image file", ...)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(os.fspath(path), flags)
    except OSError as exc:
        raise open_error(path, what, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IntengineError(f"{path}: is a directory, not a {what}")
        if not stat.S_ISREG(mode):
            raise IntengineError(f"{path}: is {_kind(mode)}; a {what} must be a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular_or_absent(path, what: str) -> bool:
    """True if ``path`` is a regular file, False if nothing is there; IntengineError for anything else.

    For files about to be written or appended to (results, sidecars): ``stat`` never opens the
    file, so a FIFO cannot block it; a symlink to a regular file is allowed."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise IntengineError(f"{path}: cannot create a {what} there: a component of the path is not "
                             "a directory") from None
    except OSError as exc:
        raise open_error(path, what, exc) from None
    if stat.S_ISDIR(st.st_mode):
        raise IntengineError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise IntengineError(f"{path}: is {_kind(st.st_mode)}; a {what} must be a regular file")
    return True


def write_error(path, exc: OSError) -> IntengineError:
    """The one-line error for an ``OSError`` raised while creating or writing ``path``."""
    if exc.errno == errno.ENOSPC:
        return IntengineError(f"{path}: no space left on the device (finished rows are kept; free space "
                              "and rerun the same command to resume)")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return IntengineError(f"{path}: cannot create it: {exc.filename or 'a parent'} is not a directory")
    return IntengineError(f"{path}: cannot write ({exc.strerror or exc}"
                          f"{': ' + str(exc.filename) if exc.filename else ''})")
