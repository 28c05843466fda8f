"""gateway.fast_relay: plain pass-through requests relayed below aiohttp's web layer.

tests/test_proxy.py runs every pass-through case through serve's runner too (the
``served`` half of its ``gate`` fixture), answers compared byte for byte with the
upstream's. This file covers what is particular to the fast path: the upstream request
head it builds is the full path's, it logs and counts as the full path does, it hands a
request the upstream could not answer to the full path (which answers 502 without asking
again), a connection moves between the two paths request by request, and the connection
guard's header deadline and the client's Connection wishes are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from gateway import fast_relay, forwarding, proxy, upstream_http
from gateway.app import create_app, server_options
from gateway.connection_limits import ConnectionGuard, ConnectionLimits
from tests.served_server import ServedTestServer
from tests.store_factory import make_config
from tests.upstream_stub import PING_JSON, Stub

GUARD = 20.0  # a hang guard only


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    async with Stub.run(tmp_path / "stub") as s:
        yield s


async def _served(tmp_path: Path, stub: Stub, guard: ConnectionGuard | None = None,
                  **overrides: Any) -> ServedTestServer:
    config = make_config(tmp_path, upstream_url=stub.url, **overrides)
    server = ServedTestServer(create_app(config, refresh_seconds=None), guard=guard,
                              host="127.0.0.1")
    await server.start_server(**server_options(config))  # serve's access log and keep-alive
    return server


def _relay(server: ServedTestServer) -> fast_relay.FastRelay:
    return server.runner.server._fast_relay  # type: ignore[union-attr]


class _Conn:
    """A raw keep-alive connection: requests written as bytes, answers read by their length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: ServedTestServer) -> _Conn:
        return cls(*await asyncio.open_connection("127.0.0.1", server.port))

    def send(self, raw: bytes) -> None:
        self.writer.write(raw)

    async def answer(self) -> tuple[str, dict[str, str], bytes]:
        async with asyncio.timeout(GUARD):
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            status, *lines = head[:-4].split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            else:
                body = await self.reader.read()  # close-delimited
            return status, headers, body

    async def closed(self) -> bool:
        async with asyncio.timeout(GUARD):
            return await self.reader.read() == b""

    def close(self) -> None:
        self.writer.close()


def _get(path: str, *headers: str, version: str = "1.1") -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/{version}", "Host: musegate.test", *headers])
            + "\r\n\r\n").encode()


# ---------------------------------------------------------------------------- the request head


class _Transport:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("headers", [
    ["User-Agent: app/1.0", "Accept: */*"],
    ["Accept-Encoding: gzip", "Cookie: a=1; b=2", "Range: bytes=0-99", "X-Custom:  spaced  "],
    ["Connection: keep-alive", "Keep-Alive: timeout=5", "TE: trailers", "Accept: a",
     "Accept: b", "Proxy-Authorization: x", "Content-Length: 0"],
    ["Connection: close, X-Hop", "X-Hop: dropped", "X-End: kept"],
    ["Authorization: MediaBrowser Token=\"abc\"", "X-Emby-Token: t", "If-None-Match: \"e\""],
])
def test_upstream_head_is_the_full_paths(headers: list[str]) -> None:
    raw = _get("/rest/stream.view?id=1&u=a&p=secret", *headers)
    parsed = fast_relay._parse(raw)
    assert parsed is not None
    lean = proxy._Lean("http://up.test:4533/sub",
                       upstream_http.UpstreamPool("up.test", 4533, connect_timeout=1.0),
                       "up.test:4533")
    target = fast_relay._Target(parsed.method, parsed.target, parsed.version,
                                parsed.raw_headers, parsed.host.decode(), parsed.keep_alive)
    target.remote = "192.0.2.7"
    target[forwarding._PEER] = "192.0.2.7"
    request = make_mocked_request(
        "GET", "/rest/stream.view?id=1&u=a&p=secret",
        headers=[(k, v.strip()) for k, _, v in (h.partition(":") for h in
                                                ["Host: musegate.test", *headers])],
        transport=_Transport())
    request[forwarding._PEER] = "192.0.2.7"
    assert fast_relay.upstream_lines(parsed, target, lean) == \
        proxy._lean_request_lines(request, lean)


@pytest.mark.parametrize("raw", [
    b"POST /rest/ping.view HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n",  # a body
    b"GET /rest/ping.view HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",  # judged by forwarding
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute form
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
    b"GET / HTTP/1.1\r\nHost: x\r\n",  # not complete yet
])
def test_what_takes_the_full_path(raw: bytes) -> None:
    parsed = fast_relay._parse(raw)
    assert parsed is None or fast_relay._Target(
        parsed.method, parsed.target, parsed.version, parsed.raw_headers, "x",
        parsed.keep_alive).rel_url.absolute


# ---------------------------------------------------------------------------- served


