"""A fault-injecting HTTP/1.1 proxy between musegate and its upstream, for the reliability tests.

musegate is pointed at the proxy's URL; the proxy relays to the real upstream
(supysonic, the fake Jellyfin) and, when the test says so, breaks the answers
the way a real server or network breaks them:

========================  ===========================================================
``Fault.PASS``            relayed unchanged (keep-alive towards musegate kept)
``Fault.REFUSE``          nothing listens on the port: connection refused (the upstream
                          was killed); ``restart()`` closes every connection and listens
                          again on the same port (the upstream restarted)
``Fault.STALL``           the request is read and never answered until ``release()``
``Fault.DELAY``           every answer is held ``delay`` seconds, then relayed whole
``Fault.HALF_CLOSE``      the upstream's status line and headers, then FIN (no body)
``Fault.TRUNCATE``        headers and half the body, then the connection is closed
``Fault.GARBAGE``         bytes that are not HTTP at all, then close
``Fault.HTTP_500/502/503`` an HTML error page with that status (what a crashing app or a
                          reverse proxy in front of a dead server sends)
``Fault.WRONG_BODY``      200 with an HTML page (a captive portal, a misrouted proxy, a
                          parked domain): well-formed HTTP, not the protocol
``Fault.RESET``           headers and part of the body, then a TCP reset (RST)
========================  ===========================================================

The proxy reads each request from musegate whole (head, then a body framed by
Content-Length or chunked), so a fault applies to *requests*, not connections:
the mode set before a request arrives is the one it gets, even on a pooled
keep-alive connection. Each request travels to the upstream on a fresh
connection with ``Connection: close``; the answer's own framing (Content-Length,
chunked, or until close) is relayed, and an answer framed by close ends the
connection to musegate too.

Tests switch faults with ``set()`` and synchronise on events, never on sleeps:
``await proxy.requests_seen(n)`` returns once n requests reached the proxy;
``STALL`` holds answers on an event that ``release()`` (or the next ``set()``)
fires. A fault can also be armed to strike in the middle of a run of requests
(a server that dies during a library scan): ``set(mode, trigger=b"download",
skip=2)`` lets requests pass until the third one whose request line contains
``download``; from that one on every request gets ``mode`` (with ``REFUSE`` the
listener closes then and every open connection, that one's included, is cut),
and ``await proxy.struck.wait()`` returns once it happened. Everything listens
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
from collections.abc import AsyncIterator

HEAD_LIMIT = 64 * 1024
GARBAGE = bytes(range(256)) * 4 + b"\x00\xff not http at all \r\n\r\n"


class Fault(enum.Enum):
    PASS = "pass"
    REFUSE = "refuse"
    STALL = "stall"
    DELAY = "delay"
    HALF_CLOSE = "half-close after headers"
    TRUNCATE = "truncated body"
    GARBAGE = "garbage bytes"
    HTTP_500 = "HTTP 500"
    HTTP_502 = "HTTP 502"
    HTTP_503 = "HTTP 503"
    WRONG_BODY = "HTTP 200, HTML body"
    RESET = "reset mid-stream"


_STATUS_PAGES = {
    Fault.HTTP_500: (500, "Internal Server Error"),
    Fault.HTTP_502: (502, "Bad Gateway"),
    Fault.HTTP_503: (503, "Service Unavailable"),
    Fault.WRONG_BODY: (200, "OK"),
}


class Message:
    """One HTTP message as read off the wire: its head (lines) and body framing."""

    def __init__(self, start: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.start = start
        self.headers = headers

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def chunked(self) -> bool:
        return b"chunked" in (self.header(b"Transfer-Encoding") or b"").lower()

    def length(self) -> int | None:
        raw = self.header(b"Content-Length")
        return int(raw) if raw is not None and raw.strip().isdigit() else None

    def encode(self, drop: tuple[bytes, ...] = (), add: tuple[tuple[bytes, bytes], ...] = ()
               ) -> bytes:
        keep = [(k, v) for k, v in self.headers if k.lower() not in drop]
        lines = [self.start] + [k + b": " + v for k, v in keep + list(add)]
        return b"\r\n".join(lines) + b"\r\n\r\n"


async def read_head(reader: asyncio.StreamReader) -> Message | None:
    """The next message head, or None when the peer closed before sending one."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError:
        return None
    lines = raw[:-4].split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    return Message(lines[0], headers)


async def read_body(reader: asyncio.StreamReader, msg: Message, *, until_close: bool) -> bytes:
    """The body bytes exactly as framed on the wire (chunk framing included)."""
    if msg.chunked():
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            out += size_line
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    line = await reader.readuntil(b"\r\n")
                    out += line
                    if line == b"\r\n":
                        return bytes(out)
            out += await reader.readexactly(size + 2)
    length = msg.length()
    if length is not None:
        return await reader.readexactly(length)
    if until_close:
        return await reader.read()
    return b""


