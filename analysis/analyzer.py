"""The analyzer job: pending tracks → worker processes → batched writes to the store.

Workers are separate processes because the network and librosa both hold the
GIL for long stretches; each loads the model and warms librosa's JIT once, so
per-track cost is only the track's own work. Results are written in small
transactions as they arrive, so killing the process at any moment loses at most
the analyses still in flight, and the next run resumes with what is pending.

Where a track's audio lives is the adapter's business: ``locate`` (for example
``SubsonicAdapter.audio_location``) turns a track into a local path or an
``http(s)`` URL in the parent process, and the worker reads either. URLs carry
credentials, so they are only ever logged or reported through ``redact_url``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

import numpy as np

from analysis.sampling import SamplingPlan
from analysis.store import LibraryStore, TrackRecord
from analysis.types import TrackAnalysis

log = logging.getLogger(__name__)

FLUSH_SECONDS = 2.0

_worker_model = None
_worker_plan: SamplingPlan | None = None


def _init_worker(model_path: str | None, threads: int, plan: SamplingPlan) -> None:
    """Load the model once per process and run one tiny analysis to warm every JIT path.

    The numeric libraries get the same thread budget as ONNX Runtime: left at
    their defaults, OpenBLAS and OpenMP start one spinning thread per core in
    every worker, and with one worker per core that doubled the CPU time of a
    library analysis (measured: 72.7 s vs 36.1 s for 92 tracks on 2 cores).
    """
    global _worker_model, _worker_plan
    from threadpoolctl import threadpool_limits

    from analysis.model import MusicnnModel
    from analysis.pipeline import analyse_excerpts


    _worker_model = MusicnnModel(model_path, threads=threads)
    _worker_plan = plan
    log.debug("analysis worker ready with providers %s", _worker_model.providers)
    rng = np.random.default_rng(0)
    warm = (rng.standard_normal(16000 * 4) * 0.1).astype(np.float32)
    analyse_excerpts([warm], 4.0, _worker_model, plan)
    # Last: only libraries already loaded are limited, and numpy and scipy each
    # bring their own OpenBLAS, loaded when first used.
    threadpool_limits(limits=max(1, threads))


def _analyse_in_worker(track_id: int, path: str) -> tuple[int, TrackAnalysis | None, str | None]:
    from analysis.decode import DecodeError, fetch, is_url, redact_url
    from analysis.pipeline import analyse_file

    assert _worker_model is not None and _worker_plan is not None
    try:
        # Fetched once here: probe and read_excerpts then both read the in-memory copy.
        source = fetch(path) if is_url(path) else path
        return track_id, analyse_file(source, _worker_model, _worker_plan), None  # type: ignore[arg-type]
    except DecodeError as exc:
        return track_id, None, redact_url(str(exc))
    except MemoryError:
        return track_id, None, "out of memory while analysing"
    except Exception as exc:  # a bad file must never stop the run
        log.error("analysis of %s failed", redact_url(path), exc_info=not is_url(path))
        return track_id, None, redact_url(f"{type(exc).__name__}: {exc}")


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
    model_path: str | None = None


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


def _pool(settings: AnalyzerSettings) -> ProcessPoolExecutor:
    # spawn: the parent holds aiosqlite's thread and asyncio state that must not be forked.
    return ProcessPoolExecutor(
        max_workers=settings.workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(settings.model_path, settings.model_threads, settings.plan),
    )


async def run_analysis(
    store: LibraryStore,
    settings: AnalyzerSettings,
    progress: ProgressCallback | None = None,
    limit: int | None = None,
    locate: Locator | None = None,
) -> AnalysisReport:
    """Analyse every pending track (at most ``limit``) and return what happened.

    ``locate`` maps a track to the path or URL its audio is read from (default:
    ``track.path``); it runs here, in the parent, so workers need no adapter.
    """
    todo = await store.pending(settings.version, settings.max_attempts, limit)
    report = AnalysisReport(total=len(todo))
    if not todo:
        return report
    started = time.monotonic()
    writer = _Writer(store, settings)
    queue: list[TrackRecord] = list(reversed(todo))
    loop = asyncio.get_running_loop()
    executor = _pool(settings)
    in_flight: dict[asyncio.Future[tuple[int, TrackAnalysis | None, str | None]], TrackRecord] = {}
    paths = {t.id: t.path or "" for t in todo}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < settings.workers * 2:
                track = queue.pop()
                fut: Future = executor.submit(
                    _analyse_in_worker, track.id, _location(track, locate)
                )
                in_flight[asyncio.wrap_future(fut, loop=loop)] = track
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            broken = False
            for fut in finished:
                track = in_flight.pop(fut)
                try:
                    track_id, result, reason = fut.result()
                except BrokenProcessPool:
                    track_id, result, reason = track.id, None, "analysis worker crashed"
                    broken = True
                if result is None:
                    report.failed += 1
                    report.failures.append((paths.get(track_id, ""), reason or ""))
                else:
                    report.analysed += 1
                await writer.add(track_id, result, reason)
            if broken:
                # Every other in-flight task died with the pool; record them and start afresh.
                for fut, track in list(in_flight.items()):
                    fut.cancel()
                    report.failed += 1
                    report.failures.append((track.path or "", "analysis worker crashed"))
                    await writer.add(track.id, None, "analysis worker crashed")
                in_flight.clear()
                executor.shutdown(wait=False, cancel_futures=True)
                executor = _pool(settings)
            report.seconds = time.monotonic() - started
            if progress is not None:
                progress(report)
    finally:
        await writer.flush()
        executor.shutdown(wait=False, cancel_futures=True)
        report.seconds = time.monotonic() - started
    return report
