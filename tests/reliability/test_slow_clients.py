"""Slow clients (slowloris) and connection caps: gateway/connection_limits.py.

Slow connections dribble header bytes (or send nothing) from other loopback addresses
(127.0.0.2…: Linux routes all of 127/8 to lo) while a normal client talks from
127.0.0.1. In-process, the guard's clock is a ``ManualClock``: the test decides when the
header deadline passes, so nothing depends on how fast the machine is. The
``musegate serve`` test uses the real clock with a 1 s deadline and waits on each
connection's close. The asyncio timeouts only turn a broken guard into a failure
instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.app import create_app, server_options
from gateway.connection_limits import BUSY, ConnectionGuard, ConnectionLimits, GuardedAppRunner
from musegate.config import parse_networks
from tests.secret_watch import watch_log_file
from tests.store_factory import make_config

SAFETY = 60.0
SLOW_IP = "127.0.0.2"
PROXY_IP = "127.0.0.3"
HEALTH = b"GET /musegate/health HTTP/1.1\r\nHost: x\r\n\r\n"


class ManualClock:
    """``call_later`` for the guard; ``expire()`` runs every deadline still pending."""

    class Handle:
        def __init__(self, callback: Callable[..., None], args: tuple[Any, ...]) -> None:
            self.callback, self.args, self.cancelled = callback, args, False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.handles: list[ManualClock.Handle] = []

    def call_later(self, _delay: float, callback: Callable[..., None], *args: Any) -> Handle:
        handle = self.Handle(callback, args)
        self.handles.append(handle)
        return handle

    def expire(self) -> int:
        due, self.handles = [h for h in self.handles if not h.cancelled], []
        for handle in due:
            handle.callback(*handle.args)
        return len(due)


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(SAFETY):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def guarded(tmp: Path, limits: ConnectionLimits,
                  clock: ManualClock) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    """musegate's app behind the guard, composed the way ``serve`` composes it."""
    config = make_config(tmp)
    guard = ConnectionGuard(limits, call_later=clock.call_later)
    runner = GuardedAppRunner(create_app(config, adapter=None, refresh_seconds=None), guard,
                              **server_options(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1], guard
    finally:
        await runner.cleanup()


async def dribble(port: int, local: str, head: bool = True) -> bytes:
    """A slowloris connection: a header byte now and then, never the end of the head
    (``head=False``: nothing at all). Returns what the server sent before closing it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))

    async def trickle() -> None:
        partial = b"GET /musegate/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000
        with contextlib.suppress(ConnectionError, OSError):
            for i in range(len(partial)):
                writer.write(partial[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.02)  # the attacker's pace, not synchronisation

    feeder = asyncio.create_task(trickle()) if head else None
    try:
        got = b""
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(4096):
                got += chunk
        return got
    finally:
        if feeder is not None:
            feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feeder
        writer.close()


async def silent_answer(port: int, local: str) -> bytes:
    """Connect, send nothing, return all the server sends before it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        async with asyncio.timeout(SAFETY):
            return await reader.read()
    finally:
        writer.close()


async def served_keepalive(port: int, local: str) -> tuple[asyncio.StreamReader,
                                                           asyncio.StreamWriter]:
    """A connection that made one complete request and got its answer (so the server has
    counted it), kept open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    writer.write(HEALTH)
    async with asyncio.timeout(SAFETY):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
    return reader, writer


async def test_slow_clients_are_closed_and_a_normal_client_is_served(tmp_path: Path) -> None:
    clock = ManualClock()
    limits = ConnectionLimits(max_connections=100, max_per_client=10, header_timeout=20)
    async with guarded(tmp_path, limits, clock) as (port, guard), \
            aiohttp.ClientSession() as http:
        slow = [asyncio.create_task(dribble(port, SLOW_IP)) for _ in range(10)]
        await until(lambda: guard.per_client[SLOW_IP] == 10)
        # one more from the same address is over its cap: a 503 at once, then closed
        assert await silent_answer(port, SLOW_IP) == BUSY and guard.refused == 1
        # the normal client, on a kept-alive connection, is served meanwhile
        url = f"http://127.0.0.1:{port}/musegate/health"
        async with http.get(url) as resp:
            assert resp.status == 200
        assert guard.per_client["127.0.0.1"] == 1
        assert not any(task.done() for task in slow)
        # the deadline passes: every slow connection is closed, without an answer
        assert clock.expire() == 10
        async with asyncio.timeout(SAFETY):
            assert await asyncio.gather(*slow) == [b""] * 10
        assert guard.late == 10 and SLOW_IP not in guard.per_client
        # the normal connection had sent its request in time: it is still open and used
        async with http.get(url) as resp:
            assert resp.status == 200
        assert guard.per_client["127.0.0.1"] == 1 and guard.late == 10


async def test_silent_connections_are_closed_too(tmp_path: Path) -> None:
    clock = ManualClock()
    async with guarded(tmp_path, ConnectionLimits(header_timeout=20), clock) as (port, guard):
        silent = [asyncio.create_task(dribble(port, SLOW_IP, head=False)) for _ in range(5)]
        await until(lambda: guard.open == 5)
        clock.expire()
        async with asyncio.timeout(SAFETY):
            assert await asyncio.gather(*silent) == [b""] * 5
        await until(lambda: guard.open == 0)
        assert guard.late == 5


async def test_the_total_cap_answers_503_until_slots_free_up(tmp_path: Path) -> None:
    clock = ManualClock()
    limits = ConnectionLimits(max_connections=6, header_timeout=20)
    async with guarded(tmp_path, limits, clock) as (port, guard), \
            aiohttp.ClientSession() as http:
        slow = [asyncio.create_task(dribble(port, SLOW_IP)) for _ in range(6)]
        await until(lambda: guard.open == 6)
        assert await silent_answer(port, "127.0.0.1") == BUSY and guard.refused == 1
        clock.expire()
        async with asyncio.timeout(SAFETY):
            await asyncio.gather(*slow)
        await until(lambda: guard.open == 0)
        async with http.get(f"http://127.0.0.1:{port}/musegate/health") as resp:
            assert resp.status == 200


async def test_trusted_proxies_have_only_the_total_cap(tmp_path: Path) -> None:
    clock = ManualClock()
    limits = ConnectionLimits(max_connections=8, max_per_client=2, header_timeout=20,
                              exempt=parse_networks(PROXY_IP))
    async with guarded(tmp_path, limits, clock) as (port, guard):
        conns = [await served_keepalive(port, PROXY_IP) for _ in range(5)]
        conns += [await served_keepalive(port, SLOW_IP) for _ in range(2)]
        try:
            assert guard.per_client[PROXY_IP] == 5 and guard.refused == 0
            # any other address still stops at two
            assert await silent_answer(port, SLOW_IP) == BUSY
            # and everyone together at eight
            conns.append(await served_keepalive(port, PROXY_IP))
            assert await silent_answer(port, PROXY_IP) == BUSY and guard.refused == 2
        finally:
            for _reader, writer in conns:
                writer.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_musegate_serve_applies_the_configured_limits(tmp_path: Path) -> None:
    """The real ``musegate serve`` process (real clock, 1 s deadline): the settings reach
    its listener."""
    port = _free_port()
    (tmp_path / "music").mkdir()
    log = tmp_path / "serve.log"
    watch_log_file(log)
    env = {**os.environ, "MUSEGATE_DATA_DIR": str(tmp_path / "data"),
           "MUSEGATE_LIBRARY_PATH": str(tmp_path / "music"),
           "MUSEGATE_HEADER_TIMEOUT_SECONDS": "1", "MUSEGATE_MAX_CONNECTIONS_PER_CLIENT": "3"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(SAFETY * 3):
                while True:
                    assert proc.poll() is None, log.read_text()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(f"http://127.0.0.1:{port}/musegate/health") as r:
                            if r.status == 200:
                                break
                    await asyncio.sleep(0.1)
            conns = [await served_keepalive(port, SLOW_IP) for _ in range(3)]
            assert await silent_answer(port, SLOW_IP) == BUSY
            # a silent and a dribbling connection from elsewhere: closed by the deadline
            async with asyncio.timeout(SAFETY):
                assert await asyncio.gather(dribble(port, "127.0.0.4"),
                                            dribble(port, "127.0.0.4", head=False)) == [b"", b""]
            # the kept-alive connections had sent their requests: still served
            reader, writer = conns[0]
            writer.write(HEALTH)
            async with asyncio.timeout(SAFETY):
                assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            async with http.get(f"http://127.0.0.1:{port}/musegate/health") as resp:
                assert resp.status == 200
    finally:
        for _reader, writer in conns:
            writer.close()
        proc.terminate()
        proc.wait(60)
