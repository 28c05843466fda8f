"""Keeps the analysis current while ``musegate serve`` runs: scan, then analyse what is new.

APScheduler's AsyncIOScheduler runs in the server's own event loop: a library
scan at start and on ``scan_cron`` (default nightly), each followed by the
analysis of new and changed tracks in the process pool, and never two runs at
once. The state of the last and current run is also written to
``DATA_DIR/jobs.json`` so that ``musegate status`` — a separate process — can
show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from adapters.common import SourceError
from analysis.analyzer import AnalysisReport, SourceDown
from analysis.store import LibraryStore, StorageFullError
from musegate import library
from musegate.config import Config, ConfigError

log = logging.getLogger(__name__)

JOB_ID = "library-scan"
RETRY_ID = f"{JOB_ID}-retry"
#: The longest wait between retries after failures in a row (scan_retry_minutes doubles).
MAX_RETRY_MINUTES = 360
STATE_FILE = "jobs.json"
# Progress is written to disk at most this often.
_STATE_WRITE_SECONDS = 2.0


def cron_trigger(expression: str) -> CronTrigger:
    """The trigger for ``scan_cron``; a bad expression is a configuration error naming it."""
    try:
        return CronTrigger.from_crontab(expression)
    except ValueError as exc:
        raise ConfigError(f"scan_cron = {expression!r}: not a cron expression ({exc})") from None


@dataclass
class RunState:
    """One scan-and-analyse run as users see it in `musegate status` and /api/jobs."""

    id: str = JOB_ID
    kind: str = "library-scan"
    status: str = "idle"  # idle | scanning | analysing | done | failed
    progress: float = 0.0
    message: str = ""
    started: float | None = None
    finished: float | None = None
    next_run: float | None = None
    retry_at: float | None = None  # an early retry after the music server failed a run
    analysis_started: float | None = None  # when the analysis part of the run began
    added: int = 0
    changed: int = 0
    removed: int = 0
    analysed: int = 0
    failed: int = 0
    total: int = 0
    error: str | None = None
    runs: int = 0
    # Since the server started, over all runs (Prometheus counters read these).
    analysed_total: int = 0
    failed_total: int = 0
    analysis_seconds_total: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_state(data_dir: str | Path) -> dict[str, Any] | None:
    """The last state written by a server using ``data_dir`` (None when it never ran)."""
    path = Path(data_dir) / STATE_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class LibraryScheduler:
    """Owns the AsyncIOScheduler and the one library job."""

    def __init__(
        self,
        store: LibraryStore,
        config: Config,
        adapter: Any,
        on_analysed: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.adapter = adapter
        self.on_analysed = on_analysed
        self.state = RunState()
        self._lock = asyncio.Lock()
        self._scheduler = AsyncIOScheduler()
        self._trigger = cron_trigger(config.scan_cron)
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[bool]] = set()
        self._listeners: set[asyncio.Queue[dict[str, Any]]] = set()
        self._last_write = 0.0
        self._source_failures = 0  # runs in a row the music server (or folder) failed

    def start(self, run_now: bool = True) -> None:
        self._scheduler.add_job(
            self.run_once,
            self._trigger,
            id=JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=3600,
            replace_existing=True,
        )
        self._scheduler.start()
        if run_now:
            self._scheduler.add_job(self.run_once, id=f"{JOB_ID}-at-start", max_instances=1)
        self._update_next_run()
        self._write_state(force=True)

    async def shutdown(self) -> None:
        """Stop scheduling and end a run in progress; finished analyses are already saved."""
        with contextlib.suppress(Exception):
            self._scheduler.shutdown(wait=False)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.state.status in ("scanning", "analysing"):
            self.state.status, self.state.message = "idle", "stopped by shutdown"
        self._write_state(force=True)

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    def run_soon(self) -> bool:
        """Start a scan-and-analyse run in the background now; False when one is going."""
        if self._lock.locked():
            return False
        task = asyncio.get_running_loop().create_task(self.run_once(), name="library scan (asked)")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return True

    async def run_once(self) -> bool:
        """Scan and analyse now; False (and nothing done) when a run is already going."""
        if self._lock.locked():
            log.info("library scan skipped: the previous run is still going")
            return False
        async with self._lock:
            self._task = asyncio.current_task()
            try:
                await self._run()
            finally:
                self._task = None  # shutdown() must never cancel a caller that awaited us
            return True

    async def _run(self) -> None:
        st = self.state
        st.status, st.progress, st.error = "scanning", 0.0, None
        st.started, st.finished, st.analysis_started = time.time(), None, None
        st.analysed = st.failed = st.total = 0
        st.message = "scanning the library"
        st.runs += 1
        self._write_state(force=True)
        try:
            if self.adapter is None:
                raise RuntimeError("no library source configured (library_path or upstream_url)")
            sync = await library.scan(self.store, self.adapter)
            st.added, st.changed, st.removed = sync.added, sync.changed, sync.removed
            if sync.removed and self.on_analysed is not None:
                await self.on_analysed()
            st.status, st.message = "analysing", "analysing new and changed tracks"
            st.analysis_started = time.time()
            self._write_state(force=True)
            report = await library.analyse(self.store, self.config, self._progress,
                                           **library.analyse_from(self.adapter))
            self._progress(report)
            st.analysed_total += report.analysed
            st.failed_total += report.failed
            st.analysis_seconds_total += report.seconds
            st.status = "done"
            st.message = (
                f"{sync.added} new, {sync.changed} changed, {sync.removed} removed; "
                f"{report.analysed} analysed, {report.failed} failed"
            )
            if self.on_analysed is not None:
                await self.on_analysed()
            self._cancel_retry()
        except asyncio.CancelledError:
            st.status, st.message = "idle", "stopped"
            raise
        except StorageFullError as exc:
            log.error("library scan stopped: %s", exc)
            st.status, st.error = "failed", str(exc)
            st.message = "stopped: the disk is full; will retry at the next scheduled run"
            await self._serve_what_was_saved()
        except (SourceError, SourceDown) as exc:
            # The music server (or the folder) failed: its own words are the whole story,
            # so one line, no traceback. Messages carry no credentials (adapters redact).
            during = "analysis" if st.analysis_started else "scan"
            retry = self._schedule_retry()
            when = (f"will retry in {retry:g} min (setting scan_retry_minutes)" if retry
                    else "will retry at the next scheduled run")
            log.error("library %s failed: %s; %s", during, exc, when)
            st.status, st.error = "failed", str(exc)
            st.message = f"the library {during} failed; {when}"
            await self._serve_what_was_saved()
        except Exception as exc:  # a failed run is reported and retried on the next schedule
            log.exception("library scan failed")
            st.status, st.error = "failed", f"{type(exc).__name__}: {exc}"
            st.message = "failed; will retry at the next scheduled run"
            await self._serve_what_was_saved()
        finally:
            st.finished = time.time()
            st.history = (st.history + [{
                "started": st.started, "finished": st.finished, "status": st.status,
                "message": st.message,
            }])[-10:]
            self._update_next_run()
            self._write_state(force=True)

    def _schedule_retry(self) -> float | None:
        """Minutes until an early retry after the source failed, or None when there is none.

        A server that was down at start (a pod whose music server boots later) or over
        night would otherwise leave new songs unanalysed until the next ``scan_cron``.
        The wait doubles with each failure in a row, so a long outage costs a handful of
        log lines, and a retry that would come after the next scheduled run is not made.
        """
        self._source_failures += 1
        base = self.config.scan_retry_minutes
        if base <= 0 or not self._scheduler.running:
            return None
        minutes = min(base * 2 ** (self._source_failures - 1), MAX_RETRY_MINUTES)
        when = datetime.now(UTC) + timedelta(minutes=minutes)
        job = self._scheduler.get_job(JOB_ID)
        upcoming = getattr(job, "next_run_time", None)
        if upcoming is not None and upcoming <= when:
            self._cancel_retry(keep_count=True)
            return None
        self._scheduler.add_job(self.run_once, "date", run_date=when, id=RETRY_ID,
                                max_instances=1, misfire_grace_time=3600,
                                replace_existing=True)
        self.state.retry_at = when.timestamp()
        return float(minutes)

    def _cancel_retry(self, keep_count: bool = False) -> None:
        if not keep_count:
            self._source_failures = 0
        self.state.retry_at = None
        if self._scheduler.running:
            with contextlib.suppress(JobLookupError):
                self._scheduler.remove_job(RETRY_ID)

    async def _serve_what_was_saved(self) -> None:
        """After a failed run: what it analysed before failing is served meanwhile."""
        if self.on_analysed is None or self.state.analysis_started is None:
            return
        try:
            await self.on_analysed()
        except Exception:  # noqa: BLE001 - the run is already reported as failed
            log.exception("refreshing the library after a failed run failed")

    def _progress(self, report: AnalysisReport) -> None:
        st = self.state
        st.total, st.analysed, st.failed = report.total, report.analysed, report.failed
        st.progress = (report.analysed + report.failed) / report.total if report.total else 1.0
        st.message = f"analysed {report.analysed + report.failed} of {report.total}"
        self._write_state()

    def _update_next_run(self) -> None:
        job = self._scheduler.get_job(JOB_ID) if self._scheduler.running else None
        when = getattr(job, "next_run_time", None) if job is not None else None
        self.state.next_run = when.timestamp() if when is not None else None

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue that receives a copy of the state on every change (the UI's live progress)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=256)
        self._listeners.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self._listeners.discard(queue)

    def _notify(self) -> None:
        if not self._listeners:
            return
        state = self.state.to_json()
        state.pop("history", None)
        for queue in self._listeners:
            if queue.full():  # a slow reader loses the oldest states, never the newest
                queue.get_nowait()
            queue.put_nowait(dict(state))

    def _write_state(self, force: bool = False) -> None:
        self._notify()
        now = time.monotonic()
        if not force and now - self._last_write < _STATE_WRITE_SECONDS:
            return
        self._last_write = now
        path = Path(self.config.data_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(self.state.to_json()), encoding="utf-8")
            tmp.replace(path)
        except OSError as exc:  # a full disk must not stop the analysis
            log.warning("cannot write %s: %s", path, exc)
