"""gateway.upstream_http, the pass-through's own HTTP/1.1 client, against real servers.

The servers are aiohttp's (keep-alive, chunked and Content-Length answers, echoed
request bodies), a raw asyncio server for what aiohttp will not send (an answer
delimited by the close, an interim 103, a connection closed while pooled, bytes
that are not HTTP), and a real supysonic, whose werkzeug server closes every
connection. Every wait is on an event or a byte count, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import upstream_http as uh
from tests.supysonic_server import Supysonic, generate_library

GUARD = 20.0


async def _app_server() -> TestServer:
    async def fixed(request: web.Request) -> web.Response:
        return web.Response(body=b"hello", headers={"X-Peer": str(request.transport
                                                                  .get_extra_info("peername")[1])})

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(bytes([65 + i]) * (1000 * (i + 1)))
        await resp.write_eof()
        return resp

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]))

    async def echo(request: web.Request) -> web.Response:
        data = await request.read()
        return web.Response(body=data, headers={
            "X-Got-Length": request.headers.get("Content-Length", "-"),
            "X-Got-TE": request.headers.get("Transfer-Encoding", "-"),
            "X-Got-Host": request.headers.get("Host", "-")})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=bytes(range(256)) * 40000)  # 10 MB

    app = web.Application()
    app.router.add_get("/fixed", fixed)
    app.router.add_get("/chunked", chunked)
    app.router.add_route("*", "/status/{code}", empty)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.fixture
async def app_pool() -> AsyncIterator[tuple[uh.UpstreamPool, TestServer]]:
    server = await _app_server()
    pool = uh.UpstreamPool("127.0.0.1", server.port or 0, connect_timeout=5.0)
    try:
        yield pool, server
    finally:
        await pool.close()
        await server.close()


async def get(pool: uh.UpstreamPool, path: str, method: str = "GET",
              headers: list[tuple[str, str]] | None = None, body: uh.BodySource = None,
              length: int | None = None) -> tuple[uh.ResponseHead, bytes, uh.Exchange]:
    async with asyncio.timeout(GUARD):
        ex = await uh.request(pool, method, path, f"127.0.0.1:{pool.port}", headers or [],
                              body, length)
        out = bytearray()

        async def write(data: bytes) -> None:
            out.extend(data)

        try:
            await uh.relay_body(ex, write, write)
        finally:
            ex.finish()
    return ex.head, bytes(out), ex


def header(head: uh.ResponseHead, name: str) -> str:
    return next(v for k, v in head.headers if k.lower() == name.lower())


# ---------------------------------------------------------------------------- framing


async def test_content_length_answer_and_keep_alive_reuse(app_pool) -> None:
    pool, _ = app_pool
    first, body, _ = await get(pool, "/fixed")
    second, body2, ex = await get(pool, "/fixed")
    assert (first.status, body, body2) == (200, b"hello", b"hello")
    assert ex.conn.waited  # the second request went on the pooled connection
    assert header(first, "X-Peer") == header(second, "X-Peer")


async def test_chunked_answer_is_decoded_and_connection_reused(app_pool) -> None:
    pool, _ = app_pool
    head, body, ex = await get(pool, "/chunked")
    assert header(head, "Transfer-Encoding") == "chunked"
    assert body == b"".join(bytes([65 + i]) * (1000 * (i + 1)) for i in range(5))
    assert ex.body.done and ex.body.keep_alive
    _, again, ex2 = await get(pool, "/fixed")
    assert again == b"hello" and ex2.conn.waited


async def test_head_204_304_have_no_body(app_pool) -> None:
    pool, _ = app_pool
    head, body, ex = await get(pool, "/big", method="HEAD")
    assert head.status == 200 and body == b"" and header(head, "Content-Length") == "10240000"
    assert ex.body.done
    for code in (204, 304):
        head, body, ex = await get(pool, f"/status/{code}")
        assert head.status == code and body == b"" and ex.body.done
    _, body, ex = await get(pool, "/fixed")
    assert body == b"hello" and ex.conn.waited  # still in step after the bodiless answers


async def test_large_body_arrives_whole(app_pool) -> None:
    pool, _ = app_pool
    _, body, _ = await get(pool, "/big")
    assert hashlib.sha256(body).digest() == hashlib.sha256(bytes(range(256)) * 40000).digest()


async def test_request_bodies_sized_streamed_and_empty(app_pool) -> None:
    pool, _ = app_pool
    head, body, _ = await get(pool, "/echo", "POST", body=b"x" * 100_000)
    assert body == b"x" * 100_000 and header(head, "X-Got-Length") == "100000"

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(4):
            yield bytes([48 + i]) * 3000

    head, body, _ = await get(pool, "/echo", "PUT", body=pieces)
    assert body == b"".join(bytes([48 + i]) * 3000 for i in range(4))
    assert header(head, "X-Got-TE") == "chunked"
    head, body, _ = await get(pool, "/echo", "PUT", body=pieces, length=12000)
    assert len(body) == 12000 and header(head, "X-Got-Length") == "12000"
    head, body, _ = await get(pool, "/echo", "POST")
    assert body == b"" and header(head, "X-Got-Length") == "0"
    assert header(head, "X-Got-Host") == f"127.0.0.1:{pool.port}"


async def test_header_with_a_line_break_is_refused(app_pool) -> None:
    pool, _ = app_pool
    with pytest.raises(uh.UpstreamError):
        await get(pool, "/fixed", headers=[("X-Evil", "a\r\nX-Injected: 1")])


# ---------------------------------------------------------------------------- raw servers

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


@contextlib.asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[tuple[uh.UpstreamPool, list[int]]]:
    """A server that reads each request head and lets ``answer`` reply; False closes the connection.

    Yields the pool and the list of accepted connection numbers (one per connection).
    """
    accepted: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(accepted)
        accepted.append(n)
        try:
            while True:
                try:
                    await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if not await answer(reader, writer, n):
                    return
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = uh.UpstreamPool("127.0.0.1", port, connect_timeout=5.0)
    try:
        yield pool, accepted
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


async def test_body_until_close_and_interim_answers() -> None:
    async def answer(reader, writer, n) -> bool:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n"
                     b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        return False

    async with raw_server(answer) as (pool, _):
        head, body, ex = await get(pool, "/x")
    assert (head.status, head.version, body) == (200, (1, 0), b"until the end")
    assert not ex.body.keep_alive


async def test_truncated_body_and_garbage_are_errors() -> None:
    async def short(reader, writer, n) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()
        return False

    async with raw_server(short) as (pool, _):
        with pytest.raises(uh.Truncated):
            await get(pool, "/x")

    async def garbage(reader, writer, n) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        return False

    async with raw_server(garbage) as (pool, _):
        with pytest.raises(uh.UpstreamError):
            await get(pool, "/x")


async def test_pooled_connection_closed_by_the_upstream_is_not_used() -> None:
    async def once(reader, writer, n) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return False  # keep-alive announced, then closed anyway

    async with raw_server(once) as (pool, accepted):
        _, body, _ = await get(pool, "/a")
        # Wait until the server's close reached us: the pooled socket turns readable (EOF).
        await readable(pool._idle[0].sock)
        _, body2, ex = await get(pool, "/b")
    assert body == body2 == b"ok" and not ex.conn.waited and len(accepted) == 2


async def readable(sock: object) -> None:
    """Returns once ``sock`` has something to read (here: the peer's FIN)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()  # type: ignore[attr-defined]
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        async with asyncio.timeout(GUARD):
            await ready
    finally:
        loop.remove_reader(fd)


async def test_idempotent_request_retried_when_the_idle_connection_dies_on_it() -> None:
    """The upstream closes a pooled connection just as the next request arrives on it."""
    answered: set[int] = set()

    async def first_only(reader, writer, n) -> bool:
        if n in answered:
            return False  # second request on this connection: close without an answer
        answered.add(n)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return True

    async with raw_server(first_only) as (pool, accepted):
        await get(pool, "/a")
        _, body, ex = await get(pool, "/b")  # GET: sent again on a new connection
        assert body == b"ok" and len(accepted) == 2
        with pytest.raises(uh.Truncated):  # POST is never sent twice
            await get(pool, "/c", "POST", body=b"data")


async def test_refused_connection() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = uh.UpstreamPool("127.0.0.1", port, connect_timeout=5.0)
    with pytest.raises(uh.ConnectFailed):
        await get(pool, "/x")
    await pool.close()


# ---------------------------------------------------------------------------- supysonic


async def test_against_supysonic_ping_and_ranged_stream(tmp_path: Path) -> None:
    music = generate_library(tmp_path / "music", artists=1, albums=1, tracks=1, seconds=3.0)
    async with Supysonic.start(tmp_path, music, users={"alice": "alicepw"}) as server:
        url = aiohttp.client.URL(server.url)
        pool = uh.UpstreamPool(url.host or "", url.port or 80, connect_timeout=5.0)
        auth = "u=alice&p=alicepw&v=1.12.0&c=test&f=json"
        try:
            for _ in range(3):
                head, body, ex = await get(pool, f"/rest/ping.view?{auth}")
                assert head.status == 200
                assert json.loads(body)["subsonic-response"]["status"] == "ok"
            assert not ex.body.keep_alive and not pool._idle  # werkzeug closes every connection
            async with aiohttp.ClientSession(auto_decompress=False) as s:
                async with s.get(f"{server.url}/rest/search3.view?{auth}&query=&songCount=5") as r:
                    song = (await r.json())["subsonic-response"]["searchResult3"]["song"][0]
                path = f"/rest/stream.view?{auth}&id={song['id']}&format=raw"
                async with s.get(server.url + path, headers={"Range": "bytes=100-4999"}) as r:
                    direct = (r.status, r.headers.get("Content-Range"), await r.read())
            head, body, _ = await get(pool, path, headers=[("Range", "bytes=100-4999")])
            assert (head.status, header(head, "Content-Range"), body) == direct
            assert direct[0] == 206 and len(body) == 4900
        finally:
            await pool.close()


# ---------------------------------------------------------------------------- splice


@pytest.mark.skipif(not uh.CAN_SPLICE, reason="os.splice is Linux-only")
async def test_splice_moves_a_body_between_sockets_and_reports_both_ends(app_pool) -> None:
    pool, _ = app_pool
    expected = bytes(range(256)) * 40000
    ex = await uh.request(pool, "GET", "/big", "x", [])
    left, right = socket.socketpair()
    left.setblocking(False)
    right.setblocking(False)
    loop = asyncio.get_running_loop()
    got = bytearray(ex.body.buffered())

    async def drain() -> None:
        while len(got) < len(expected):
            data = await loop.sock_recv(right, 1 << 16)
            assert data
            got.extend(data)

    try:
        async with asyncio.timeout(GUARD):
            await asyncio.gather(uh.splice_body(ex.body, left), drain())
    finally:
        ex.finish()
        left.close()
        right.close()
    assert ex.body.done and bytes(got) == expected
    # The connection went back to the pool in step: the next answer is whole.
    _, body, ex2 = await get(pool, "/fixed")
    assert body == b"hello" and ex2.conn.waited

    # The upstream ends early: Truncated. The caller hangs up: CallerGone.
    async def short(reader, writer, n) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        return False

    async with raw_server(short) as (pool2, _):
        ex = await uh.request(pool2, "GET", "/", "x", [])
        ex.body.buffered()
        left, right = socket.socketpair()
        left.setblocking(False)
        with pytest.raises(uh.Truncated):
            async with asyncio.timeout(GUARD):
                await uh.splice_body(ex.body, left)
        ex.finish()
        left.close()
        right.close()
    ex = await uh.request(pool, "GET", "/big", "x", [])
    ex.body.buffered()
    left, right = socket.socketpair()
    left.setblocking(False)
    right.close()
    with pytest.raises(uh.CallerGone):
        async with asyncio.timeout(GUARD):
            await uh.splice_body(ex.body, left)
    ex.finish()
    left.close()
