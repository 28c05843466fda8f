"""A small aiohttp "music server" for the proxy's edge cases, and a runner for a real musegate.

supysonic (tests/supysonic_server.py) is the real Subsonic server of the test
suite, but it cannot produce every shape of HTTP answer a pass-through must
survive: gzip-encoded JSON, chunked transcodes, Navidrome's SSE
``/api/events``, websockets, endless streams, an upstream that dies mid-body.
This stub does, deterministically, and lets a test hold a stream at a known
point (SSE events are released by the test), so "not buffered" is proved by
ordering rather than by timing.

Run standalone (the benchmark does, so the upstream has its own CPU)::

    python -m tests.upstream_stub --port 0 [--prefix /music]   # prints "READY <port>"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import random
import socket
import struct
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

# ---------------------------------------------------------------------------- content

BLOCK_SIZE = 256 * 1024
# Fixed pseudo-random block; every generated chunk carries its index in its first
# 8 bytes, so a reordered, duplicated or dropped chunk changes the digest.
_BLOCK = random.Random(20240601).randbytes(BLOCK_SIZE)
FILE_SIZE = 3 * 1024 * 1024 + 12345  # the "song file" served with Range support
TRANSCODE_CHUNKS = 64

SSE_EVENTS = (
    b"retry: 1000\n\nevent: keepAlive\ndata: {\"ts\":1}\n\n",
    b"id: 2\nevent: scanStatus\ndata: {\"scanning\":false,\"count\":3}\n\n",
)
SSE_KEEPALIVE = b": ping\n\n"
WS_PROTOCOL = "musegate.test"
WS_GREETING = "hello from upstream"
WS_CLOSE_CODE = 4000


def generated_chunks(size: int) -> list[int]:
    """Sizes of the chunks a generated body of ``size`` bytes is written in."""
    full, rest = divmod(size, BLOCK_SIZE)
    return [BLOCK_SIZE] * full + ([rest] if rest else [])


def generated_chunk(index: int, length: int = BLOCK_SIZE) -> bytes:
    return (struct.pack(">Q", index) + _BLOCK[8:])[:length]


def generated_sha256(size: int) -> str:
    """The digest of ``/rest/stream?id=big&size=N`` without downloading it."""
    digest = hashlib.sha256()
    for i, length in enumerate(generated_chunks(size)):
        digest.update(generated_chunk(i, length))
    return digest.hexdigest()


def transcode_chunk(i: int) -> bytes:
    """Uneven chunk sizes, as an encoder's output is."""
    return generated_chunk(i, 1000 + (i * 7919) % 30000)


def album_json() -> bytes:
    """A getAlbum answer shaped like Navidrome's (big enough that gzip matters)."""
    songs = [
        {"id": f"tr-{i}", "parent": "al-1", "isDir": False, "title": f"Song {i}",
         "album": "Stub Album", "artist": "Stub Artist", "track": i, "year": 2024,
         "genre": "Test", "coverArt": "al-1", "size": 4_000_000 + i, "contentType": "audio/flac",
         "suffix": "flac", "duration": 200 + i, "bitRate": 900, "path": f"Stub/{i:02d}.flac",
         "albumId": "al-1", "artistId": "ar-1", "type": "music"}
        for i in range(1, 25)
    ]
    body = {"subsonic-response": {
        "status": "ok", "version": "1.16.1", "type": "stub", "serverVersion": "0.1",
        "openSubsonic": True,
        "album": {"id": "al-1", "name": "Stub Album", "songCount": len(songs), "song": songs},
    }}
    return json.dumps(body).encode()


PING_JSON = json.dumps({"subsonic-response": {
    "status": "ok", "version": "1.16.1", "type": "stub", "serverVersion": "0.1", "openSubsonic": True,
}}).encode()
PING_XML = (b'<?xml version="1.0" encoding="UTF-8"?>\n<subsonic-response '
            b'xmlns="http://subsonic.org/restapi" status="ok" version="1.16.1" type="stub" '
            b'serverVersion="0.1" openSubsonic="true"></subsonic-response>')


# ---------------------------------------------------------------------------- the app


@dataclass
class StubState:
    """What the stub saw, and the switches a test uses to release held streams."""

    seen_paths: list[str] = field(default_factory=list)
    sse_waiting: list[asyncio.Event] = field(default_factory=list)
    endless_open: int = 0
    endless_closed: int = 0

    def release_sse(self) -> None:
        """Let every SSE connection held after its first event send the second one."""
        for event in self.sse_waiting:
            event.set()
        self.sse_waiting.clear()


STATE = web.AppKey("stub_state", StubState)
FILE = web.AppKey("stub_file", Path)
PREFIX = web.AppKey("stub_prefix", str)


def _fmt(request: web.Request) -> str:
    return request.query.get("f", "xml")


