"""The pass-through, through a real musegate server on loopback in front of tests/upstream_stub.py.

Every answer is compared with the same request sent directly to the upstream:
status, end-to-end headers and the raw body bytes (the test client does not
decompress either). "Not buffered" is shown by ordering — the stub holds a
stream until the test has received the first part through musegate — and
"memory stays flat" by the peak RSS of a musegate subprocess, never by timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDictProxy

from gateway.app import create_app
from gateway.proxy import SESSION, forward
from tests.served_server import ServedTestServer
from tests.store_factory import make_config
from tests.upstream_stub import (
    BLOCK_SIZE,
    SSE_EVENTS,
    WS_CLOSE_CODE,
    WS_GREETING,
    WS_PROTOCOL,
    Stub,
    album_json,
    generated_sha256,
    run_musegate,
    transcode_body,
)

# A hang guard only: every wait below completes as soon as the awaited bytes arrive.
GUARD = 20.0
# Headers that legitimately differ between two hops (per-connection or per-response).
PER_HOP = {"date", "connection", "keep-alive", "transfer-encoding"}


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    async with Stub.run(tmp_path / "stub") as s:
        yield s


async def _musegate(tmp_path: Path, upstream_url: str,
                    served: bool = False) -> AsyncIterator[TestServer]:
    config = make_config(tmp_path, upstream_url=upstream_url)
    server_class = ServedTestServer if served else TestServer
    async with server_class(create_app(config, refresh_seconds=None)) as server:
        yield server


# Every test on `gate` runs twice: through aiohttp's runner (every request on the full web
# path) and through serve's runner, where plain GET/HEAD pass-throughs take gateway.fast_relay.
@pytest.fixture(params=["full", "served"])
async def gate(request: pytest.FixtureRequest, tmp_path: Path,
               stub: Stub) -> AsyncIterator[TestServer]:
    async for server in _musegate(tmp_path, stub.url, served=request.param == "served"):
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that changes nothing: no decompression, no invented headers, no redirects."""
    async with aiohttp.ClientSession(
        auto_decompress=False, skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        yield session


def url_of(server: TestServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


def comparable(headers: CIMultiDictProxy[str]) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in headers.items() if k.lower() not in PER_HOP)


async def fetch(session: aiohttp.ClientSession, method: str, url: str,
                **kwargs: Any) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with session.request(method, url, allow_redirects=False, **kwargs) as resp:
        return resp.status, resp.headers, await resp.read()


async def assert_same(client: aiohttp.ClientSession, stub: Stub, gate: TestServer, path: str,
                      method: str = "GET", **kwargs: Any) -> tuple[int, CIMultiDictProxy[str], bytes]:
    direct = await fetch(client, method, stub.url + path, **kwargs)
    proxied = await fetch(client, method, url_of(gate, path), **kwargs)
    assert proxied[0] == direct[0], path
    assert comparable(proxied[1]) == comparable(direct[1]), path
    assert proxied[2] == direct[2], path
    return proxied


# ---------------------------------------------------------------------------- plain answers


async def test_ping_and_gzip_album_byte_identical(stub: Stub, gate: TestServer,
                                                  client: aiohttp.ClientSession) -> None:
    await assert_same(client, stub, gate, "/rest/ping.view?u=alice&p=enc:616c696365&f=json")
    await assert_same(client, stub, gate, "/rest/ping?u=alice&p=x&v=1.16.1&c=test")
    status, headers, body = await assert_same(
        client, stub, gate, "/rest/getAlbum?id=al-1&f=json", headers={"Accept-Encoding": "gzip"})
    # Still compressed: the bytes the upstream sent, with its Content-Length and Content-Encoding.
    assert status == 200 and headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    assert int(headers["Content-Length"]) == len(body) < len(album_json())
    # A caller that did not ask for gzip gets none: musegate adds no Accept-Encoding of its own.
    _, headers, body = await assert_same(client, stub, gate, "/rest/getAlbum?id=al-1&f=json")
    assert "Content-Encoding" not in headers and body == album_json()


RANGE_CASES: list[dict[str, str]] = [
    {},
    {"Range": "bytes=100-199"},
    {"Range": "bytes=-5000"},
    {"Range": "bytes=3000000-"},
    {"Range": "bytes=0-"},
    {"Range": "bytes=99999999-"},  # past the end: 416
]


async def test_range_if_range_head_and_conditional(stub: Stub, gate: TestServer,
                                                   client: aiohttp.ClientSession) -> None:
    path = "/rest/stream.view?id=song-1&u=alice&p=x"
    statuses = []
    for headers in RANGE_CASES:
        statuses.append((await assert_same(client, stub, gate, path, headers=headers))[0])
    assert statuses == [200, 206, 206, 206, 206, 416]

    _, full, _ = await fetch(client, "GET", stub.url + path)
    etag, modified = full["ETag"], full["Last-Modified"]
    status, headers, body = await assert_same(
        client, stub, gate, path, headers={"Range": "bytes=10-19", "If-Range": modified})
    assert status == 206 and len(body) == 10 and headers["Content-Range"].startswith("bytes 10-19/")
    status, _, body = await assert_same(
        client, stub, gate, path, headers={"Range": "bytes=10-19",
                                              "If-Range": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert status == 200 and len(body) == int(full["Content-Length"])
    status, _, _ = await assert_same(client, stub, gate, path, headers={"If-None-Match": etag})
    assert status == 304
    status, _, _ = await assert_same(client, stub, gate, path,
                                     headers={"If-Modified-Since": modified})
    assert status == 304

    status, headers, body = await assert_same(client, stub, gate, path, method="HEAD")
    assert status == 200 and body == b"" and headers["Content-Length"] == full["Content-Length"]


async def test_chunked_transcode(stub: Stub, gate: TestServer,
                                 client: aiohttp.ClientSession) -> None:
    _, headers, body = await assert_same(client, stub, gate, "/rest/stream?id=x&format=mp3")
    assert body == transcode_body()
    assert "Content-Length" not in headers


async def test_redirect_location_untouched(stub: Stub, gate: TestServer,
                                           client: aiohttp.ClientSession) -> None:
    status, headers, _ = await assert_same(client, stub, gate, "/rest/redirect?x=1")
    assert status == 302 and headers["Location"] == "/rest/ping.view?f=json&from=redirect"


# ---------------------------------------------------------------------------- requests in


async def _echo(client: aiohttp.ClientSession, url: str, method: str = "GET",
                **kwargs: Any) -> dict[str, Any]:
    status, _, body = await fetch(client, method, url, **kwargs)
    assert status == 200, body
    data: dict[str, Any] = json.loads(body)
    data["header_map"] = {k.lower(): v for k, v in data["headers"]}
    return data


async def test_request_forwarded_unchanged(stub: Stub, gate: TestServer,
                                           client: aiohttp.ClientSession) -> None:
    # Exact encoding, key order, repeated and empty keys survive.
    path = "/echo/a%2Fb/%C3%A9?x=1&x=2&q=a+b%20c&empty=&u=alice&t=abc&s=salt"
    body = bytes(range(256)) * 12_000  # ~3 MB
    headers = {"User-Agent": "DSub/5.5", "X-Client": "kept", "Cookie": "session=abc",
               "Content-Type": "application/octet-stream"}
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        data = body if method != "GET" else None
        direct = await _echo(client, stub.url + path, method, headers=headers, data=data)
        proxied = await _echo(client, url_of(gate, path), method, headers=headers, data=data)
        for key in ("method", "raw_path", "body_sha256", "body_length"):
            assert proxied[key] == direct[key], (method, key)
        for name in ("user-agent", "x-client", "cookie", "content-type", "content-length"):
            assert proxied["header_map"].get(name) == direct["header_map"].get(name), name
        assert "accept-encoding" not in proxied["header_map"]

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    streamed = await _echo(client, url_of(gate, "/echo/upload"), "POST", data=chunks())
    assert streamed["chunked"] and streamed["body_length"] == len(body)
    assert streamed["body_sha256"] == hashlib.sha256(body).hexdigest()


async def test_hop_by_hop_dropped_and_forwarded_headers_set(
        stub: Stub, gate: TestServer, client: aiohttp.ClientSession) -> None:
    seen = await _echo(client, url_of(gate, "/echo/h"), headers={
        "Connection": "keep-alive, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Proxy-Authorization": "Basic c2VjcmV0", "X-End": "kept",
        "X-Forwarded-For": "10.0.0.7", "Accept-Encoding": "gzip",
    })
    h = seen["header_map"]
    for gone in ("x-hop", "keep-alive", "te", "proxy-authorization"):
        assert gone not in h, gone
    assert "x-hop" not in h.get("connection", "").lower()
    assert h["x-end"] == "kept" and h["accept-encoding"] == "gzip"
    # The caller is no trusted proxy: its X-Forwarded-For is dropped, not relayed (see
    # tests/test_forwarding.py for a trusted one).
    assert h["x-forwarded-for"] == "127.0.0.1"
    assert h["x-forwarded-proto"] == "http"
    assert h["x-forwarded-host"] == f"127.0.0.1:{gate.port}"
    assert h["host"] == f"127.0.0.1:{stub.port}"

    status, headers, _ = await fetch(client, "GET", url_of(gate, "/hop"))
    assert status == 200 and headers["X-End-To-End"] == "kept"
    assert "X-Resp-Hop" not in headers and "Keep-Alive" not in headers
    assert headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


async def test_upstream_sub_path(tmp_path: Path, client: aiohttp.ClientSession) -> None:
    async with Stub.run(tmp_path / "stub", prefix="/music") as stub:
        assert stub.url.endswith("/music")
        async for gate in _musegate(tmp_path, stub.url + "/"):
            await assert_same(client, stub, gate, "/rest/ping?f=json")
            seen = await _echo(client, url_of(gate, "/echo/x?a=%20"))
            assert seen["raw_path"] == "/music/echo/x?a=%20"
            status, headers, _ = await fetch(client, "GET", url_of(gate, "/rest/redirect"))
            # The upstream's own sub-path is its business: the caller is sent to the same
            # place at musegate's root, which maps back to /music/rest/ping.view.
            assert status == 302 and headers["Location"].startswith("/rest/ping.view")
            assert all(p.startswith("/music/") for p in stub.state.seen_paths)


async def test_musegate_routes_keep_priority(stub: Stub, gate: TestServer,
                                             client: aiohttp.ClientSession) -> None:
    status, _, body = await fetch(client, "GET", url_of(gate, "/musegate/api/status"))
    assert status == 200 and "tracks" in json.loads(body)
    status, _, _ = await fetch(client, "GET", url_of(gate, "/musegate/api/no-such-thing"))
    assert status == 404
    assert not any(p.startswith("/musegate") for p in stub.state.seen_paths)


async def test_forward_for_intercepting_handlers(tmp_path: Path, stub: Stub,
                                                 client: aiohttp.ClientSession) -> None:
    """A handler registered after the proxy still wins, and can fall back with the body it read."""
    config = make_config(tmp_path, upstream_url=stub.url)
    app = create_app(config, refresh_seconds=None)

    async def intercepted(request: web.Request) -> web.StreamResponse:
        form = await request.post()
        if form.get("id") == "mine":
            return web.Response(text="answered by musegate")
        return await forward(request, stub.url, body=await request.read())

    app.router.add_route("POST", "/echo/intercepted", intercepted)
    async with TestServer(app) as gate:
        form = {"id": "theirs", "u": "alice", "p": "enc:70770d"}
        seen = await _echo(client, url_of(gate, "/echo/intercepted?f=json"), "POST", data=form)
        direct = await _echo(client, stub.url + "/echo/intercepted?f=json", "POST", data=form)
        for key in ("method", "raw_path", "body_sha256", "body_length"):
            assert seen[key] == direct[key], key
        assert seen["header_map"]["content-type"] == "application/x-www-form-urlencoded"
        _, _, body = await fetch(client, "POST", url_of(gate, "/echo/intercepted"),
                                 data={"id": "mine"})
        assert body == b"answered by musegate"


# ---------------------------------------------------------------------------- streams


async def _read_exactly(resp: aiohttp.ClientResponse, n: int) -> bytes:
    return await asyncio.wait_for(resp.content.readexactly(n), GUARD)


async def test_sse_events_arrive_one_by_one(stub: Stub, gate: TestServer,
                                            client: aiohttp.ClientSession) -> None:
    for base in (stub.url, url_of(gate, "")):
        async with client.get(base + "/api/events?jwt=x") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/event-stream"
            assert "Content-Length" not in resp.headers
            # The stub holds the second event until the first has arrived here: nothing buffers.
            assert await _read_exactly(resp, len(SSE_EVENTS[0])) == SSE_EVENTS[0]
            stub.state.release_sse()
            assert await _read_exactly(resp, len(SSE_EVENTS[1])) == SSE_EVENTS[1]


async def test_websocket_relayed_both_ways(stub: Stub, gate: TestServer,
                                           client: aiohttp.ClientSession) -> None:
    transcripts = []
    for base in (stub.url, url_of(gate, "")):
        seen: list[Any] = []
        async with client.ws_connect(base + "/ws?token=x", protocols=[WS_PROTOCOL]) as ws:
            assert ws.protocol == WS_PROTOCOL
            seen.append((await ws.receive(timeout=GUARD)).data)
            await ws.send_str("hi")
            seen.append((await ws.receive(timeout=GUARD)).data)
            await ws.send_bytes(b"\x00\x01binary")
            seen.append((await ws.receive(timeout=GUARD)).data)
            await ws.send_str("close")
            msg = await ws.receive(timeout=GUARD)
            seen.append((msg.type, ws.close_code))
        transcripts.append(seen)
    assert transcripts[0] == transcripts[1]
    assert transcripts[1][:3] == [WS_GREETING, "echo:hi", b"echo:\x00\x01binary"]
    assert transcripts[1][3] == (aiohttp.WSMsgType.CLOSE, WS_CLOSE_CODE)


async def test_endless_stream_no_read_timeout_and_abort_propagates(
        stub: Stub, gate: TestServer, client: aiohttp.ClientSession) -> None:
    session = gate.app[SESSION]
    assert session.timeout.total is None and session.timeout.sock_read is None
    async with client.get(url_of(gate, "/live?interval=0.01")) as resp:
        await _read_exactly(resp, 20 * 4096)
        assert stub.state.endless_open == 1
    # The caller hung up: musegate must hang up on the upstream too (no leaked streams).
    async with asyncio.timeout(GUARD):
        while stub.state.endless_open:
            await asyncio.sleep(0.05)
    assert stub.state.endless_closed == 1


async def test_upstream_dying_mid_body_truncates(stub: Stub, gate: TestServer,
                                                 client: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(client, "GET", url_of(gate, "/rest/stream?id=broken"))
    # musegate itself is fine.
    await assert_same(client, stub, gate, "/rest/ping?f=json")


async def test_twenty_concurrent_streams(stub: Stub, gate: TestServer,
                                         client: aiohttp.ClientSession) -> None:
    size = 4 * BLOCK_SIZE * 4 + 777  # ~4 MB each
    expected = generated_sha256(size)

    async def one(i: int) -> str:
        path = f"/rest/stream?id=big&size={size}" if i % 4 else "/rest/stream?id=t&format=mp3"
        digest = hashlib.sha256()
        async with client.get(url_of(gate, path)) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                digest.update(chunk)
        return digest.hexdigest()

    digests = await asyncio.gather(*(one(i) for i in range(20)))
    transcode = hashlib.sha256(transcode_body()).hexdigest()
    assert digests == [expected if i % 4 else transcode for i in range(20)]


# ---------------------------------------------------------------------------- failures


async def test_upstream_down_gives_502_then_recovers(stub: Stub, gate: TestServer,
                                                     client: aiohttp.ClientSession) -> None:
    await stub.stop()
    status, headers, body = await fetch(client, "GET", url_of(gate, "/rest/ping.view?u=a&f=json"))
    assert status == 502 and headers["Content-Type"].startswith("application/json")
    error = json.loads(body)["subsonic-response"]
    assert error["status"] == "failed" and error["error"]["code"] == 0
    status, headers, body = await fetch(client, "GET", url_of(gate, "/rest/ping.view?u=a"))
    assert status == 502 and b'status="failed"' in body and b'code="0"' in body
    status, _, body = await fetch(client, "GET", url_of(gate, "/rest/getAlbum?f=jsonp&callback=cb"))
    assert status == 502 and body.startswith(b"cb(")
    status, _, body = await fetch(client, "GET", url_of(gate, "/api/events"))
    assert status == 502 and body.startswith(b"502")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(url_of(gate, "/ws"))
    assert refused.value.status == 502
    # musegate's own API is unaffected, and the upstream is used again once it is back.
    status, _, _ = await fetch(client, "GET", url_of(gate, "/musegate/api/status"))
    assert status == 200
    await stub.start()
    await assert_same(client, stub, gate, "/rest/ping.view?u=a&f=json")


async def test_large_stream_keeps_memory_flat(tmp_path: Path, stub: Stub,
                                              client: aiohttp.ClientSession) -> None:
    """200 MB through a musegate process: its peak RSS grows by far less than the body."""
    size = 200 * 1024 * 1024
    async with run_musegate(tmp_path / "gate", stub.url) as gate:
        # Warm up (imports, first connection, first buffers) before taking the baseline.
        path = "/rest/stream?id=big&size=" + str(8 * 1024 * 1024)
        await fetch(client, "GET", gate.url + path)
        before = gate.memory_kib()
        digest = hashlib.sha256()
        async with client.get(f"{gate.url}/rest/stream?id=big&size={size}") as resp:
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == size
            async for chunk in resp.content.iter_chunked(1 << 20):
                digest.update(chunk)
        after = gate.memory_kib()
    assert digest.hexdigest() == generated_sha256(size)
    growth_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert growth_mib < 40, f"peak RSS grew {growth_mib:.1f} MiB for a 200 MiB stream"


async def test_big_body_goes_around_python_and_the_connection_stays_usable(
        stub: Stub, gate: TestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream with a Content-Length is spliced (Linux) and the caller's keep-alive survives it."""
    from gateway import upstream_http

    spliced: list[int] = []
    real = upstream_http.splice_body

    async def counting(body: upstream_http.Body, dst: object) -> None:
        spliced.append(body.length or 0)
        await real(body, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(upstream_http, "splice_body", counting)
    size = 3 * 1024 * 1024 + 5
    ports: set[int] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as one:
        for _ in range(2):
            digest = hashlib.sha256()
            async with one.get(url_of(gate, f"/rest/stream?id=big&size={size}")) as resp:
                assert int(resp.headers["Content-Length"]) == size
                assert resp.connection is not None and resp.connection.transport is not None
                ports.add(resp.connection.transport.get_extra_info("sockname")[1])
                async for chunk in resp.content.iter_any():
                    digest.update(chunk)
            assert digest.hexdigest() == generated_sha256(size)
        async with one.get(url_of(gate, "/rest/ping?f=json")) as resp:
            assert resp.status == 200 and json.loads(await resp.read())
    assert len(ports) == 1  # the second stream came on the connection the first one used
    if upstream_http.CAN_SPLICE:
        assert len(spliced) == 2 and all(0 < n <= size for n in spliced)
