"""`musegate serve` as a program, configured by environment for a password-protected fake LMS.

It scans LMS, downloads and analyses the songs, and answers the Music
Similarity plugin's POST; the test waits for the run's end on musegate's own
event stream (/musegate/api/events), not on a clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp

from tests.conftest import sine_mix, write_track
from tests.fakes.lyrion import FakeLyrion

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "serve-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until_run_done(session: aiohttp.ClientSession, base: str) -> dict:
    async with session.get(f"{base}/musegate/api/events") as resp:
        assert resp.status == 200
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = json.loads(line[5:])
            run = data.get("run") or {}
            if run.get("finished") and run.get("status") in ("done", "failed"):
                return data
    raise AssertionError("the event stream ended before the run did")


async def test_serve_scans_analyses_and_answers_the_plugin(tmp_path: Path) -> None:
    fake = FakeLyrion(user="admin", password=PASSWORD)
    urls = {}
    for name, freqs in (("low", [55.0, 110.0]), ("mid", [440.0, 660.0])):
        for i in range(2):
            file = write_track(tmp_path / "media" / f"{name}{i}.flac",
                               sine_mix([f * (1 + 0.02 * i) for f in freqs], 6.0, seed=i))
            tid = fake.add_track(f"{name} {i}", f"{name} artist {i}", name, f"/music/{name}{i}.flac",
                                 file, genres=["Ambient"], duration=6.0)
            urls[f"{name} {i}"] = fake.tracks[tid].url
    lms = await fake.start()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSEGATE_WORKERS": "1",
           "MUSEGATE_PORT": str(port), "MUSEGATE_SOURCE": "lyrion", "MUSEGATE_UPSTREAM_URL": lms,
           "MUSEGATE_UPSTREAM_USER": "admin", "MUSEGATE_UPSTREAM_PASSWORD": PASSWORD}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", "--data-dir", str(tmp_path / "data"), "serve",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        while not any("listening" in line for line in output):
            line = (await asyncio.wait_for(proc.stdout.readline(), 120)).decode()
            assert line, "musegate serve exited: " + "".join(output)
            output.append(line)
        drain = asyncio.create_task(_drain(proc.stdout, output))
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            state = await asyncio.wait_for(_until_run_done(session, base), 300)  # guard only
            assert state["run"]["status"] == "done" and state["analysed"] == 4, state
            body = {"count": 1, "format": "text", "filtergenre": 0, "filterxmas": 1, "min": 0,
                    "max": 0, "track": [urls["mid 0"]], "previous": [urls["mid 0"]], "shuffle": 0,
                    "norepart": 15, "norepalb": 25, "genregroups": [], "nogenrematchadj": 15,
                    "genregroupadj": 7, "maxbpmdiff": 150, "filterkey": 0, "filterattrib": 1,
                    "mpath": "/music"}
            async with session.post(f"{base}/api/similar", json=body) as resp:
                assert resp.status == 200
                assert await resp.text() == urls["mid 1"]
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await fake.stop()
    assert sorted(fake.downloads) == sorted(fake.tracks)
    assert PASSWORD not in "".join(output)


async def _drain(stream: asyncio.StreamReader, output: list[str]) -> None:
    while line := await stream.readline():
        output.append(line.decode())