async def ping(request: web.Request) -> web.Response:
    if _fmt(request) == "json":
        return web.Response(body=PING_JSON, content_type="application/json")
    return web.Response(body=PING_XML, content_type="text/xml")


async def get_album(request: web.Request) -> web.Response:
    """JSON, gzip-encoded when the caller accepts it (as Navidrome's middleware does)."""
    body = album_json()
    headers = {"Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = gzip.compress(body, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, content_type="application/json", headers=headers)


async def stream(request: web.Request) -> web.StreamResponse:
    """``id=big&size=N``: generated body; ``format=mp3``: chunked "transcode";
    ``id=broken``: dies mid-body; otherwise the song file with Range/If-Range/HEAD."""
    song = request.query.get("id", "")
    if request.query.get("format", "raw") not in ("raw", ""):
        return await _transcode(request)
    if song == "big":
        return await _generated(request, int(request.query.get("size", str(FILE_SIZE))))
    if song == "broken":
        return await _broken(request)
    return web.FileResponse(request.app[FILE], headers={"Content-Type": "audio/flac"})


async def _generated(request: web.Request, size: int) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "audio/flac", "Accept-Ranges": "none"})
    resp.content_length = size
    await resp.prepare(request)
    if request.method != "HEAD":
        for i, length in enumerate(generated_chunks(size)):
            await resp.write(generated_chunk(i, length))
    await resp.write_eof()
    return resp


async def _transcode(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    if request.method != "HEAD":
        for i in range(TRANSCODE_CHUNKS):
            await resp.write(transcode_chunk(i))
            await asyncio.sleep(0)
    await resp.write_eof()
    return resp


async def _broken(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "audio/flac"})
    resp.content_length = 10 * BLOCK_SIZE
    await resp.prepare(request)
    await resp.write(generated_chunk(0))
    assert request.transport is not None
    request.transport.close()  # short of Content-Length: the upstream "crashed"
    return resp


def transcode_body() -> bytes:
    return b"".join(transcode_chunk(i) for i in range(TRANSCODE_CHUNKS))


async def redirect(request: web.Request) -> web.Response:
    """A relative Location the proxy must pass untouched (and not follow)."""
    prefix = request.app.get(PREFIX, "")
    raise web.HTTPFound(f"{prefix}/rest/ping.view?f=json&from=redirect")


async def hop_headers(request: web.Request) -> web.Response:
    """A response carrying hop-by-hop headers (some named by Connection) and repeated Set-Cookie."""
    resp = web.Response(text="hop", headers={
        "Connection": "X-Resp-Hop", "X-Resp-Hop": "1", "Keep-Alive": "timeout=5",
        "X-End-To-End": "kept",
    })
    resp.headers.add("Set-Cookie", "a=1; Path=/")
    resp.headers.add("Set-Cookie", "b=2; Path=/")
    return resp


async def echo(request: web.Request) -> web.Response:
    """Any method: what arrived (raw path, query, headers, body digest), for comparisons."""
    digest = hashlib.sha256()
    length = 0
    async for chunk in request.content.iter_any():
        digest.update(chunk)
        length += len(chunk)
    return web.json_response({
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_sha256": digest.hexdigest(),
        "body_length": length,
        "chunked": "chunked" in request.headers.get("Transfer-Encoding", ""),
    })


async def events(request: web.Request) -> web.StreamResponse:
    """Navidrome-style SSE: first event at once, the second when the test releases it,
    then keep-alive comments until the client goes away."""
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    gate = asyncio.Event()
    request.app[STATE].sse_waiting.append(gate)
    try:
        await resp.write(SSE_EVENTS[0])
        await gate.wait()
        await resp.write(SSE_EVENTS[1])
        while True:
            await asyncio.sleep(0.2)
            await resp.write(SSE_KEEPALIVE)
    except ConnectionError:
        pass
    return resp


