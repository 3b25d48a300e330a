"""certify-dataset on a Dask cluster (``--workers K`` or ``--scheduler tcp://HOST:8786``).

One Dask task per image: ``certify_task`` runs :func:`intengine.runs.certify_image`, the same pure
function as a serial run, so every row is identical to the serial row (times aside).  The model
file's bytes are scattered to the workers once and parsed once per worker process (checked
against the run's sha256); an image (3 KB for CIFAR-10) travels with its task.  The client is
the only writer: results come back in completion order and :func:`intengine.runs.write_rows`
puts each on disk before the next.

Failures:
* a worker dies (kill -9, OOM, machine lost): the scheduler reruns its task on another worker
  (after ``distributed.scheduler.allowed-failures`` + 1 deaths for one task, the run stops);
* the scheduler dies or becomes unreachable: IntengineError, the rows so far are on disk and
  rerunning the command resumes;
* the client dies: LocalCluster workers exit with it (Dask's parent-alive pipe); a remote
  cluster drops the client's tasks.  Rerunning resumes.

At most ``4 x (task slots)`` tasks (at least 32) are submitted at a time, so memory on the
client and the scheduler stays bounded for any dataset size and a dead client strands little
work.  ``distributed`` is imported only here, only when a cluster is asked for.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import time
import uuid
from concurrent.futures import CancelledError
from pathlib import Path

from intengine.errors import IntengineError

WINDOW_PER_SLOT = 4
MIN_WINDOW = 32
RESIZE_SECONDS = 10.0  # how often the window follows workers that join or leave a running cluster
CONNECT_TIMEOUT = "20s"

_MODELS: dict[str, object] = {}  # per worker process: model sha256 -> parsed Model


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_model(model_bytes: bytes, sha256: str):
    model = _MODELS.get(sha256)
    if model is None:
        if hashlib.sha256(model_bytes).hexdigest() != sha256:
            raise IntengineError(f"model bytes received by the worker do not match sha256 {sha256}")
        from intengine import modelfile
        from intengine.engine import Model

        desc, tensors = modelfile.loads(model_bytes, f"<model {sha256[:12]}>")
        _MODELS.clear()  # one run's model at a time: a worker process may serve runs one after another
        model = _MODELS[sha256] = Model(desc, tensors, f"<model {sha256[:12]}>")
    return model


def _worker_threads(threads: int | None) -> int:
    """``threads`` if given, else this machine's cores shared among the worker's task slots."""
    if threads is not None:
        return threads
    from distributed import get_worker

    return max(1, usable_cores() // max(1, get_worker().state.nthreads))


def certify_task(model_bytes: bytes, sha256: str, image, idx: int, seed: int, opts, threads: int | None):
    """The task run on a worker: one image's CERTIFY result (numba threads set per task thread)."""
    from intengine.runs import certify_image
    from intengine.smoothing import set_threads

    set_threads(_worker_threads(threads))
    return certify_image(_worker_model(model_bytes, sha256), image, idx, seed, opts)


def _has_bokeh() -> bool:
    return importlib.util.find_spec("bokeh") is not None


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise IntengineError(f"--workers/--scheduler need the 'distributed' package ({exc}); "
                             "pip install distributed") from None
    return distributed


