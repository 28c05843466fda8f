"""A lean HTTP/1.1 client for the pass-through: raw non-blocking sockets, one read per wake-up.

Every request musegate does not answer itself crosses two hops, and on each
small one (a ``ping``, a page of JSON) the per-request work of a general
client — aiohttp's ClientSession builds a ClientRequest, a URL, a connector
key, a response object with its own StreamReader and a parsed copy of every
header — cost about half a millisecond of CPU, more than the server it fronts
takes to answer. The relay needs far less: send the head it already has, parse
a status line and headers, and move the body bytes with the framing the
upstream chose. This module does only that, over sockets driven by the loop's
``sock_*`` calls (no transport, protocol or stream objects per connection).

What it keeps of HTTP/1.1 (RFC 9112): the body length rules of §6.3 (no body
for HEAD, 1xx, 204 and 304; chunked; Content-Length; otherwise until close),
interim 1xx answers skipped, keep-alive unless either side said ``close`` or
the answer was HTTP/1.0, and a pooled connection the upstream closed while it
sat idle is noticed before it is used (and, for an idempotent request whose
answer never started, the request is sent once more on a new connection, as
browsers and aiohttp do). An upstream that closes every connection (supysonic's
werkzeug server does) simply gets a new one per request: a spare connection
opened ahead of the next request was tried and measured no faster on loopback
while costing CPU (docs/benchmarks.md, "Pass-through: a lean upstream client").

Big Content-Length bodies (streams) can be moved socket to socket in the kernel
with ``os.splice`` (:func:`splice_body`), so their bytes never enter Python.

Only ``http://`` upstreams use it; TLS upstreams and websockets stay on aiohttp
(gateway.proxy decides).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

# One receive may bring this much: fewer, larger reads mean fewer loop wake-ups per MB.
READ_SIZE = 1 << 20
# A response head larger than this is not a music server's (aiohttp's limit is 8190 per line).
MAX_HEAD = 64 * 1024
# Idle keep-alive connections kept per upstream.
MAX_IDLE = 32
# A pooled connection older than this is closed rather than used: servers drop
# idle connections after a few seconds to minutes, and a fresh one is cheaper than a retry.
MAX_IDLE_SECONDS = 15.0
# How long a resolved upstream address is trusted (aiohttp's DNS cache default).
DNS_TTL = 10.0

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose request is sent with ``Content-Length: 0`` when it has no body (as aiohttp does).
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamError(Exception):
    """The upstream could not be reached, or what it sent is not an HTTP/1.x answer."""


class ConnectFailed(UpstreamError):
    """No connection could be opened (refused, unreachable, or the connect timed out)."""


class Truncated(UpstreamError):
    """The connection ended (or turned to garbage) before the message did."""


@dataclass
class ResponseHead:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    version: tuple[int, int]
    # What the framing needs, gathered while the head is parsed (one pass over the lines):
    # the Content-Length values, the Transfer-Encoding codings and the Connection tokens.
    lengths: list[str]
    codings: list[str]
    connection: set[str]


class Connection:
    """One socket to the upstream, with the bytes read past the current message's head."""

    __slots__ = ("sock", "buffer", "created", "waited")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.created = time.monotonic()
        # Sat open in the pool before this request: the upstream may have
        # closed it just as the request went out, which is worth one more try.
        self.waited = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def idle_and_open(self) -> bool:
        """Whether the upstream kept this idle connection open (and sent nothing on it).

        A peek that would block means open and quiet; an empty peek means the upstream
        closed it; bytes mean it said something unasked (a 408, garbage): unusable too.
        """
        if self.buffer or time.monotonic() - self.created > MAX_IDLE_SECONDS:
            return False
        try:
            data = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        return not data


