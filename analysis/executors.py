"""Where analysis tasks run: the local process pool, or a Dask cluster other machines lend.

The analyzer (:mod:`analysis.analyzer`) only sees one small interface: submit an
:class:`AnalysisTask`, get back an awaitable that resolves to a
:class:`TaskResult`. Results come back to the calling process, which stays the
store's single writer; executors never touch the database. A task is
self-contained (where to read the audio, which sampling plan, which model), so
any worker with musegate installed can run it, and running it twice gives the
same analysis: a task lost with a dead worker is simply run again elsewhere.

Trust: a task's location may be a download URL that carries the music server's
credentials (Subsonic token and salt, Jellyfin api_key). Dask workers therefore
see those credentials; run workers only on machines you trust, and keep the
cluster's connections on a private network or TLS (see docs/scale.md). Nothing
here logs a location except through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from analysis.sampling import SamplingPlan
from analysis.types import TrackAnalysis

log = logging.getLogger(__name__)

CRASHED = "analysis worker crashed"


def timed_out(seconds: float) -> str:
    return (f"analysis took longer than {seconds:g} s (setting analysis_timeout): "
            "the decoder hung or the file is unusually slow to read")


@dataclass(frozen=True)
class AnalysisTask:
    """Everything a worker needs to analyse one track, and nothing it must look up."""

    track_id: int
    location: str  # a local path (shared or path-mapped) or an http(s) URL
    plan: SamplingPlan
    model_path: str | None = None  # None: the model bundled with musegate
    model_threads: int = 1
    max_duration: float = 0.0  # seconds; 0: no limit
    download_timeout: float = 60.0  # seconds of silence before a download is abandoned


@dataclass(frozen=True)
class TaskResult:
    track_id: int
    analysis: TrackAnalysis | None
    reason: str | None = None  # why it failed, credentials already redacted
    # The server did not deliver the audio (decode.DownloadUnavailable): the analyzer asks
    # the server whether it is up before it counts this against the track.
    source_down: bool = False


class AnalysisExecutor(Protocol):
    """Runs tasks somewhere; the caller keeps ``capacity()`` of them in flight."""

    async def start(self) -> None: ...

    def capacity(self) -> int: ...

    def submit(self, task: AnalysisTask) -> asyncio.Future[TaskResult]: ...

    async def close(self) -> None: ...


# ---- what runs in a worker process (local pool or Dask worker) -----------------------

_cache_lock = threading.Lock()
_cached: tuple[tuple[Any, ...], Any] | None = None


def worker_model(model_path: str | None, threads: int, plan: SamplingPlan) -> Any:
    """The model of this worker process, loaded and warmed once and then reused.

    A Dask worker runs many tasks in one long-lived process; loading the ONNX
    session per task would cost more than the analysis. The provider choice is
    :func:`analysis.model.select_providers`: a worker with onnxruntime-gpu and a
    CUDA device runs the network on the GPU with no setting.

    The numeric libraries get the same thread budget as ONNX Runtime: left at
    their defaults, OpenBLAS and OpenMP start one spinning thread per core in
    every worker, and with one worker per core that doubled the CPU time of a
    library analysis (measured: 72.7 s vs 36.1 s for 92 tracks on 2 cores).
    """
    global _cached
    key = (model_path, threads, plan)
    with _cache_lock:
        if _cached is not None and _cached[0] == key:
            return _cached[1]
        from threadpoolctl import threadpool_limits

        from analysis.model import MusicnnModel
        from analysis.pipeline import analyse_excerpts

        model = MusicnnModel(model_path, threads=threads)
        log.debug("analysis worker ready with providers %s", model.providers)
        rng = np.random.default_rng(0)
        warm = (rng.standard_normal(16000 * 4) * 0.1).astype(np.float32)
        analyse_excerpts([warm], 4.0, model, plan)  # warms librosa's JIT paths
        # Last: only libraries already loaded are limited, and numpy and scipy each
        # bring their own OpenBLAS, loaded when first used.
        threadpool_limits(limits=max(1, threads))
        _cached = (key, model)
        return model


def analyse_task(task: AnalysisTask) -> TaskResult:
    """Analyse one track; never raises for a bad file (the reason is returned instead)."""
    from analysis.decode import DecodeError, DownloadUnavailable, fetch, is_url, redact_url
    from analysis.pipeline import analyse_file

    model = worker_model(task.model_path, task.model_threads, task.plan)
    path = task.location
    try:
        # Fetched once here: probe and read_excerpts then both read the in-memory copy.
        source = fetch(path, timeout=task.download_timeout) if is_url(path) else path
        analysis = analyse_file(source, model, task.plan, task.max_duration)  # type: ignore[arg-type]
        return TaskResult(task.track_id, analysis)
    except DownloadUnavailable as exc:
        return TaskResult(task.track_id, None, redact_url(str(exc)), source_down=True)
    except DecodeError as exc:
        return TaskResult(task.track_id, None, redact_url(str(exc)))
    except MemoryError:
        return TaskResult(task.track_id, None, "out of memory while analysing")
    except Exception as exc:  # a bad file must never stop the run
        log.error("analysis of %s failed", redact_url(path), exc_info=not is_url(path))
        return TaskResult(task.track_id, None, redact_url(f"{type(exc).__name__}: {exc}"))


def _init_pool_worker(model_path: str | None, threads: int, plan: SamplingPlan) -> None:
    worker_model(model_path, threads, plan)


# ---- the local process pool (default) ---------------------------------------------------


class LocalPoolExecutor:
    """One spawned process per worker on this machine.

    Processes, not threads: the network and librosa both hold the GIL for long
    stretches. A crashed worker (killed by the OOM killer, a segfault in a codec)
    breaks the whole pool; the tasks in flight are reported as crashed (they count
    as one failed attempt and are retried on the next run) and a fresh pool
    takes the rest.

    ``timeout`` (seconds, 0: none) bounds one task: a decoder that hangs in C code
    cannot be interrupted, so its worker is killed, the task is recorded as timed
    out, and the other tasks that pool held are run again on a fresh one.
    """

    def __init__(self, workers: int, model_path: str | None, model_threads: int,
                 plan: SamplingPlan, timeout: float = 0.0) -> None:
        self.workers = max(1, workers)
        self.timeout = timeout
        self._initargs = (model_path, model_threads, plan)
        self._pool: ProcessPoolExecutor | None = None
        self._killed: set[ProcessPoolExecutor] = set()  # pools killed on purpose (kept: ids recycle)

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn: the parent holds aiosqlite's thread and asyncio state that must not be forked.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_pool_worker,
            initargs=self._initargs,
        )

    async def start(self) -> None:
        self._pool = self._new_pool()

    def capacity(self) -> int:
        """Two tasks per worker, so none idles while a result travels back; one with a
        timeout, so that no task's clock runs while it waits behind another."""
        return self.workers if self.timeout > 0 else self.workers * 2

    def submit(self, task: AnalysisTask) -> asyncio.Future[TaskResult]:
        return asyncio.ensure_future(self._run(task))

    async def _run(self, task: AnalysisTask) -> TaskResult:
        pool = self._pool
        assert pool is not None, "start() first"
        try:
            running = asyncio.wrap_future(pool.submit(analyse_task, task))
            if self.timeout <= 0:
                return await running
            # capacity() keeps one task per worker, so a task starts when it is handed
            # over and the clock measures it alone (plus a fresh worker's model load).
            return await asyncio.wait_for(running, self.timeout)
        except TimeoutError:
            if pool in self._killed:  # its clock ran while it waited behind the hung one
                return await self._run(task)
            # A hung decoder holds its worker for good: only killing the process frees
            # it, and that breaks the pool for the other tasks in flight too.
            self._kill(pool)
            return TaskResult(task.track_id, None, timed_out(self.timeout))
        except BrokenProcessPool:
            if pool in self._killed:  # killed for another task's hang: not this one's fault
                return await self._run(task)
            if self._pool is pool:  # the first task to notice replaces the pool
                pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
            return TaskResult(task.track_id, None, CRASHED)

    def _kill(self, pool: ProcessPoolExecutor) -> None:
        self._killed.add(pool)
        if self._pool is not pool:
            return
        # ProcessPoolExecutor has no public way to stop a busy worker before 3.14.
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.kill()
        # Not cancel_futures: the tasks still queued must see BrokenProcessPool (and be
        # resubmitted above), not a cancellation that would end the whole run.
        pool.shutdown(wait=False)
        self._pool = self._new_pool()

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# ---- a Dask distributed cluster ----------------------------------------------------------


