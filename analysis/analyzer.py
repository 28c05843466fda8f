"""The analyzer job: pending tracks → an executor's workers → batched writes to the store.

Where tasks run is the executor's business (:mod:`analysis.executors`): the
local process pool by default, or a Dask cluster when ``scheduler_address`` is
set. Either way results come back here and this process alone writes them, in
small transactions as they arrive, so killing it at any moment loses at most
the analyses still in flight, and the next run resumes with what is pending.

Where a track's audio lives is the adapter's business: ``locate`` (for example
``SubsonicAdapter.audio_location``) turns a track into a local path or an
``http(s)`` URL in the parent process, and the worker reads either. URLs carry
credentials, so they are only ever logged or reported through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from analysis.executors import AnalysisExecutor, AnalysisTask, TaskResult, executor_for
from analysis.sampling import SamplingPlan
from analysis.store import LibraryStore, TrackRecord
from analysis.types import TrackAnalysis

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0


Locator = Callable[[TrackRecord], str]


def _location(track: TrackRecord, locate: Locator | None) -> str:
    """Where the worker reads ``track``: the adapter's answer, else the stored path."""
    if locate is None:
        return track.path or ""
    try:
        return locate(track)
    except Exception as exc:  # noqa: BLE001 - one unlocatable track must not stop the run
        from analysis.decode import redact_url

        log.warning("cannot locate audio of track %s: %s", track.id, redact_url(str(exc)))
        return track.path or ""


@dataclass
class AnalysisReport:
    total: int = 0
    analysed: int = 0
    failed: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tracks_per_second(self) -> float:
        return self.analysed / self.seconds if self.seconds > 0 else 0.0


ProgressCallback = Callable[[AnalysisReport], None]


@dataclass(frozen=True)
class AnalyzerSettings:
    plan: SamplingPlan
    version: str
    workers: int = 1
    model_threads: int = 1
    write_batch: int = 16
    max_attempts: int = 3
    max_duration: float = 0.0  # seconds; longer tracks fail with a reason (0: no limit)
    timeout: float = 0.0  # seconds per track in the local pool (0: none)
    model_path: str | None = None
    scheduler_address: str = ""  # a Dask scheduler; empty: the local process pool


class _Writer:
    """Buffers results and writes them in one transaction per batch or per FLUSH_SECONDS."""

    def __init__(self, store: LibraryStore, settings: AnalyzerSettings) -> None:
        self.store = store
        self.settings = settings
        self.done: list[tuple[int, TrackAnalysis]] = []
        self.failed: list[tuple[int, str, str]] = []
        self.last_flush = time.monotonic()

    async def add(self, track_id: int, result: TrackAnalysis | None, reason: str | None) -> None:
        if result is not None:
            self.done.append((track_id, result))
        else:
            self.failed.append((track_id, self.settings.version, reason or "unknown error"))
        due = time.monotonic() - self.last_flush >= FLUSH_SECONDS
        if len(self.done) + len(self.failed) >= self.settings.write_batch or due:
            await self.flush()

    async def flush(self) -> None:
        if self.done or self.failed:
            done, failed = self.done, self.failed
            self.done, self.failed = [], []
            await self.store.write_results(done, failed)
        self.last_flush = time.monotonic()


def _executor(settings: AnalyzerSettings) -> AnalysisExecutor:
    return executor_for(settings.workers, settings.model_path, settings.model_threads,
                        settings.plan, settings.scheduler_address, settings.timeout)


def _checked(result: TaskResult, version: str) -> TaskResult:
    """A worker with another model or musegate version must not mix its vectors in."""
    got = result.analysis.version if result.analysis is not None else None
    if got is None or got == version:
        return result
    return TaskResult(result.track_id, None,
                      f"the worker analysed with {got}, this server expects {version}: "
                      "install the same musegate version on every worker")


async def run_analysis(
    store: LibraryStore,
    settings: AnalyzerSettings,
    progress: ProgressCallback | None = None,
    limit: int | None = None,
    locate: Locator | None = None,
    executor: AnalysisExecutor | None = None,
) -> AnalysisReport:
    """Analyse every pending track (at most ``limit``) and return what happened.

    ``locate`` maps a track to the path or URL its audio is read from (default:
    ``track.path``); it runs here, in the parent, so workers need no adapter.
    ``executor`` overrides the one the settings choose (tests, benchmarks).
    """
    todo = await store.pending(settings.version, settings.max_attempts, limit)
    report = AnalysisReport(total=len(todo))
    if not todo:
        return report
    started = time.monotonic()
    writer = _Writer(store, settings)
    queue: list[TrackRecord] = list(reversed(todo))
    paths = {t.id: t.path or "" for t in todo}
    executor = executor if executor is not None else _executor(settings)
    in_flight: dict[asyncio.Future[TaskResult], TrackRecord] = {}
    try:
        await executor.start()
        while queue or in_flight:
            capacity = executor.capacity()
            while queue and len(in_flight) < capacity:
                track = queue.pop()
                task = AnalysisTask(int(track.id or 0), _location(track, locate), settings.plan,
                                    settings.model_path, settings.model_threads,
                                    settings.max_duration)
                in_flight[executor.submit(task)] = track
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                in_flight.pop(fut)
                result = _checked(fut.result(), settings.version)
                if result.analysis is None:
                    report.failed += 1
                    report.failures.append((paths.get(result.track_id, ""), result.reason or ""))
                else:
                    report.analysed += 1
                await writer.add(result.track_id, result.analysis, result.reason)
            report.seconds = time.monotonic() - started
            if progress is not None:
                progress(report)
    finally:
        for fut in in_flight:
            fut.cancel()
        await writer.flush()
        await executor.close()
        report.seconds = time.monotonic() - started
    return report