async def test_logged_redacted_and_counted(tmp_path: Path, stub: Stub,
                                           caplog: pytest.LogCaptureFixture) -> None:
    server = await _served(tmp_path, stub)
    try:
        caplog.set_level(logging.INFO, logger="aiohttp.access")
        async with aiohttp.ClientSession() as s:
            for _ in range(3):
                async with s.get(f"http://127.0.0.1:{server.port}/rest/ping.view",
                                 params={"u": "alice", "p": "hunter2", "f": "json"}) as r:
                    assert r.status == 200
                    assert json.loads(await r.read())["subsonic-response"]["status"] == "ok"
            async with s.get(f"http://127.0.0.1:{server.port}/musegate/metrics") as r:
                metrics = await r.text()
        assert _relay(server).relayed == 3
        lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
        pings = [line for line in lines if "/rest/ping.view" in line]
        assert len(pings) == 3
        assert all("p=***" in line and "hunter2" not in line and '" 200 ' in line
                   for line in pings)
        assert 'musegate_requests_total{route="passthrough",status="200"} 3.0' in metrics
    finally:
        await server.close()


@pytest.mark.parametrize("asked_before", [False, True])
async def test_upstream_down_is_answered_by_the_full_path_once(
        tmp_path: Path, stub: Stub, asked_before: bool) -> None:
    server = await _served(tmp_path, stub)
    try:
        if asked_before:  # its address known and a pooled connection open (then dead)
            first = await _Conn.open(server)
            first.send(_get("/rest/ping.view?f=json"))
            assert (await first.answer())[0] == "HTTP/1.1 200 OK"
            first.close()
        await stub.stop()
        conn = await _Conn.open(server)
        conn.send(_get("/rest/ping.view?u=a&p=b&f=json"))
        status, headers, body = await conn.answer()
        assert status == "HTTP/1.1 502 Bad Gateway"
        assert json.loads(body)["subsonic-response"]["status"] == "failed"
        # The connection went on the full path for good (aiohttp's parser has it now) and
        # still works once the upstream is back.
        await stub.start()
        conn.send(_get("/rest/ping.view?f=json"))
        status, _, body = await conn.answer()
        assert status == "HTTP/1.1 200 OK" and b'"ok"' in body
        conn.close()
        async with aiohttp.ClientSession() as s, \
                s.get(f"http://127.0.0.1:{server.port}/musegate/metrics") as r:
            metrics = await r.text()
        assert "musegate_upstream_errors_total 1.0" in metrics
    finally:
        await server.close()


async def test_one_connection_moves_between_the_paths(tmp_path: Path, stub: Stub) -> None:
    server = await _served(tmp_path, stub, source="subsonic", upstream_user="u",
                           upstream_password="p")
    try:
        conn = await _Conn.open(server)
        conn.send(_get("/echo/one"))
        first = await conn.answer()
        # musegate's own API and an intercepted Subsonic call: the full path.
        conn.send(_get("/musegate/health"))
        own = await conn.answer()
        conn.send(_get("/rest/getSimilarSongs2.view?id=x&u=u&p=p&f=json"))
        intercepted = await conn.answer()
        conn.send(_get("/echo/two"))
        second = await conn.answer()
        # Two requests in one write: aiohttp's parser takes the connection from here on.
        conn.send(_get("/echo/three") + _get("/echo/four"))
        third, fourth = await conn.answer(), await conn.answer()
        conn.close()
        assert [a[0] for a in (first, own, second, third, fourth)] == ["HTTP/1.1 200 OK"] * 5
        assert [json.loads(a[2])["raw_path"] for a in (first, second, third, fourth)] == \
            ["/echo/one", "/echo/two", "/echo/three", "/echo/four"]
        # Answered on the full path (an unknown song falls back to the upstream, whose 404
        # comes back): not counted as a fast request below.
        assert intercepted[0] == "HTTP/1.1 404 Not Found"
        assert _relay(server).relayed == 2
    finally:
        await server.close()


async def test_connection_close_and_http_1_0(tmp_path: Path, stub: Stub) -> None:
    server = await _served(tmp_path, stub)
    try:
        conn = await _Conn.open(server)
        conn.send(_get("/rest/ping.view?f=json", "Connection: close"))
        status, headers, _ = await conn.answer()
        assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
        assert await conn.closed()
        conn = await _Conn.open(server)
        conn.send(_get("/rest/ping.view?f=json", version="1.0"))
        status, headers, body = await conn.answer()
        assert status == "HTTP/1.0 200 OK" and b'"ok"' in body
        assert await conn.closed()
        conn = await _Conn.open(server)
        conn.send(_get("/rest/ping.view?f=json", "Connection: keep-alive", version="1.0"))
        status, headers, _ = await conn.answer()
        assert status == "HTTP/1.0 200 OK" and headers["connection"] == "keep-alive"
        conn.send(_get("/rest/ping.view?f=json", "Connection: keep-alive", version="1.0"))
        assert (await conn.answer())[0] == "HTTP/1.0 200 OK"
        conn.close()
        assert _relay(server).relayed == 4
    finally:
        await server.close()


