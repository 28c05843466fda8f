"""The analyzer on a real Dask cluster: a scheduler and two workers on loopback, one
killed with SIGKILL while it holds a task; every track is analysed exactly once and
nothing is recorded as failed.

The scheduler and the workers are the real ``dask scheduler`` / ``dask worker``
programs in their own processes, as a user would start them on other machines.
The victim worker is started with a preload (tests/dask_hold.py) that holds its
first task and writes a marker: the test waits for that marker, so the kill
lands mid-task every time, whatever the speed of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.folder import FolderAdapter
from analysis.store import LibraryStore
from musegate import library
from musegate.config import load_config
from tests.conftest import sine_mix, write_track

if os.environ.get("CI"):
    import distributed  # CI installs the test extra, which has it: a missing one is a failure
else:
    distributed = pytest.importorskip("distributed", reason="pip install 'musegate[dask]'")

ROOT = Path(__file__).resolve().parents[1]
TRACKS = 10
START_DEADLINE = 120.0  # hang guards only: every wait below is for an event


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dask(*args: str) -> list[str]:
    """The ``dask`` command of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("dask")), *args]


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _until(condition, what: str, logs: list[Path]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_DEADLINE
    while not condition():
        if loop.time() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs if p.exists())
            raise AssertionError(f"{what} did not happen\n{tails}")
        await asyncio.sleep(0.05)  # polling for the event between looks, not synchronising


async def test_two_dask_workers_one_killed_mid_task_loses_nothing(tmp_path: Path) -> None:
    music = tmp_path / "music"
    for i in range(TRACKS):
        write_track(music / f"t{i:02d}.wav", sine_mix([110.0 * (1 + i / 6)], 8.0, seed=i))
    hold = tmp_path / "hold"
    hold.mkdir()
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = [tmp_path / "scheduler.log", tmp_path / "healthy.log", tmp_path / "victim.log"]
    worker = ["worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
              "--host", "127.0.0.1", "--memory-limit", "0"]
    with contextlib.ExitStack() as stack:
        stack.enter_context(_process(
            _dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
            logs[0]))
        healthy = stack.enter_context(_process(
            _dask(*worker, "--name", "healthy", "--local-directory", str(tmp_path / "w1")),
            logs[1]))
        victim = stack.enter_context(_process(
            _dask(*worker, "--name", "victim", "--local-directory", str(tmp_path / "w2"),
                  "--preload", "tests.dask_hold"),
            logs[2], MUSEGATE_TEST_HOLD_DIR=str(hold)))

        async with distributed.Client(address, asynchronous=True, timeout=START_DEADLINE) as client:
            await asyncio.wait_for(client.wait_for_workers(2), START_DEADLINE)

            config = load_config(None, env={}, overrides={
                "data_dir": str(tmp_path / "data"), "scheduler_address": address,
                "workers": 1, "write_batch": 1})
            async with await LibraryStore.open(config.db_path) as store:
                await library.scan(store, FolderAdapter(music))
                run = asyncio.create_task(library.analyse(store, config))
                marker = hold / f"started-{victim.pid}"
                await _until(lambda: marker.exists() or run.done(), "the victim starting a task",
                             logs)
                assert marker.exists(), "the run ended before the victim held a task"
                os.kill(victim.pid, signal.SIGKILL)
                report = await asyncio.wait_for(run, START_DEADLINE * 2)

                assert victim.wait() == -signal.SIGKILL
                assert (report.total, report.analysed, report.failed) == (TRACKS, TRACKS, 0), \
                    report.failures
                assert await store.failures() == []
                version = library.analyzer_settings(config).version
                stored = await store.analysed(version)
                assert sorted(a.track.upstream_id for a in stored) == \
                    sorted(f"t{i:02d}.wav" for i in range(TRACKS))
                status = await store.status(version, config.max_attempts)
                assert (status.analysed, status.pending, status.failed) == (TRACKS, 0, 0)
            # The held task was one of ours; the victim is gone, so the other worker finished it.
            assert marker.read_text(encoding="utf-8").startswith("musegate-analyse-")
            assert set((await client.run(os.getpid)).values()) == {healthy.pid}