class DaskExecutor:
    """Tasks run on the workers of a ``dask.distributed`` scheduler.

    A worker that dies mid-task is Dask's to handle: the scheduler gives the
    task to another worker (up to ``distributed.scheduler.allowed-failures``
    deaths per task), so nothing is lost and, because results are only written
    here, nothing is written twice. A task that killed that many workers comes
    back as crashed, like a crash in the local pool. When the scheduler itself
    goes away the run stops with an error; what was written stays, the rest is
    still pending for the next run.

    Connection security (TLS certificates) comes from Dask's own configuration
    (``~/.config/dask/*.yaml`` or ``DASK_DISTRIBUTED__COMM__TLS__*`` variables).
    """

    def __init__(self, address: str, min_capacity: int = 2, connect_timeout: float = 30.0) -> None:
        self.address = address
        self.min_capacity = max(1, min_capacity)
        self.connect_timeout = connect_timeout
        self._client: Any = None

    async def start(self) -> None:
        try:
            from distributed import Client
        except ImportError:
            raise RuntimeError(
                "scheduler_address is set but dask.distributed is not installed: "
                "pip install 'musegate[dask]'"
            ) from None
        self._client = await Client(self.address, asynchronous=True,
                                    timeout=self.connect_timeout, set_as_default=False)
        log.info("analysing on the Dask cluster at %s (%d workers)",
                 self.address, len(self._workers()))

    def _workers(self) -> dict[str, Any]:
        info = self._client.scheduler_info() if self._client is not None else {}
        return info.get("workers", {}) if isinstance(info, dict) else {}

    def capacity(self) -> int:
        """Two tasks per worker thread, so none idles while a result travels back.

        Re-read on every call: workers that join or leave mid-run change it.
        """
        threads = sum(int(w.get("nthreads", 1)) for w in self._workers().values())
        return max(self.min_capacity, 2 * threads)

    def submit(self, task: AnalysisTask) -> asyncio.Future[TaskResult]:
        assert self._client is not None, "start() first"
        # pure=False: the same track submitted again (a later run) is a new task.
        future = self._client.submit(analyse_task, task, pure=False,
                                     key=f"musegate-analyse-{task.track_id}-{uuid.uuid4().hex}")
        return asyncio.ensure_future(self._await(task, future))

    async def _await(self, task: AnalysisTask, future: Any) -> TaskResult:
        from distributed import KilledWorker

        try:
            return await future
        except KilledWorker:
            return TaskResult(task.track_id, None, CRASHED)
        except asyncio.CancelledError:
            future.release()
            raise

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()


def executor_for(workers: int, model_path: str | None, model_threads: int, plan: SamplingPlan,
                 scheduler_address: str = "", timeout: float = 0.0) -> AnalysisExecutor:
    """The configured executor: Dask when ``scheduler_address`` is set, else the local pool.

    ``timeout`` (seconds per track, 0: none) applies to the local pool only.
    """
    if scheduler_address:
        return DaskExecutor(scheduler_address, min_capacity=2 * max(1, workers))
    return LocalPoolExecutor(workers, model_path, model_threads, plan, timeout)
