"""certify-dataset on a Dask LocalCluster / a running scheduler, and one writer per --out.

The cluster runs go through the real CLI in a subprocess (real model, a few synthetic images,
small N) so that worker processes, the client and the scheduler can be killed with SIGKILL.
Every cluster result is compared row by row with a serial run in this process: identical
except the two time columns.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from intengine import cli, outlock, runs
from intengine.errors import IntengineError
from intengine.report import read_results

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "resnet20_sigma0.25.int8"
N = 100
OPTS = ["--n0", "20", "--seed", "5", "--batch", "160"]
TIME_COLUMNS = (runs.COLUMNS.index("time"), runs.COLUMNS.index("seconds"))


def _data(path: Path, count: int) -> Path:
    rng = np.random.default_rng(11)
    np.savez(path, x_test=rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, count))
    return path


def _rows(out: Path) -> dict[int, list[str]]:
    """idx -> row without the time columns; asserts every idx appears once."""
    rows = [ln.split("\t") for ln in out.read_text().splitlines()[1:]]
    idx = [int(r[0]) for r in rows]
    assert len(idx) == len(set(idx)), f"duplicate rows in {out}: {sorted(idx)}"
    return {int(r[0]): [v for k, v in enumerate(r) if k not in TIME_COLUMNS] for r in rows}


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _cli(args) -> list[str]:
    return [sys.executable, "-m", "intengine.cli", "certify-dataset", str(MODEL)] + [str(a) for a in args]


def _start(args) -> subprocess.Popen:
    return subprocess.Popen(_cli(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            cwd=ROOT)


@contextmanager
def _after_first_row(args, out: Path, timeout: float = 240.0):
    """A CLI run in a subprocess, yielded once its first row is on disk; killed on leaving."""
    proc = _start(args)
    try:
        t0 = time.monotonic()
        while not (out.exists() and len(out.read_text().splitlines()) > 1):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < timeout, "no rows appeared"
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _dask_workers(proc: subprocess.Popen):
    """The worker processes (multiprocessing spawn children) of a LocalCluster client."""
    import psutil

    kids = psutil.Process(proc.pid).children(recursive=True)
    return [k for k in kids if "spawn_main" in " ".join(k.cmdline())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serial(tmp_path, data, count, n=N) -> dict[int, list[str]]:
    out = tmp_path / "serial.tsv"
    rc = cli.main([str(a) for a in ["certify-dataset", MODEL, data, "--out", out, "--n", n, "--no-progress"] + OPTS])
    assert rc == 0
    rows = _rows(out)
    assert sorted(rows) == list(range(count))
    return rows


@pytest.fixture
def data(tmp_path):
    return _data(tmp_path / "d.npz", 4)


# --------------------------------------------------------------------------- the lock, no cluster

def test_lock_refuses_second_writer_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "sub" / "r.tsv"
    with outlock.hold(out) as path:
        assert path.read_text().strip() == str(os.getpid())
        # a flock belongs to an open file description: a second open, even in this process, is refused
        with pytest.raises(IntengineError, match=rf"r\.tsv is being written by another run \(pid {os.getpid()}\)"):
            with outlock.hold(out):
                pass
    assert not outlock.lock_path(out).exists()
    # a holder killed with SIGKILL leaves its .lock file behind, but not its lock
    code = f"import sys, time; from intengine import outlock\nwith outlock.hold({str(out)!r}):\n" \
           "    print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IntengineError, match=rf"\(pid {holder.pid}\)"):
            with outlock.hold(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert outlock.lock_path(out).exists()
    with outlock.hold(out):
        assert outlock.lock_path(out).read_text().strip() == str(os.getpid())


def test_two_concurrent_serial_runs_no_duplicate_rows(tmp_path, data):
    """Issue 13, B8: the same certify-dataset started twice; before the lock both wrote every row."""
    out = tmp_path / "r.tsv"
    args = [data, "--out", out, "--n", 100, "--no-progress"] + OPTS
    procs = [_start(args) for _ in range(2)]
    results = [p.communicate() + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    if codes == [0, 0]:  # the first ended before the second opened the file: a plain resume
        assert any("0 images certified now, 4 already done" in r[0] for r in results)
    else:
        assert codes == [0, 2]
        err = next(r[1] for r in results if r[2] == 2)
        assert err.count("\n") == 1 and "is being written by another run (pid " in err
    assert sorted(_rows(out)) == list(range(4))
    assert len(read_results(out).idx) == 4


def test_rows_in_completion_order_resume_and_report(tmp_path):
    """An executor returns rows in any order: the file, its resume and its report do not care."""
    from _cert_fakes import FakeModel, install_fake_sampler

    mp = pytest.MonkeyPatch()
    mp.setenv("INTENGINE_CACHE", str(tmp_path / "cache"))
    install_fake_sampler(mp)
    try:
        model = FakeModel()
        rng = np.random.default_rng(0)
        images = (rng.integers(0, 256, (7, 2, 2, 3), dtype=np.uint8), rng.integers(0, 3, 7))
        kw = dict(n0=10, n=100, alpha=0.01, batch=32, seed=3, sigma=0.5, images=images)

        def reversed_executor(model_path, sha, x, opts, todo, seed, stop_after=None):
            for k, idx in enumerate(reversed(todo)):
                if k == stop_after:
                    raise KeyboardInterrupt  # the client dies here
                yield idx, runs.certify_image(model, x[idx], idx, seed, opts)

        out = tmp_path / "r.tsv"
        with pytest.raises(KeyboardInterrupt):
            runs.certify_dataset(model, None, None, out, executor=lambda *a: reversed_executor(*a, stop_after=3), **kw)
        assert [int(r) for r in read_results(out).idx] == [6, 5, 4]
        summary = runs.certify_dataset(model, None, None, out, executor=reversed_executor, **kw)
        assert summary["already_done"] == 3 and summary["certified_now"] == 4
        assert [int(r) for r in read_results(out).idx] == [6, 5, 4, 3, 2, 1, 0]
        serial = tmp_path / "serial.tsv"
        runs.certify_dataset(model, None, None, serial, **kw)
        assert _rows(out) == _rows(serial)

        def bad(model_path, sha, x, opts, todo, seed):
            yield from reversed_executor(model_path, sha, x, opts, todo, seed)
            yield todo[0], runs.certify_image(model, x[todo[0]], todo[0], seed, opts)

        with pytest.raises(RuntimeError, match="twice"):
            runs.certify_dataset(model, None, None, tmp_path / "dup.tsv", executor=bad, **kw)
        assert len(_rows(tmp_path / "dup.tsv")) == 7
    finally:
        mp.undo()


def test_cluster_flag_errors(capsys, data, tmp_path, monkeypatch):
    from intengine import cluster

    base = ["certify-dataset", str(MODEL), str(data), "--out", str(tmp_path / "r.tsv"), "--n", "100"]
    assert cli.main(base + ["--threads-per-worker", "2"]) == 2
    assert "needs --workers or --scheduler" in capsys.readouterr().err
    assert cli.main(base + ["--workers", "2", "--threads", "2"]) == 2
    assert "--threads-per-worker" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(base + ["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"])
    capsys.readouterr()
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT", "1s")
    assert cli.main(base + ["--scheduler", f"tcp://127.0.0.1:{_free_port()}"]) == 2  # nobody listens there
    err = capsys.readouterr().err
    assert err.startswith("intengine: error: cannot reach the Dask scheduler") and err.count("\n") == 1


def test_worker_model_checked_and_parsed_once():
    from intengine import cluster

    data = MODEL.read_bytes()
    sha = runs.file_sha256(MODEL)
    with pytest.raises(IntengineError, match="do not match"):
        cluster._worker_model(data[:-1], sha)
    first = cluster._worker_model(data, sha)
    assert cluster._worker_model(data, sha) is first and first.num_classes == 10
    assert cluster._worker_threads(3) == 3


# --------------------------------------------------------------------------- cluster runs
# One serial reference for all of them: 24 images, N = 100 (each cluster run costs a few seconds
# of worker start-up; 24 images leave work to do when something is killed after the first row).

@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    data = _data(tmp / "d.npz", 24)
    return data, _serial(tmp, data, 24)


def _args(data, out):
    return [data, "--out", out, "--n", N, "--no-progress"] + OPTS


@pytest.mark.slow
def test_workers_match_serial(tmp_path, ref):
    data, serial = ref
    out = tmp_path / "c.tsv"
    p = subprocess.run(_cli(_args(data, out) + ["--workers", 2]), capture_output=True, text=True, env=_env(), cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "LocalCluster of 2 workers x 1 threads" in p.stderr
    assert "24 images certified now" in p.stdout and "images/hour" in p.stdout
    assert _rows(out) == serial


@pytest.mark.slow
def test_worker_killed_mid_run(tmp_path, ref):
    data, serial = ref
    out = tmp_path / "c.tsv"
    with _after_first_row(_args(data, out) + ["--workers", 2], out) as proc:
        workers = _dask_workers(proc)
        assert len(workers) == 2
        workers[0].send_signal(signal.SIGKILL)  # both workers are busy: a task dies with it
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert _rows(out) == serial


@pytest.mark.slow
def test_client_killed_then_second_run_refused_then_resume(tmp_path, ref):
    data, serial = ref
    out = tmp_path / "c.tsv"
    with _after_first_row(_args(data, out) + ["--workers", 2], out) as proc:
        # frozen, not dead: it still holds --out, and writes no more rows while the refused run starts
        # (a fast machine finished all 24 images in the second run's start-up time)
        proc.send_signal(signal.SIGSTOP)
        second = subprocess.run(_cli(_args(data, out)), capture_output=True, text=True, env=_env(), cwd=ROOT)
        assert second.returncode == 2 and second.stderr.count("\n") == 1
        assert second.stderr.startswith("intengine: error: ")
        assert f"is being written by another run (pid {proc.pid})" in second.stderr
        workers = _dask_workers(proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for w in workers:  # LocalCluster workers end with their client
            w.wait(timeout=30)
    done = _rows(out)
    assert 1 <= len(done) < 24
    # resumed with another worker count: the rows do not depend on it
    rerun = subprocess.run(_cli(_args(data, out) + ["--workers", 1]), capture_output=True, text=True, env=_env(),
                           cwd=ROOT)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(done)} already done" in rerun.stdout
    assert _rows(out) == serial


@pytest.mark.slow
def test_scheduler_lost_then_resume(tmp_path, ref):
    data, serial = ref
    address = f"tcp://127.0.0.1:{_free_port()}"
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(), cwd=ROOT)
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                  "--port", address.rsplit(":", 1)[1], "--no-dashboard"], **quiet)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                               "--no-dashboard"], **quiet)
    out = tmp_path / "c.tsv"
    try:
        with _after_first_row(_args(data, out) + ["--scheduler", address, "--threads-per-worker", 1], out) as proc:
            scheduler.send_signal(signal.SIGKILL)
            _, stderr = proc.communicate(timeout=120)
    finally:
        for p in (scheduler, worker):
            p.kill()
            p.wait()
    assert proc.returncode == 2
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("intengine: error: lost the Dask scheduler at " + address)
    assert "Traceback" not in stderr
    assert 1 <= len(_rows(out)) < 24
    assert cli.main([str(a) for a in ["certify-dataset", MODEL] + _args(data, out)]) == 0  # resumed serially
    assert _rows(out) == serial
