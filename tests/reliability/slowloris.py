"""Slowloris against a real ``musegate serve``: how many slow connections it holds, whether a
normal client is still served.

Each scenario starts ``musegate serve`` (an empty music folder; the limits under test are
set by environment) and, for ``seconds``, runs attacker "slots" from several loopback
addresses (127.0.0.10…; Linux routes all of 127/8 to lo). A slot connects, trickles a
header byte every 0.5 s and never ends the head; when the server closes it or answers
``503`` it connects again (after 1 s when refused). A normal client on 127.0.0.1 opens a fresh connection
for every ``GET /musegate/health`` (the worst case: a kept-alive client keeps its slot).
musegate's open fds are sampled from /proc.

Usage::

    python -m tests.reliability.slowloris --seconds 60 [--json build/slowloris.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

from tests.reliability.load import _free_port, count_fds

BUSY_HEAD = b"HTTP/1.1 503"


@dataclass
class Scenario:
    name: str
    addresses: int
    per_address: int
    env: dict[str, str] = field(default_factory=dict)


SCENARIOS = (
    Scenario("no attack", 0, 0),
    Scenario("5 addresses x 150 slow connections (defaults)", 5, 150),
    Scenario("12 addresses x 64 slow connections (defaults)", 12, 64),
    Scenario("5 addresses x 150, limits off", 5, 150,
             {"MUSEGATE_MAX_CONNECTIONS": "0", "MUSEGATE_MAX_CONNECTIONS_PER_CLIENT": "0",
              "MUSEGATE_HEADER_TIMEOUT_SECONDS": "0", "MUSEGATE_KEEPALIVE_SECONDS": "3630"}),
)


@dataclass
class Result:
    scenario: str
    attempted: int
    normal_ok: int = 0
    normal_busy: int = 0
    normal_errors: int = 0
    normal_p50_ms: float = 0.0
    normal_p99_ms: float = 0.0
    slow_connects: int = 0
    slow_refused: int = 0
    slow_closed: int = 0
    fds_max: int = 0
    fds_median: float = 0.0


async def _trickle(writer: asyncio.StreamWriter) -> None:
    head = b"GET /musegate/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000
    with contextlib.suppress(ConnectionError, OSError):
        for i in range(len(head)):
            await asyncio.sleep(0.5)  # first byte late too: a refusal is a clean 503, no RST
            writer.write(head[i:i + 1])
            await writer.drain()


async def _slot(port: int, local: str, stop: asyncio.Event, r: Result) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                          local_addr=(local, 0))
        except OSError:
            await asyncio.sleep(0.1)
            continue
        r.slow_connects += 1
        feeder = asyncio.create_task(_trickle(writer))
        got = b""
        try:
            reading = asyncio.ensure_future(reader.read())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                with contextlib.suppress(ConnectionError):
                    got = reading.result()
                if got.startswith(BUSY_HEAD):
                    r.slow_refused += 1
                    await asyncio.sleep(1.0)  # spare the shared cores a reconnect storm
                else:
                    r.slow_closed += 1
            else:
                reading.cancel()
            stopping.cancel()
        finally:
            feeder.cancel()
            writer.close()


async def _normal(port: int, stop: asyncio.Event, r: Result, times: list[float]) -> None:
    url = f"http://127.0.0.1:{port}/musegate/health"
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                     timeout=timeout) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with http.get(url) as resp:
                    await resp.read()
                    if resp.status == 200:
                        r.normal_ok += 1
                        times.append(time.monotonic() - started)
                    elif resp.status == 503:
                        r.normal_busy += 1
                    else:
                        r.normal_errors += 1
            except (aiohttp.ClientError, TimeoutError):
                r.normal_errors += 1
            await asyncio.sleep(0.2)


async def run_scenario(tmp: Path, sc: Scenario, seconds: float) -> Result:
    port = _free_port()
    music = tmp / "music"
    music.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MUSEGATE_DATA_DIR": str(tmp / f"data-{port}"),
           "MUSEGATE_LIBRARY_PATH": str(music), **sc.env}
    log = tmp / f"serve-{port}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    r = Result(sc.name, sc.addresses * sc.per_address)
    try:
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"musegate serve exited: {log.read_text()[-2000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/musegate/health") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.2)
        stop = asyncio.Event()
        times: list[float] = []
        fds: list[int] = []
        tasks = [asyncio.create_task(_slot(port, f"127.0.0.{10 + a}", stop, r))
                 for a in range(sc.addresses) for _ in range(sc.per_address)]
        tasks.append(asyncio.create_task(_normal(port, stop, r, times)))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await asyncio.sleep(1.0)
            fds.append(count_fds(proc.pid))
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        if times:
            ms = np.asarray(times) * 1000
            r.normal_p50_ms = float(np.percentile(ms, 50))
            r.normal_p99_ms = float(np.percentile(ms, 99))
        r.fds_max, r.fds_median = max(fds), float(np.median(fds))
        return r
    finally:
        proc.terminate()
        proc.wait(60)


def markdown(results: list[Result], seconds: float) -> str:
    lines = [f"{seconds:.0f} s per scenario; header deadline 20 s unless off",
             "", "| scenario | normal client: ok / 503 / errors | normal p50 / p99 ms | "
             "slow connects / refused 503 / closed by musegate | musegate fds median / max |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(f"| {r.scenario} | {r.normal_ok} / {r.normal_busy} / {r.normal_errors} | "
                     f"{r.normal_p50_ms:.0f} / {r.normal_p99_ms:.0f} | {r.slow_connects} / "
                     f"{r.slow_refused} / {r.slow_closed} | {r.fds_median:.0f} / {r.fds_max} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.slowloris",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    async def all_scenarios(tmp: Path) -> list[Result]:
        return [await run_scenario(tmp, sc, args.seconds) for sc in SCENARIOS]

    with tempfile.TemporaryDirectory(prefix="musegate-slowloris-") as tmp:
        results = asyncio.run(all_scenarios(Path(tmp)))
    text = markdown(results, args.seconds)
    print(text, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
        args.json.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