class UpstreamPool:
    """Connections to one ``host:port``, with the idle keep-alive ones kept for the next request."""

    def __init__(self, host: str, port: int, *, connect_timeout: float) -> None:
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self._idle: list[Connection] = []
        self._addr: tuple[float, list[tuple[int, tuple]]] | None = None  # type: ignore[type-arg]
        self._closed = False

    # ---------------------------------------------------------------- connections

    async def _addresses(self) -> list[tuple[int, tuple]]:  # type: ignore[type-arg]
        now = time.monotonic()
        if self._addr is not None and now - self._addr[0] < DNS_TTL:
            return self._addr[1]
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                       proto=socket.IPPROTO_TCP)
        found = [(family, addr) for family, _, _, _, addr in infos]
        self._addr = (now, found)
        return found

    def resolved(self) -> list[tuple[int, tuple]] | None:  # type: ignore[type-arg]
        """The upstream's addresses when they were resolved within DNS_TTL, else None."""
        if self._addr is not None and time.monotonic() - self._addr[0] < DNS_TTL:
            return self._addr[1]
        return None

    async def _open(self) -> Connection:
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                for family, addr in await self._addresses():
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(sock, addr)
                    except OSError as exc:
                        sock.close()
                        last = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    return Connection(sock)
        except TimeoutError as exc:
            raise ConnectFailed("connect timed out") from exc
        except OSError as exc:  # name resolution
            raise ConnectFailed(type(exc).__name__) from exc
        raise ConnectFailed(type(last).__name__ if last else "no address")

    def idle(self) -> Connection | None:
        """A live idle connection, or None (those the upstream closed meanwhile are dropped)."""
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_and_open():
                conn.waited = True
                return conn
            conn.close()
        return None

    async def acquire(self, *, fresh: bool = False) -> Connection:
        """An open connection: a live idle one, or a new one (always new when ``fresh``)."""
        conn = None if fresh else self.idle()
        return conn if conn is not None else await self._open()

    def release(self, conn: Connection, *, reusable: bool) -> None:
        """Hand ``conn`` back after a message was read to its end (``reusable``) or not."""
        if reusable and not self._closed and len(self._idle) < MAX_IDLE:
            conn.created = time.monotonic()
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


# ---------------------------------------------------------------- reading


async def _recv(conn: Connection, size: int = READ_SIZE) -> bytes:
    """Up to ``size`` bytes: the buffered ones first, else one receive (b"" at EOF)."""
    if conn.buffer:
        data = conn.buffer[:size]
        conn.buffer = conn.buffer[size:]
        return data
    loop = asyncio.get_running_loop()
    try:
        return await loop.sock_recv(conn.sock, size)
    except OSError as exc:
        if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
            return b""
        raise Truncated(type(exc).__name__) from exc


async def _line(conn: Connection, limit: int = 8192) -> bytes:
    while True:
        end = conn.buffer.find(b"\r\n")
        if end >= 0:
            line, conn.buffer = conn.buffer[:end], conn.buffer[end + 2:]
            return line
        if len(conn.buffer) > limit:
            raise Truncated("line too long")
        data = await _recv_more(conn)
        if not data:
            raise Truncated("connection closed")


async def _recv_more(conn: Connection, deadline: float | None = None) -> bytes:
    """Receive once and append to the buffer (b"" at EOF); TimeoutError after ``deadline``.

    ``deadline`` is on the loop's clock. Waiting is one reader callback and one timer
    around a non-blocking ``recv``: a response head is waited for on every relayed
    request, and ``sock_recv`` inside ``asyncio.timeout`` cost twice the loop work.
    """
    sock = conn.sock
    while True:
        try:
            data = sock.recv(READ_SIZE)
            break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                return b""
            raise Truncated(type(exc).__name__) from exc
        await _readable(sock.fileno(), deadline)
    conn.buffer += data
    return data


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _readable(fd: int, deadline: float | None) -> None:
    """Until ``fd`` can be read; TimeoutError once the loop's clock passes ``deadline``."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, _wake, fut)
    timer = loop.call_at(deadline, _expire, fut) if deadline is not None else None
    try:
        await fut
    finally:
        loop.remove_reader(fd)
        if timer is not None:
            timer.cancel()


# What bytes.strip() strips: the value rules of the bytes parser this one replaced.
_WS = " \t\r\n\x0b\x0c"


def _parse_head(raw: bytes) -> ResponseHead:
    """Status line and headers; the framing headers are noted on the way (no second scan).

    The head is decoded once (UTF-8, undecodable bytes kept as surrogates, as before
    per header value) and split into lines as text: one decode per head instead of two
    per header line, a measurable part of a relayed ``ping``.
    """
    lines = raw.decode("utf-8", "surrogateescape").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[0]) != 8:
        raise UpstreamError("not an HTTP/1.x status line")
    code = parts[1]
    if not (len(code) == 3 and code.isascii() and code.isdigit()):
        raise UpstreamError("bad status code")
    version = (1, 1 if parts[0][7] == "1" else 0)
    headers: list[tuple[str, str]] = []
    lengths: list[str] = []
    codings: list[str] = []
    connection: set[str] = set()
    folded = False
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t":  # obsolete line folding (RFC 9112 §5.2): join
            if not headers:
                raise UpstreamError("folded first header")
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip(_WS))
            folded = True
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip(_WS) or " " in name:
            raise UpstreamError("bad header line")
        value = value.strip(_WS)
        headers.append((name, value))
        lower = name.lower()
        if lower in _FRAMING:
            _note(lower, value, lengths, codings, connection)
    if folded:  # rare: note the framing headers again from their joined values
        lengths, codings, connection = [], [], set()
        for name, value in headers:
            lower = name.lower()
            if lower in _FRAMING:
                _note(lower, value, lengths, codings, connection)
    reason = ""
    if len(parts) > 2:
        reason = parts[2]
        if not reason.isascii():  # the reason phrase is Latin-1 (RFC 9112 §4)
            reason = raw.partition(b"\r\n")[0].split(b" ", 2)[2].decode("latin-1")
    return ResponseHead(int(code), reason, headers, version, lengths, codings, connection)


_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


def _note(lower: str, value: str, lengths: list[str], codings: list[str],
          connection: set[str]) -> None:
    """Record one framing header's value."""
    if lower == "content-length":
        lengths.append(value.strip())
    elif lower == "transfer-encoding":
        codings.extend(c for c in (t.strip().lower() for t in value.split(",")) if c)
    else:
        connection.update(t.strip().lower() for t in value.split(",") if t.strip())