async def endless(request: web.Request) -> web.StreamResponse:
    """A live stream that never ends by itself; counts open and closed connections."""
    state = request.app[STATE]
    interval = float(request.query.get("interval", "0.01"))
    resp = web.StreamResponse(headers={"Content-Type": "audio/mpeg"})
    await resp.prepare(request)
    state.endless_open += 1
    try:
        i = 0
        while True:
            await resp.write(generated_chunk(i, 4096))
            i += 1
            await asyncio.sleep(interval)
    except ConnectionError:
        pass
    finally:
        state.endless_open -= 1
        state.endless_closed += 1
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Greets, echoes text and binary, closes with 4000 on "close"."""
    ws = web.WebSocketResponse(protocols=[WS_PROTOCOL])
    await ws.prepare(request)
    await ws.send_str(WS_GREETING)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            if msg.data == "close":
                await ws.close(code=WS_CLOSE_CODE, message=b"bye")
                break
            await ws.send_str("echo:" + msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(b"echo:" + msg.data)
    return ws


def make_stub(workdir: Path, prefix: str = "") -> web.Application:
    """The stub app; ``prefix`` mounts everything under a sub-path (e.g. "/music")."""
    prefix = prefix.rstrip("/")
    workdir.mkdir(parents=True, exist_ok=True)
    song = workdir / "song.flac"
    if not song.exists() or song.stat().st_size != FILE_SIZE:
        song.write_bytes(b"".join(generated_chunk(i, n)
                                  for i, n in enumerate(generated_chunks(FILE_SIZE))))
    app = web.Application()
    app[STATE] = StubState()
    app[FILE] = song
    app[PREFIX] = prefix

    @web.middleware
    async def record(request: web.Request, handler: object) -> web.StreamResponse:
        app[STATE].seen_paths.append(request.path)
        return await handler(request)  # type: ignore[operator]

    app.middlewares.append(record)
    for name, handler in (("ping", ping), ("getAlbum", get_album), ("stream", stream),
                          ("download", stream)):
        for suffix in ("", ".view"):
            app.router.add_route("*", f"{prefix}/rest/{name}{suffix}", handler)
    app.router.add_route("*", f"{prefix}/rest/redirect", redirect)
    app.router.add_get(f"{prefix}/hop", hop_headers)
    app.router.add_get(f"{prefix}/api/events", events)
    app.router.add_get(f"{prefix}/live", endless)
    app.router.add_get(f"{prefix}/ws", websocket)
    app.router.add_route("*", prefix + "/echo{tail:.*}", echo)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Stub:
    """The stub on a real loopback port that can be stopped and started again (same port)."""

    def __init__(self, workdir: Path, prefix: str = "") -> None:
        self.app = make_stub(workdir, prefix)
        self.prefix = prefix.rstrip("/")
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def state(self) -> StubState:
        return self.app[STATE]

    @property
    def url(self) -> str:
        """The upstream URL to configure (with the sub-path)."""
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def start(self) -> None:
        self.port = self.port or free_port()
        # A fresh runner each time: the same app is re-served after stop() (upstream back).
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.shutdown()
            await self._runner.cleanup()
            self._runner = None

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, workdir: Path, prefix: str = "") -> AsyncIterator[Stub]:
        stub = cls(workdir, prefix)
        await stub.start()
        try:
            yield stub
        finally:
            await stub.stop()


# ---------------------------------------------------------------------------- musegate


_MUSEGATE = """
import json
import sys
from aiohttp import web
from gateway.app import create_app
from musegate.config import load_config
config = load_config(None, env={}, overrides={
    "data_dir": sys.argv[1], "upstream_url": sys.argv[2], "port": int(sys.argv[3]),
    "source": sys.argv[4], "library_path": "", "log_level": "WARNING",
    "subsonic_visibility": sys.argv[5], **json.loads(sys.argv[6])})
web.run_app(create_app(config), host="127.0.0.1", port=config.port, access_log=None,
            print=lambda *_: print("READY", flush=True))
"""


def process_memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak resident set) of process ``pid``, in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


@dataclass
class MusegateProcess:
    """A real musegate (create_app under aiohttp's runner) in its own process."""

    proc: asyncio.subprocess.Process
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def memory_kib(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak resident set) of the process, in KiB."""
        return process_memory_kib(self.pid)


@contextlib.asynccontextmanager
async def run_musegate(data_dir: Path, upstream_url: str, timeout: float = 60.0,
                       source: str = "folder",
                       visibility: str = "hydrate",
                       overrides: Mapping[str, Any] | None = None,
                       ) -> AsyncIterator[MusegateProcess]:
    """Start musegate in front of ``upstream_url``; stopped (SIGTERM, then kill) on exit.

    ``visibility`` is the ``subsonic_visibility`` key, so a benchmark can measure both modes;
    ``overrides`` sets any other configuration key (e.g. ``subsonic_song_cache_seconds``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _MUSEGATE, str(data_dir), upstream_url, str(port), source,
        visibility, json.dumps(dict(overrides or {})),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(repo), env=env,
    )
    assert proc.stdout is not None
    try:
        output = b""
        async with asyncio.timeout(timeout):
            while b"READY" not in output:
                line = await proc.stdout.readline()
                if not line:
                    raise RuntimeError(f"musegate did not start:\n{output.decode(errors='replace')}")
                output += line
        drain = asyncio.create_task(_drain(proc))
        try:
            yield MusegateProcess(proc, port)
        finally:
            drain.cancel()
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _drain(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    while await proc.stdout.readline():
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    async def serve() -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            stub = Stub(Path(args.workdir or tmp), args.prefix)
            stub.port = args.port or free_port()
            await stub.start()
            print("READY", stub.port, flush=True)
            try:
                await asyncio.Event().wait()
            finally:
                await stub.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
