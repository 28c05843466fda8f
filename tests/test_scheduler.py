"""The library scheduler: scan + analyse at start and on schedule, one run at a time."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from adapters.folder import FolderAdapter
from analysis.store import LibraryStore
from gateway.app import create_app
from musegate import library
from musegate.config import ConfigError, load_config
from musegate.scheduler import LibraryScheduler, cron_trigger, read_state
from tests.conftest import sine_mix, write_track

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, music: Path, **kw: object):
    return load_config(None, env={}, overrides={
        "data_dir": str(tmp_path / "data"), "library_path": str(music), "workers": 2, **kw})


async def test_run_once_scans_analyses_and_picks_up_new_tracks(
    tmp_path: Path, small_library: Path
) -> None:
    config = _config(tmp_path, small_library)
    refreshed: list[int] = []

    async def on_analysed() -> None:
        refreshed.append(1)

    async with await LibraryStore.open(config.db_path) as store:
        sched = LibraryScheduler(store, config, FolderAdapter(small_library), on_analysed)
        sched.start(run_now=False)
        try:
            first, second = await asyncio.gather(sched.run_once(), sched.run_once())
            assert sorted([first, second]) == [False, True]  # never two runs at once
            assert sched.state.status == "done" and sched.state.analysed == 6
            assert refreshed
            assert sched.state.next_run is not None  # the nightly run is scheduled

            write_track(small_library / "new" / "added.flac", sine_mix([330.0], 8.0),
                        title="added later")
            assert await sched.run_once()
            assert (sched.state.added, sched.state.analysed) == (1, 1)
            state = read_state(config.data_dir)
            assert state is not None and state["status"] == "done" and state["runs"] == 2
        finally:
            await sched.shutdown()


def test_bad_cron_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="scan_cron = 'every night'"):
        cron_trigger("every night")
    assert cron_trigger("30 2 * * 1-5") is not None


async def test_failed_run_is_reported_not_raised(tmp_path: Path) -> None:
    config = _config(tmp_path, tmp_path / "missing")
    async with await LibraryStore.open(config.db_path) as store:
        sched = LibraryScheduler(store, config, FolderAdapter(tmp_path / "missing"))
        assert await sched.run_once()
        assert sched.state.status == "failed" and "does not exist" in (sched.state.error or "")


async def test_jobs_endpoint_shows_the_library_job(tmp_path: Path, small_library: Path) -> None:
    config = _config(tmp_path, small_library)
    app = create_app(config, refresh_seconds=None, schedule=True)
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        url = server.make_url("/musegate/api/jobs/library-scan")
        deadline = time.monotonic() + 300
        state: dict = {}
        while time.monotonic() < deadline:
            async with session.get(url) as resp:
                assert resp.status == 200
                state = await resp.json()
            if state["status"] in ("done", "failed"):
                break
            await asyncio.sleep(0.5)
        assert state["status"] == "done", state
        assert state["analysed"] == 6
        async with session.get(server.make_url("/musegate/api/jobs")) as resp:
            kinds = [j["kind"] for j in (await resp.json())["jobs"]]
        assert "library-scan" in kinds
        async with session.get(server.make_url("/musegate/api/status")) as resp:
            assert (await resp.json())["analysed"] == 6  # the index was refreshed


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path, small_library: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSEGATE_WORKERS": "1",
           "MUSEGATE_PORT": str(_free_port()), "MUSEGATE_LIBRARY_PATH": str(small_library)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--data-dir", str(tmp_path / "d"), "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 120
        while "listening" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
        assert "listening" in line
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        state = json.loads((tmp_path / "d" / "jobs.json").read_text())
        assert state["status"] in ("idle", "done", "analysing", "scanning")
    finally:
        if proc.poll() is None:
            proc.kill()


async def test_full_disk_fails_the_run_but_serves_what_was_saved(
    tmp_path: Path, small_library: Path, disk_fills_after_first_write: None
) -> None:
    config = _config(tmp_path, small_library, write_batch=2, workers=1)
    refreshed: list[int] = []

    async def on_analysed() -> None:
        refreshed.append(1)

    async with await LibraryStore.open(config.db_path) as store:
        sched = LibraryScheduler(store, config, FolderAdapter(small_library), on_analysed)
        assert await sched.run_once()
        assert sched.state.status == "failed"
        assert "disk is full" in (sched.state.error or "")
        assert refreshed, "the two analyses saved before the disk filled up are served"
        version = library.analyzer_settings(config).version
        assert (await store.status(version, max_attempts=3)).analysed == 2


async def test_a_source_failure_is_retried_early_with_a_growing_wait(tmp_path: Path) -> None:
    """A folder (or server) that is not there yet: retried after scan_retry_minutes, then
    twice as long each time, not only at the next scan_cron; a run that works ends that."""
    from musegate.scheduler import RETRY_ID

    music = tmp_path / "music"
    config = _config(tmp_path, music, scan_cron="0 3 1 1 *", scan_retry_minutes=5)
    async with await LibraryStore.open(config.db_path) as store:
        sched = LibraryScheduler(store, config, FolderAdapter(music))
        sched.start(run_now=False)
        try:
            waits = []
            for _ in range(3):
                before = time.time()
                assert await sched.run_once()
                state = sched.state
                assert state.status == "failed" and "does not exist" in (state.error or "")
                assert "scan_retry_minutes" in state.message and state.retry_at is not None
                job = sched._scheduler.get_job(RETRY_ID)
                assert job is not None and job.next_run_time.timestamp() == pytest.approx(
                    state.retry_at)
                waits.append(round((state.retry_at - before) / 60))
            assert waits == [5, 10, 20]
            assert read_state(config.data_dir)["retry_at"] == state.retry_at  # musegate status
            music.mkdir()
            assert await sched.run_once()
            assert sched.state.status == "done" and sched.state.retry_at is None
            assert sched._scheduler.get_job(RETRY_ID) is None
        finally:
            await sched.shutdown()
    # No retry when it is off, or when the next scheduled run comes first anyway.
    for changes in ({"scan_retry_minutes": 0}, {"scan_cron": "* * * * *"}):
        async with await LibraryStore.open(config.db_path) as store:
            sched = LibraryScheduler(store, config.replace(library_path=str(tmp_path / "no"),
                                                           **changes),
                                     FolderAdapter(tmp_path / "no"))
            sched.start(run_now=False)
            try:
                assert await sched.run_once() and sched.state.status == "failed"
                assert sched.state.retry_at is None and sched._scheduler.get_job(RETRY_ID) is None
                assert "next scheduled run" in sched.state.message
            finally:
                await sched.shutdown()
