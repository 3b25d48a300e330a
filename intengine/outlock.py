"""One writer per results file: an advisory lock on ``<out>.lock``, held for the whole run.

``fcntl.flock`` (exclusive, non-blocking) on a file beside the output.  The kernel drops the
lock when its process dies, however it dies (kill -9 included), so a stale ``.lock`` file never
blocks the resume; the holder's pid is written into it only to name it in the refusal.  The lock
is advisory and per host (NFS maps it to a POSIX lock where the server supports that): it keeps
two intengine runs apart, not other programs.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from intengine.errors import IntengineError


def lock_path(out) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"  # the holder may not have written its pid yet


@contextmanager
def hold(out):
    """Hold the write lock of ``out`` for the ``with`` block; IntengineError when another run holds it."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise IntengineError(f"{out} is being written by another run (pid {pid})") from None
        # A previous holder unlinks the file when it ends; if that happened between our open and
        # our flock, we hold a lock on a dead inode that the next run cannot see: take a fresh one.
        try:
            st, cur = os.fstat(fd), os.stat(path)
            current = (st.st_ino, st.st_dev) == (cur.st_ino, cur.st_dev)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        try:
            os.unlink(path)  # while still locked, so no run can lock this inode after we let go
        except FileNotFoundError:
            pass
        os.close(fd)
