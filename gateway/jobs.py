"""In-process background jobs with progress, for work too slow for one request (clustering).

A job's CPU work runs in a worker thread so the event loop keeps answering
every other request; scikit-learn and numpy release the GIL in their heavy
loops, so a thread costs little and, unlike a process, needs no pickling of
the catalogue and can report progress by plain attribute writes. Jobs live in
memory only: they are cheap to run again, and a restart forgets them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass
class Job:
    id: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    status: str = QUEUED
    progress: float = 0.0
    message: str = ""
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: str | None = None
    error_field: str | None = None

    @property
    def finished_ok(self) -> bool:
        return self.status == DONE

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status,
            "progress": round(self.progress, 4),
            "message": self.message,
            "params": self.params,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "error": self.error,
        }


class JobManager:
    """Runs jobs one (or ``workers``) at a time and keeps the last ``keep`` of them."""

    def __init__(self, workers: int = 1, keep: int = 50) -> None:
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="musegate-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._keep = keep
        self._counter = itertools.count(1)

    def submit(
        self, kind: str, work: Callable[[Progress], Any], params: dict[str, Any] | None = None
    ) -> Job:
        """Queue ``work(progress)``; its return value becomes the job's result."""
        job = Job(id=f"{kind}-{next(self._counter)}-{uuid.uuid4().hex[:8]}", kind=kind,
                  params=dict(params or {}))
        self._jobs[job.id] = job
        self._trim()
        loop = asyncio.get_running_loop()

        def progress(fraction: float, message: str) -> None:
            # Attribute writes are atomic under the GIL; readers may see a slightly old value.
            job.progress = min(max(float(fraction), 0.0), 1.0)
            job.message = message

        def run() -> Any:
            job.status = RUNNING
            job.started = time.time()
            return work(progress)

        async def supervise() -> None:
            try:
                job.result = await loop.run_in_executor(self._executor, run)
                job.status, job.progress = DONE, 1.0
                job.message = job.message or "done"
            except ValueError as exc:  # the input cannot give a result (library too small, ...)
                job.status, job.error = FAILED, str(exc)
            except Exception as exc:  # noqa: BLE001 - a job failure is reported, not raised
                log.exception("job %s failed", job.id)
                job.status, job.error = FAILED, f"{exc.__class__.__name__}: {exc}"
            finally:
                job.finished = time.time()

        task = loop.create_task(supervise(), name=f"job {job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def list(self, kind: str | None = None) -> list[Job]:
        """Newest first."""
        return [j for j in reversed(self._jobs.values()) if kind is None or j.kind == kind]

    def running(self) -> int:
        return sum(1 for j in self._jobs.values() if j.status in (QUEUED, RUNNING))

    def _trim(self) -> None:
        finished = [j.id for j in self._jobs.values() if j.status in (DONE, FAILED)]
        while len(self._jobs) > self._keep and finished:
            self._jobs.pop(finished.pop(0), None)

    async def wait(self, job_id: str) -> Job:
        """Until the job has finished (tests, the CLI)."""
        job = self._jobs[job_id]
        while job.status in (QUEUED, RUNNING):
            await asyncio.sleep(0.01)
        return job

    async def close(self) -> None:
        """Drop queued work; a running job finishes in its thread, its result is discarded."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