class DaskExecutor:
    """An executor for :func:`intengine.runs.certify_dataset` that runs one Dask task per image.

    ``workers=K``: a LocalCluster of K worker processes with one task slot each and ``threads``
    Numba threads per worker (default: this machine's cores // K, so K x threads never exceeds
    the cores unless asked).  ``scheduler=ADDRESS``: a running cluster; ``threads`` defaults to
    each worker machine's cores // its task slots.  ``log(line)`` receives status lines.
    """

    def __init__(self, *, workers: int | None = None, scheduler: str | None = None,
                 threads: int | None = None, log=None):
        if (workers is None) == (scheduler is None):
            raise IntengineError("give either --workers or --scheduler")
        if workers is not None and workers < 1:
            raise IntengineError(f"--workers must be >= 1, got {workers}")
        if threads is not None and threads < 1:
            raise IntengineError(f"--threads-per-worker must be >= 1, got {threads}")
        self.workers, self.scheduler, self.log = workers, scheduler, log or (lambda line: None)
        self.threads = threads
        if workers is not None and threads is None:
            self.threads = max(1, usable_cores() // workers)

    def _start(self, distributed):
        """(client, cluster or None), connected."""
        if self.scheduler is not None:
            try:
                client = distributed.Client(self.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError) as exc:
                raise IntengineError(f"cannot reach the Dask scheduler at {self.scheduler} ({exc})") from None
            return client, None
        env = {}
        if self.threads > usable_cores():  # asked to oversubscribe: let numba start that many threads
            env["NUMBA_NUM_THREADS"] = str(self.threads)
        cluster = distributed.LocalCluster(
            n_workers=self.workers, threads_per_worker=1, processes=True,
            silence_logs=logging.CRITICAL, env=env)
        try:
            client = distributed.Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        return client, cluster

    def _describe(self, client, cluster) -> str:
        if cluster is not None:
            what = f"LocalCluster of {self.workers} workers x {self.threads} threads"
        else:
            workers = len(client.scheduler_info().get("workers", {}))
            what = f"Dask scheduler {self.scheduler}, {workers} workers connected"
        # the scheduler serves http without bokeh too, but the dashboard pages need bokeh there
        try:
            has_dashboard = client.run_on_scheduler(_has_bokeh)
        except Exception:  # run_on_scheduler refused or failed: show no link rather than a dead one
            has_dashboard = False
        return what + (f", dashboard {client.dashboard_link}" if has_dashboard else "")

    def _slots(self, client) -> int:
        try:
            return sum(client.nthreads().values())
        except Exception:  # a scheduler hiccup: keep the current window
            return 0

    def __call__(self, model_path, model_sha256: str, x, opts, todo, seed):
        """Yield ``(idx, result)`` for every idx of ``todo``, in completion order."""
        if not todo:
            return
        if model_path is None:
            raise IntengineError("a cluster run needs the model as a file")
        distributed = _import_distributed()
        model_bytes = Path(model_path).read_bytes()
        if hashlib.sha256(model_bytes).hexdigest() != model_sha256:
            raise IntengineError(f"{model_path} changed after the run started; rerun")
        # Dask logs connection losses and worker restarts with tracebacks; they become one line here
        # (its config gives some child loggers, e.g. distributed.client, levels of their own)
        loggers = [logging.getLogger(name) for name in ["distributed"] + list(logging.root.manager.loggerDict)
                   if name == "distributed" or name.startswith("distributed.")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            client, cluster = self._start(distributed)
            try:
                self.log(self._describe(client, cluster))
                yield from self._run(distributed, client, model_bytes, model_sha256, x, opts, todo, seed)
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    def _run(self, distributed, client, model_bytes, sha256, x, opts, todo, seed):
        try:
            model_future = client.scatter(model_bytes, broadcast=True, hash=False)
        except (OSError, TimeoutError) as exc:
            raise self._lost(exc) from None
        token = uuid.uuid4().hex[:8]
        pending = iter(todo)
        running = distributed.as_completed(loop=client.loop)
        index_of: dict[str, int] = {}

        def submit(count: int) -> None:
            for _ in range(count):
                idx = next(pending, None)
                if idx is None:
                    return
                key = f"intengine-certify-{idx}-{token}"
                index_of[key] = int(idx)
                running.add(client.submit(certify_task, model_future, sha256, x[idx], int(idx), int(seed), opts,
                                          self.threads, key=key))

        window = max(MIN_WINDOW, WINDOW_PER_SLOT * self._slots(client))
        submit(window)
        resized = time.monotonic()
        for fut in running:
            idx = index_of.pop(fut.key)
            try:
                result = fut.result()
            except distributed.KilledWorker:
                raise IntengineError(f"image {idx}: the workers running it died too often (Dask's allowed-failures); "
                                     "rerun the command to resume") from None
            except ImportError as exc:  # e.g. a worker machine without intengine
                raise IntengineError(f"a Dask worker cannot run intengine ({exc}); install it on each worker") from None
            except (CancelledError, OSError, TimeoutError) as exc:
                raise self._lost(exc) from None
            fut.release()
            yield idx, result
            if time.monotonic() - resized > RESIZE_SECONDS:
                window = max(window, WINDOW_PER_SLOT * self._slots(client))
                resized = time.monotonic()
            submit(window - running.count())

    def _lost(self, exc) -> IntengineError:
        where = self.scheduler or "the LocalCluster"
        return IntengineError(f"lost the Dask scheduler at {where} ({type(exc).__name__}); "
                              "the finished rows are on disk, rerun the command to resume")