def head_from_buffer(conn: Connection) -> ResponseHead | None:
    """The next final response head if a whole one is buffered (1xx read past), else None."""
    while True:
        end = conn.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(conn.buffer) > MAX_HEAD:
                raise UpstreamError("response head too large")
            return None
        raw, conn.buffer = conn.buffer[:end], conn.buffer[end + 4:]
        head = _parse_head(raw)
        if head.status == 101:
            raise UpstreamError("unexpected protocol switch")
        if not 100 <= head.status < 200:
            return head


async def read_head(conn: Connection, deadline: float | None = None) -> ResponseHead:
    """The next final response head (1xx interim answers are read past), by ``deadline``."""
    while True:
        head = head_from_buffer(conn)
        if head is not None:
            return head
        if not await _recv_more(conn, deadline):
            raise Truncated("connection closed before the response head")


def _content_length(lengths: list[str]) -> int | None:
    values = set(lengths)
    if not values:
        return None
    if len(values) != 1:
        raise UpstreamError("conflicting Content-Length")
    value = values.pop()
    if not value.isdigit():
        raise UpstreamError("bad Content-Length")
    return int(value)


class Body:
    """How the upstream framed the body of one answer, and the reader that follows it."""

    def __init__(self, conn: Connection, head: ResponseHead, method: str) -> None:
        self.conn = conn
        self.chunked = False
        self.length: int | None = None  # bytes left when Content-Length framed
        self.until_close = False
        self.done = False
        codings = head.codings
        if method == "HEAD" or head.status in (204, 304) or head.status < 200:
            self.done = True
        elif codings:
            # RFC 9112 §6.3: Transfer-Encoding overrides Content-Length; chunked must be last.
            if codings[-1] == "chunked":
                self.chunked = True
            else:
                self.until_close = True
        else:
            self.length = _content_length(head.lengths)
            if self.length is None:
                self.until_close = True
            elif self.length == 0:
                self.done = True
        connection = head.connection
        self.keep_alive = (not self.until_close and "close" not in connection
                           and (head.version >= (1, 1) or "keep-alive" in connection))
        self._chunk_left = 0

    def buffered(self) -> bytes:
        """Body bytes that came with the head, for the first write (no wait)."""
        if self.done or self.chunked:
            return b""
        data = self.conn.buffer
        if self.length is not None:
            data = data[:self.length]
            self.length -= len(data)
            if self.length == 0:
                self.done = True
        self.conn.buffer = self.conn.buffer[len(data):]
        return data

    async def read(self) -> bytes:
        """The next piece of the body (b"" once it ended); Truncated when it was cut short."""
        if self.done:
            return b""
        if self.length is not None:
            data = await _recv(self.conn, min(READ_SIZE, self.length))
            if not data:
                raise Truncated("connection closed inside the body")
            self.length -= len(data)
            if self.length == 0:
                self.done = True
            return data
        if self.until_close:
            data = await _recv(self.conn)
            if not data:
                self.done = True
            return data
        return await self._read_chunk()

    async def _read_chunk(self) -> bytes:
        conn = self.conn
        if self._chunk_left == 0:
            line = await _line(conn)
            size = line.split(b";", 1)[0].strip()
            try:
                self._chunk_left = int(size, 16)
            except ValueError:
                raise Truncated("bad chunk size") from None
            if self._chunk_left == 0:
                while await _line(conn):  # trailers (hop-by-hop here: dropped)
                    pass
                self.done = True
                return b""
        data = await _recv(conn, min(READ_SIZE, self._chunk_left))
        if not data:
            raise Truncated("connection closed inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await _line(conn):
            raise Truncated("chunk without its CRLF")
        return data


# ---------------------------------------------------------------- sending


def _check(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise UpstreamError("header with a line break")
    return value


BodySource = bytes | Callable[[], AsyncIterator[bytes]] | None


@dataclass
class Exchange:
    """One request sent and its answer's head read: the caller relays ``body``, then ``finish``es."""

    pool: UpstreamPool
    conn: Connection
    head: ResponseHead
    body: Body

    def finish(self) -> None:
        """Return the connection to the pool when its message was read to the end, else close it."""
        self.pool.release(self.conn, reusable=self.body.done and self.body.keep_alive)


async def request(pool: UpstreamPool, method: str, target: str, host: str,
                  headers: list[tuple[str, str]], body: BodySource = None,
                  body_length: int | None = None, deadline: float | None = None) -> Exchange:
    """Send one request and read its answer's head (see :func:`send`)."""
    lines = [f"{method} {_check(target)} HTTP/1.1".encode("utf-8", "surrogateescape"),
             f"Host: {_check(host)}".encode("utf-8", "surrogateescape")]
    lines += [f"{_check(k)}: {_check(v)}".encode("utf-8", "surrogateescape") for k, v in headers]
    return await send(pool, method, lines, body, body_length, deadline)


async def send(pool: UpstreamPool, method: str, lines: list[bytes], body: BodySource = None,
               body_length: int | None = None, deadline: float | None = None) -> Exchange:
    """Send one request whose head is ``lines`` (request line, Host, headers; no CRLFs).

    ``body``: bytes (replayable), or a factory of an async iterator of pieces (streamed, sent
    with ``body_length`` as its Content-Length when given, chunked otherwise); its framing
    header is added here. A streamed body goes on a new connection, because it could not
    be sent again if an idle one turned out to be closed. ``deadline`` (the loop's clock)
    bounds everything up to the answer's head: TimeoutError after it.
    """
    lines = list(lines)
    if isinstance(body, bytes):
        lines.append(b"Content-Length: %d" % len(body))
    elif body is not None:
        lines.append(b"Content-Length: %d" % body_length if body_length is not None
                     else b"Transfer-Encoding: chunked")
    elif method in _BODY_METHODS:
        lines.append(b"Content-Length: 0")
    lines.append(b"\r\n")
    raw = b"\r\n".join(lines)
    if isinstance(body, bytes) and len(body) <= 65536:
        raw, body = raw + body, None
    loop = asyncio.get_running_loop()
    replayable = not callable(body)
    for attempt in (0, 1):
        fresh = not replayable or attempt > 0
        conn = pool.idle() if not fresh else None
        if conn is None:
            async with asyncio.timeout_at(deadline):
                conn = await pool.acquire(fresh=fresh)
        try:
            try:  # the usual small head leaves in one non-blocking send, no wait
                sent = conn.sock.send(raw)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent < len(raw) or body is not None:
                async with asyncio.timeout_at(deadline):
                    await loop.sock_sendall(conn.sock, raw[sent:])
                    if isinstance(body, bytes):
                        await loop.sock_sendall(conn.sock, body)
                    elif body is not None:
                        await _send_streamed(conn, body(), chunked=body_length is None)
            head = await read_head(conn, deadline)
        except TimeoutError:
            conn.close()
            raise
        except (Truncated, OSError) as exc:
            conn.close()
            if conn.waited and replayable and method in IDEMPOTENT and not conn.buffer:
                continue  # an idle connection the upstream had just closed: once more, fresh
            if isinstance(exc, UpstreamError):
                raise
            raise Truncated(type(exc).__name__) from exc
        except BaseException:
            conn.close()
            raise
        return Exchange(pool, conn, head, Body(conn, head, method))
    raise AssertionError("unreachable")


async def _send_streamed(conn: Connection, pieces: AsyncIterator[bytes], *, chunked: bool) -> None:
    loop = asyncio.get_running_loop()
    async for piece in pieces:
        if not piece:
            continue
        if chunked:
            await loop.sock_sendall(conn.sock, b"%x\r\n%b\r\n" % (len(piece), piece))
        else:
            await loop.sock_sendall(conn.sock, piece)
    if chunked:
        await loop.sock_sendall(conn.sock, b"0\r\n\r\n")


async def relay_body(exchange: Exchange, first: Callable[[bytes], Awaitable[None]],
                     write: Callable[[bytes], Awaitable[None]]) -> None:
    """Hand the body to ``write`` piece by piece; ``first`` gets what came with the head."""
    body = exchange.body
    await first(body.buffered())
    while not body.done:
        data = await body.read()
        if data:
            await write(data)


# ---------------------------------------------------------------- zero-copy body


# Splicing pays for a pipe and two extra syscalls per stream: only worth it for big bodies.
SPLICE_MIN = 1 << 20
_PIPE_SIZE = 1 << 20
# Bytes moved between two returns to the event loop.
_YIELD_EVERY = 4 << 20
# fcntl.F_SETPIPE_SZ / F_GETPIPE_SZ (Linux); the constants are not in every Python's fcntl.
_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032
CAN_SPLICE = hasattr(os, "splice") and sys.platform.startswith("linux")


class CallerGone(ConnectionError):
    """The caller's socket refused the bytes (it hung up)."""


async def splice_body(body: Body, dst: socket.socket) -> None:
    """Move the rest of a Content-Length body from the upstream socket into ``dst`` in the kernel.

    The bytes go socket -> pipe -> socket with ``os.splice``, so they are never copied into
    Python (two copies per byte saved, and no Python work per piece). ``dst`` must be a
    plain non-blocking TCP socket with nothing buffered in front of it. Its readiness is
    watched through a duplicate descriptor, because the caller's transport owns ``dst``'s
    own number in the event loop. Raises Truncated when the upstream ends early and
    CallerGone when the caller hangs up.
    """
    loop = asyncio.get_running_loop()
    src = body.conn.sock.fileno()
    watch = os.dup(dst.fileno())
    pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
    try:
        capacity = fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
        capacity = fcntl.fcntl(pipe_w, _F_GETPIPE_SZ)
    in_pipe = 0
    since_yield = 0
    try:
        while body.length or in_pipe:
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)  # a fast pair of sockets must not starve other requests
            moved = False
            if body.length and in_pipe < capacity:
                try:
                    n = os.splice(src, pipe_w, min(body.length, capacity - in_pipe), flags=flags)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise Truncated(type(exc).__name__) from exc
                else:
                    if n == 0:
                        raise Truncated("connection closed inside the body")
                    body.length -= n
                    in_pipe += n
                    since_yield += n
                    moved = True
            if in_pipe:
                try:
                    m = os.splice(pipe_r, dst.fileno(), in_pipe, flags=flags)
                except BlockingIOError:
                    pass
                except OSError as exc:
                    raise CallerGone(type(exc).__name__) from exc
                else:
                    in_pipe -= m
                    moved = moved or m > 0
            if not moved:
                # Nothing moved: with bytes in the pipe only the caller can unblock us (the
                # pipe may be full in slots before it is in bytes); with none, only the upstream.
                if in_pipe:
                    await _ready(loop, None, watch)
                else:
                    await _ready(loop, src, None)
    finally:
        body.done = body.length == 0 and in_pipe == 0
        os.close(pipe_r)
        os.close(pipe_w)
        os.close(watch)


async def _ready(loop: asyncio.AbstractEventLoop, readable: int | None,
                 writable: int | None) -> None:
    """Until ``readable`` can be read or ``writable`` written (whichever comes first)."""
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    if readable is not None:
        loop.add_reader(readable, wake)
    if writable is not None:
        loop.add_writer(writable, wake)
    try:
        await ready
    finally:
        if readable is not None:
            loop.remove_reader(readable)
        if writable is not None:
            loop.remove_writer(writable)
