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

A download the server failed is not yet the track's fault: ``check_source`` (the
adapter's ``check_reachable``) asks the server whether it is up. If it is, the
failure is the track's, counted like any other; if not, the server went down
mid-run: nothing more is started, what is in flight finishes (its analyses are
saved), the tracks that met the outage stay pending without a failed attempt,
and the run ends with :class:`SourceDown` so that it is reported as failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from analysis.executors import AnalysisExecutor, AnalysisTask, TaskResult, executor_for
from analysis.sampling import SamplingPlan
from analysis.store import LibraryStore, TrackRecord
from analysis.types import TrackAnalysis

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0


Locator = Callable[[TrackRecord], str]
#: Returns when the source's server answers; raises (its reason in the message) when not.
SourceCheck = Callable[[], Awaitable[None]]


class SourceDown(Exception):
    """The music server stopped delivering audio during the run; the message says why and
    what was kept."""


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
    interrupted: int = 0  # met the server's outage: still pending, no attempt counted

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
    download_timeout: float = 60.0  # seconds a download may stay silent (upstream_timeout)
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
    check_source: SourceCheck | None = None,
) -> AnalysisReport:
    """Analyse every pending track (at most ``limit``) and return what happened.

    ``locate`` maps a track to the path or URL its audio is read from (default:
    ``track.path``); it runs here, in the parent, so workers need no adapter.
    ``executor`` overrides the one the settings choose (tests, benchmarks).
    ``check_source`` tells a server outage from a bad track (module docstring);
    without it a failed download is the track's failure. Raises SourceDown.
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
    down: str | None = None  # why the server is down, once a check said so
    try:
        await executor.start()
        while (queue and down is None) or in_flight:
            capacity = executor.capacity()
            while queue and down is None and len(in_flight) < capacity:
                track = queue.pop()
                task = AnalysisTask(int(track.id or 0), _location(track, locate), settings.plan,
                                    settings.model_path, settings.model_threads,
                                    settings.max_duration, settings.download_timeout)
                in_flight[executor.submit(task)] = track
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for fut in finished:
                in_flight.pop(fut)
                result = _checked(fut.result(), settings.version)
                if result.source_down and check_source is not None:
                    if down is None:
                        down = await _server_down(check_source, result.reason or "")
                    if down is not None:
                        report.interrupted += 1
                        continue
                if result.analysis is None:
                    report.failed += 1
                    report.failures.append((paths.get(result.track_id, ""), result.reason or ""))
                else:
                    report.analysed += 1
                await writer.add(result.track_id, result.analysis, result.reason)
            report.seconds = time.monotonic() - started
            if progress is not None:
                progress(report)
        if down is not None:
            left = report.total - report.analysed - report.failed
            raise SourceDown(
                f"the music server stopped delivering audio ({down}); the {report.analysed} "
                f"tracks analysed before that are saved, {left} stay pending for the next run")
    finally:
        for fut in in_flight:
            fut.cancel()
        await writer.flush()
        await executor.close()
        report.seconds = time.monotonic() - started
    return report


async def _server_down(check: SourceCheck, download_reason: str) -> str | None:
    """Why the server is down (its check's message), or None when it answers: then the
    failed download was the track's own."""
    try:
        await check()
    except Exception as exc:  # noqa: BLE001 - any failure of the check means "not up"
        from analysis.decode import redact_url

        log.warning("a download failed (%s) and the server does not answer: %s",
                    download_reason, redact_url(str(exc)))
        return redact_url(str(exc))
    return None