def _no_body(request: Message, response: Message) -> bool:
    status = response.start.split(b" ")[1:2]
    code = int(status[0]) if status and status[0].isdigit() else 200
    return request.start.startswith(b"HEAD ") or code in (204, 304) or 100 <= code < 200


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    """``async with FaultProxy(upstream_port) as proxy: proxy.url`` — see the module docstring."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.mode = Fault.PASS
        self.delay = 0.0
        self.seen = 0
        self.faulted = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._release = asyncio.Event()
        self._seen_changed = asyncio.Condition()
        self.struck = asyncio.Event()
        self._armed: tuple[Fault, bytes | None, int] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ control

    def set(self, mode: Fault, delay: float = 0.0, *, trigger: bytes | None = None,
            skip: int | None = None) -> None:
        """Apply ``mode`` to every request that arrives from now on (stalled ones are released).

        With ``trigger`` or ``skip`` the fault is only armed: requests pass until the
        (``skip`` + 1)-th one whose request line contains ``trigger`` (any request when
        None), and from that one on every request gets ``mode``; ``struck`` is set then.
        """
        self.release()
        self._release = asyncio.Event()
        self.delay = delay
        self.struck = asyncio.Event()
        if mode is not Fault.REFUSE and self._server is None and self.port:
            raise RuntimeError("call restart() to listen again after REFUSE")
        if trigger is not None or skip is not None:
            self.mode, self._armed = Fault.PASS, (mode, trigger, skip or 0)
            return
        self._armed = None
        self._strike(mode)

    def _strike(self, mode: Fault) -> None:
        self.mode = mode
        if mode is not Fault.PASS:
            self.struck.set()
        if mode is Fault.REFUSE and self._server is not None:
            self._server.close()
            self._server = None
            self._drop_connections()

    def _mode_for(self, request: Message) -> Fault:
        """The fault this request gets, striking an armed fault when this is its request."""
        if self._armed is not None:
            mode, trigger, skip = self._armed
            if trigger is None or trigger in request.start:
                if skip > 0:
                    self._armed = (mode, trigger, skip - 1)
                else:
                    self._armed = None
                    self._strike(mode)
        return self.mode

    def release(self) -> None:
        """Let stalled requests go on (they are then relayed as in PASS)."""
        self._release.set()

    async def restart(self, mode: Fault = Fault.PASS) -> None:
        """Close every connection and the listener, then listen again on the same port."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop_connections()
        self.mode, self._armed = Fault.PASS, None
        await self._listen()
        self.set(mode)

    async def requests_seen(self, n: int) -> None:
        """Return once at least ``n`` requests have reached the proxy (counted since start)."""
        async with self._seen_changed:
            await self._seen_changed.wait_for(lambda: self.seen >= n)

    # ---------------------------------------------------------------- lifetime

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port,
                                                  limit=HEAD_LIMIT, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FaultProxy]:
        await self._listen()
        try:
            yield self
        finally:
            self.release()
            if self._server is not None:
                self._server.close()
            self._drop_connections()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(BaseException):
                    await task

    async def __aenter__(self) -> FaultProxy:
        self._cm = self.running()
        return await self._cm.__aenter__()

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(*exc)

    # ------------------------------------------------------------------ serving

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:
                request = await read_head(reader)
                if request is None:
                    return
                body = await read_body(reader, request, until_close=False)
                async with self._seen_changed:
                    self.seen += 1
                    self._seen_changed.notify_all()
                keep_open = await self._answer(request, body, writer)
                if not keep_open:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _answer(self, request: Message, body: bytes, client: asyncio.StreamWriter) -> bool:
        """Relay (or break) one exchange; False when the connection to musegate must end."""
        mode = self._mode_for(request)
        if mode is Fault.REFUSE:  # struck by this very request: the server died under it
            _reset(client)
            return False
        if mode is not Fault.PASS:
            self.faulted += 1
        if mode is Fault.STALL:
            await self._release.wait()
            mode = Fault.PASS
        if mode is Fault.GARBAGE:
            client.write(GARBAGE)
            await client.drain()
            return False
        if mode in _STATUS_PAGES:
            code, reason = _STATUS_PAGES[mode]
            page = (f"<html><head><title>{code} {reason}</title></head><body><center><h1>"
                    f"{code} {reason}</h1></center><hr><center>nginx</center></body></html>\n"
                    ).encode()
            client.write(f"HTTP/1.1 {code} {reason}\r\nServer: nginx\r\nContent-Type: text/html"
                         f"\r\nContent-Length: {len(page)}\r\nConnection: close\r\n\r\n".encode()
                         + page)
            await client.drain()
            return False

        up_reader, up_writer = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
        try:
            up_writer.write(request.encode(drop=(b"connection", b"keep-alive"),
                                           add=((b"Connection", b"close"),)) + body)
            await up_writer.drain()
            response = await read_head(up_reader)
            if response is None:
                return False
            head = response.encode(drop=(b"connection", b"keep-alive"))
            framed = _no_body(request, response) or response.chunked() \
                or response.length() is not None
            if mode is Fault.HALF_CLOSE:
                client.write(head)
                await client.drain()
                if client.can_write_eof():
                    client.write_eof()
                await self._release.wait()  # held half-open until the next set() or the end
                return False
            if mode in (Fault.TRUNCATE, Fault.RESET):
                payload = b"" if _no_body(request, response) else \
                    await read_body(up_reader, response, until_close=True)
                client.write(head + payload[: max(1, len(payload) // 2)])
                await client.drain()
                if mode is Fault.RESET:
                    _reset(client)
                return False
            if mode is Fault.DELAY:
                payload = b"" if _no_body(request, response) else \
                    await read_body(up_reader, response, until_close=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), self.delay)
                client.write(head + payload)
                await client.drain()
                return framed
            # PASS: stream the body through as it comes (a long stream is not buffered).
            client.write(head)
            if not _no_body(request, response):
                await self._stream_body(up_reader, response, client)
            await client.drain()
            return framed
        finally:
            up_writer.close()

    @staticmethod
    async def _stream_body(up: asyncio.StreamReader, response: Message,
                           client: asyncio.StreamWriter) -> None:
        if response.chunked():
            client.write(await read_body(up, response, until_close=False))
            return
        remaining = response.length()
        while remaining is None or remaining > 0:
            chunk = await up.read(65536 if remaining is None else min(65536, remaining))
            if not chunk:
                return
            client.write(chunk)
            await client.drain()
            if remaining is not None:
                remaining -= len(chunk)