async def test_chunked_answer_for_http_1_0_is_close_delimited(tmp_path: Path,
                                                              stub: Stub) -> None:
    server = await _served(tmp_path, stub)
    try:
        async with aiohttp.ClientSession() as s, \
                s.get(stub.url + "/rest/stream?id=t&format=mp3") as r:
            expected = await r.read()
        conn = await _Conn.open(server)
        conn.send(_get("/rest/stream?id=t&format=mp3", version="1.0"))
        status, headers, body = await conn.answer()
        assert status == "HTTP/1.0 200 OK" and "transfer-encoding" not in headers
        assert body == expected
        conn.close()
    finally:
        await server.close()


class _Timers:
    """The connection guard's clock: deadlines are recorded, fired by the test."""

    def __init__(self) -> None:
        self.handles: list[_Timer] = []

    def __call__(self, delay: float, callback: Any, *args: Any) -> _Timer:
        handle = _Timer(callback, args)
        self.handles.append(handle)
        return handle


class _Timer:
    def __init__(self, callback: Any, args: tuple[Any, ...]) -> None:
        self.callback, self.args, self.cancelled = callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


async def test_header_deadline_is_met_by_a_fast_request(tmp_path: Path, stub: Stub) -> None:
    timers = _Timers()
    guard = ConnectionGuard(ConnectionLimits(header_timeout=5.0), call_later=timers)
    server = await _served(tmp_path, stub, guard=guard)
    try:
        conn = await _Conn.open(server)
        conn.send(_get("/rest/ping.view?f=json"))
        assert (await conn.answer())[0] == "HTTP/1.1 200 OK"
        assert _relay(server).relayed == 1
        assert len(timers.handles) == 1 and timers.handles[0].cancelled
        # Firing the cancelled deadline does nothing: the connection stays usable.
        timers.handles[0].callback(*timers.handles[0].args)
        conn.send(_get("/rest/ping.view?f=json"))
        assert (await conn.answer())[0] == "HTTP/1.1 200 OK"
        conn.close()
        assert guard.late == 0
    finally:
        await server.close()


async def test_upstream_that_closes_every_connection(tmp_path: Path) -> None:
    """supysonic's werkzeug closes after each answer: each request opens a new connection."""
    async def ping(request: web.Request) -> web.Response:
        resp = web.Response(body=json.dumps({"n": request.query.get("n")}).encode(),
                            content_type="application/json")
        resp.force_close()
        return resp

    upstream = web.Application()
    upstream.router.add_get("/rest/ping.view", ping)
    up = TestServer(upstream, host="127.0.0.1")
    await up.start_server()
    config = make_config(tmp_path, upstream_url=f"http://127.0.0.1:{up.port}")
    server = ServedTestServer(create_app(config, refresh_seconds=None), host="127.0.0.1")
    await server.start_server(**server_options(config))
    try:
        conn = await _Conn.open(server)
        for n in range(5):
            conn.send(_get(f"/rest/ping.view?n={n}"))
            status, headers, body = await conn.answer()
            assert status == "HTTP/1.1 200 OK" and json.loads(body) == {"n": str(n)}
            assert "connection" not in headers  # the caller's connection stays open
        conn.close()
        assert _relay(server).relayed == 5
        assert not server.app[proxy.POOL].pool._idle  # nothing kept of the upstream's
    finally:
        await server.close()
        await up.close()


async def test_a_subsonic_ping_is_relayed_fast_and_its_caller_noted(tmp_path: Path,
                                                                     stub: Stub) -> None:
    """``ping`` is observed (a new caller's songs get warmed) without leaving the fast path."""
    from gateway.subsonic import GATEWAY

    server = await _served(tmp_path, stub, source="subsonic", upstream_user="u",
                           upstream_password="p")
    try:
        warm = server.app[GATEWAY].warm
        noted: list[tuple[str, str]] = []
        warm.notice = lambda creds, client: noted.append((dict(creds.params)["u"], client["c"]))
        conn = await _Conn.open(server)
        conn.send(_get("/rest/ping.view?u=alice&p=secret&c=app&v=1.16.1&f=json"))
        status, _, body = await conn.answer()
        conn.send(_get("/rest/ping?u=bob&t=abc&s=salt&c=other&f=json"))
        second = await conn.answer()
        conn.close()
        assert status == "HTTP/1.1 200 OK" and second[0] == "HTTP/1.1 200 OK"
        # Relayed as it came, by the fast path, and both callers were noted on the way.
        assert body == second[2] == PING_JSON
        assert _relay(server).relayed == 2
        assert noted == [("alice", "app"), ("bob", "other")]
    finally:
        await server.close()


async def test_an_aiohttp_without_the_internals_serves_everything_on_the_full_path(
        tmp_path: Path, stub: Stub, monkeypatch: pytest.MonkeyPatch) -> None:
    assert fast_relay.compatible()  # the installed aiohttp: the fast path is on
    monkeypatch.setattr(fast_relay, "_COMPATIBLE", False)
    server = await _served(tmp_path, stub)
    try:
        conn = await _Conn.open(server)
        conn.send(_get("/echo/one"))
        status, _, body = await conn.answer()
        conn.close()
        assert status == "HTTP/1.1 200 OK" and json.loads(body)["raw_path"] == "/echo/one"
        assert getattr(server.runner.server, "_fast_relay", None) is None
    finally:
        await server.close()
