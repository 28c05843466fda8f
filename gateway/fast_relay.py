"""The pass-through's fast path below aiohttp's web layer: plain GET/HEAD relayed from the socket.

A relayed ``ping`` through aiohttp's web layer costs a Request object, a task per
request woken through a future, the router, the middleware chain and a
StreamResponse, per request — on this project's 2-core VM about 0.34 ms of CPU
against nginx's 0.05 ms for the whole relay (docs/benchmarks.md, "Pass-through below
the web layer"); a Python relay driven by protocol callbacks alone needs 0.12 ms. This
module takes that shorter path for the requests that need nothing of the web layer,
and leaves every other request to aiohttp untouched.

:class:`FastRelayHandler` is aiohttp's connection protocol (``RequestHandler``) with
one change: when the bytes that arrive on an idle connection are exactly one complete
request head that qualifies, the request is relayed here — the upstream request leaves
from that callback, and the answer is written straight to the transport from the
upstream socket's reader callback. A request qualifies when

* its method is GET or HEAD, it has no body (no Content-Length other than 0, no
  Transfer-Encoding, no Expect, no Upgrade) and its head is plain (origin-form
  target, HTTP/1.0 or 1.1, no folded lines, within aiohttp's size limits);
* the app's router sends it to the pass-through (route ``upstream-proxy``, outside
  musegate's own prefix and API, no mount path) over the lean client (plain http), or to
  a handler that only looks at a request before relaying it (``OBSERVED``: Subsonic's
  ``ping``, whose caller's songs get warmed), whose observer then runs first;
* it carries none of the reverse-proxy headers gateway.forwarding judges (those take
  the full path, which decides whether to believe them);
* the server side is plain TCP (no TLS).

Anything else goes to aiohttp's own parser exactly as before: a clean head that does not
qualify (an intercepted call, the API) alone, and once bytes arrive that are not one
clean bodiless head (a body, a partial or pipelined head: aiohttp's parser may hold state
from then on) every later request on that connection too. So intercepted endpoints, the API,
websockets, request bodies and pipelined bursts keep their full handling. What the
full path adds to a relayed request is kept here: the same upstream request head
(gateway.proxy builds it), the same answer headers as aiohttp's response preparation
would give (Date, Server, Content-Type, Connection and framing rules), the access log
line through the server's access logger, the ``passthrough`` request counter and
upstream error count, the keep-alive timer, the connection guard's header deadline,
and the drain on shutdown. When the upstream cannot be asked (refused, timed out, a
broken head), the request is handed to the full path with the failure attached, and
gateway.proxy answers the usual 502/504 in the protocol's format without asking again.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import __version__ as aiohttp_version
from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion, HttpVersion10, HttpVersion11
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway import forwarding, metrics, proxy, upstream_http

log = logging.getLogger(__name__)

# aiohttp's default limits for a request head (web_protocol.RequestHandler).
_MAX_LINE = 8190
_MAX_HEADERS = 128
# Writes above this many buffered bytes wait for the caller to take them (aiohttp's LIMIT).
_DRAIN_ABOVE = 1 << 16
# Request headers whose presence sends a request down the full path.
_SLOW_HEADERS = frozenset({
    "content-length", "transfer-encoding", "expect", "upgrade",
    *(h.lower() for h in forwarding.PROXY_HEADERS),
})
_EMPTY_STATUS = frozenset((204, 304, *range(100, 200)))

# Request headers never relayed upstream (as gateway.proxy._lean_request_lines drops them).
_DROP = frozenset(proxy._LEAN_DROP)
# How many path decisions (pass-through or not) are remembered; cleared when full.
_DECISIONS = 4096

# A relayed request musegate only looks at: ``app[OBSERVED][handler](app, query, headers)``
# runs before the relay for a request routed to ``handler`` (Subsonic's ``ping``, which
# notes the caller so their songs are warmed), which is otherwise relayed exactly as the
# catch-all pass-through relays it. The observer must be cheap and must not raise.
Observer = Callable[[web.Application, Any, Any], None]
OBSERVED: web.AppKey[dict[Callable[..., Any], Observer]] = web.AppKey("fast_observed", dict)


def _run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the router's resolve) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("resolve suspended")


class _Target:
    """What the router, the proxy's helpers and the access logger read of a fast request."""

    __slots__ = ("method", "raw_path", "version", "raw_headers", "remote", "host",
                 "keep_alive", "_url", "_headers", "_state")

    scheme = "http"

    def __init__(self, method: str, raw_path: str, version: HttpVersion,
                 raw_headers: list[tuple[bytes, bytes]], host: str, keep_alive: bool) -> None:
        self.method = method
        self.raw_path = raw_path
        self.version = version
        self.raw_headers = raw_headers
        self.host = host
        self.keep_alive = keep_alive
        self.remote = ""
        self._url: URL | None = None
        self._headers: CIMultiDictProxy[str] | None = None
        self._state: dict[Any, Any] = {}

    @property
    def rel_url(self) -> URL:
        if self._url is None:
            self._url = URL(self.raw_path, encoded=True)
        return self._url

    @property
    def path(self) -> str:
        return self.rel_url.path

    @property
    def query_string(self) -> str:
        return self.rel_url.query_string

    @property
    def query(self) -> Any:
        return self.rel_url.query

    @property
    def path_qs(self) -> str:
        return str(self.rel_url)

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(
                (k.decode("utf-8", "surrogateescape"), v.decode("utf-8", "surrogateescape"))
                for k, v in self.raw_headers))
        return self._headers

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value


class _Sent:
    """What the access logger reads of the answer."""

    __slots__ = ("status", "body_length")

    def __init__(self, status: int) -> None:
        self.status = status
        self.body_length = 0


class _Head:
    """One plain bodiless request head, as :func:`_parse` found it."""

    __slots__ = ("method", "target", "path", "version", "raw_headers", "lines", "host",
                 "keep_alive", "tokens")

    def __init__(self, method: str, target: str, version: HttpVersion,
                 raw_headers: list[tuple[bytes, bytes]], lines: list[bytes], host: bytes,
                 keep_alive: bool, tokens: set[bytes]) -> None:
        self.method = method
        self.target = target
        self.path = target.partition("?")[0]
        self.version = version
        self.raw_headers = raw_headers
        self.lines = lines
        self.host = host
        self.keep_alive = keep_alive
        self.tokens = tokens


def _parse(data: bytes) -> _Head | None:
    """One plain bodiless request head (the whole of ``data``), or None.

    On the way it builds the header lines relayed upstream (the end-to-end ones, in the
    caller's order and bytes), which is what gateway.proxy._lean_request_lines would
    give for such a request (tests/test_fast_relay.py checks that).
    """
    if not data.endswith(b"\r\n\r\n") or data.count(b"\r\n\r\n") != 1:
        return None
    lines = data[:-4].split(b"\r\n")
    if len(lines) - 1 > _MAX_HEADERS:
        return None
    parts = lines[0].split(b" ")
    if len(parts) != 3 or len(lines[0]) > _MAX_LINE or b"\n" in lines[0] or b"\0" in lines[0]:
        return None
    method, target, proto = parts
    if method not in (b"GET", b"HEAD") or not target.startswith(b"/"):
        return None
    if proto == b"HTTP/1.1":
        version = HttpVersion11
    elif proto == b"HTTP/1.0":
        version = HttpVersion10
    else:
        return None
    headers: list[tuple[bytes, bytes]] = []
    relayed: list[bytes] = []
    connection = b""
    host = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if (not sep or not name or len(line) > _MAX_LINE or b" " in name or b"\t" in name
                or b"\0" in line or b"\r" in line or b"\n" in line or not name.isascii()):
            return None
        lower = name.lower().decode("ascii")
        value = value.strip(b" \t")
        if lower in _SLOW_HEADERS:
            if lower == "content-length" and value == b"0":
                headers.append((name, value))
                continue  # an explicit empty body: nothing to frame, not relayed (as before)
            return None
        headers.append((name, value))
        if lower == "connection":
            connection += b"," + value.lower()
        elif lower == "host":
            if host:
                return None  # two Host headers: aiohttp's parser judges that
            host = value
        if lower not in _DROP:
            relayed.append(name + b": " + value)
    tokens = {t.strip() for t in connection.split(b",")} - {b""}
    keep_alive = (b"close" not in tokens if version == HttpVersion11
                  else b"keep-alive" in tokens)
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        return None
    return _Head(method.decode("ascii"), text, version, headers, relayed, host, keep_alive,
                 tokens)


def upstream_lines(parsed: _Head, target: _Target, lean: Any) -> list[bytes]:
    """The upstream request head of a fast request: gateway.proxy._lean_request_lines's.

    The end-to-end header lines were collected by :func:`_parse`; none of the
    X-Forwarded-* headers is among them (such a request takes the full path), so the
    caller's address, ``http`` and its Host are added as they are.
    """
    if parsed.tokens - {b"keep-alive", b"close"}:
        # Connection names more hop-by-hop headers: the general builder drops them.
        return proxy._lean_request_lines(target, lean)  # type: ignore[arg-type]
    return [f"{parsed.method} {lean.path}{parsed.target} HTTP/1.1".encode("utf-8",
                                                                         "surrogateescape"),
            b"Host: " + lean.host_header.encode("ascii"), *parsed.lines,
            b"X-Forwarded-For: " + target.remote.encode("utf-8", "surrogateescape"),
            b"X-Forwarded-Proto: http", b"X-Forwarded-Host: " + parsed.host]


class FastRelay:
    """What the fast path needs of one app: its router, pool, prefix, metrics, timeout."""

    def __init__(self, app: web.Application) -> None:
        from gateway import keys
        from gateway.app import _is_api

        self.app = app
        config = app[keys.CONFIG]
        self.base = config.base_path
        self.prefix = self.base.rstrip("/")
        self.mounted = bool(config.mount_path)
        self._is_api = _is_api
        self._proxy = proxy
        self.metrics = app.get(metrics.METRICS)
        # (method, path) -> False (full path), True (relay) or the observer to run first
        self._decisions: dict[tuple[str, str], bool | Observer] = {}
        self.relayed = 0  # requests that took this path (tests and debugging read it)

    def lean(self) -> Any:
        lean = self.app.get(proxy.POOL)
        return lean if isinstance(lean, proxy._Lean) else None

    def qualifies(self, target: _Target, path: str) -> bool | Observer:
        """Whether the router sends this request to the pass-through (remembered by path).

        An observed route (``OBSERVED``) answers with its observer, which is truthy."""
        key = (target.method, path)
        known = self._decisions.get(key)
        if known is not None:
            return known
        decided = self._decide(target)
        if len(self._decisions) >= _DECISIONS:
            self._decisions.clear()
        self._decisions[key] = decided
        return decided

    def _decide(self, target: _Target) -> bool | Observer:
        try:
            path = target.path
        except ValueError:
            return False
        if target.rel_url.absolute:
            return False
        if self.mounted or (self.prefix and (path == self.prefix
                                             or path.startswith(self.prefix + "/"))):
            return False
        if self._is_api(target, self.base):  # type: ignore[arg-type]
            return False
        match = _run_sync(self.app.router.resolve(target))  # type: ignore[arg-type]
        route = getattr(match, "route", None)
        if route is None:
            return False
        if route.name == "upstream-proxy":
            return True
        observer = self.app.get(OBSERVED, {}).get(route.handler)
        return observer if observer is not None else False


class _Flight:
    """One fast request in flight: what it is, and where its upstream exchange stands."""

    __slots__ = ("target", "lean", "data", "start", "sent", "conn", "timer", "task", "lines",
                 "deadline")

    def __init__(self, target: _Target, lean: Any, data: bytes, start: float) -> None:
        self.target = target
        self.lean = lean
        self.data = data  # the request as it came, for a hand-over to the full path
        self.start = start
        self.sent = _Sent(502)
        self.conn: upstream_http.Connection | None = None  # while waiting in callbacks
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # once it continues as a coroutine
        self.lines: list[bytes] | None = None  # the head to send once a new connection is up
        self.deadline = 0.0


class FastRelayHandler(RequestHandler):
    """aiohttp's connection protocol, with qualifying pass-through requests relayed here.

    The usual exchange runs in callbacks, as nginx's does: the request head goes to a
    pooled upstream connection from ``data_received`` itself, a reader callback on that
    socket parses the answer's head and, when the whole answer is there (a ``ping``, a
    page of JSON), writes it to the caller at once — no task, no future, no extra turn
    of the loop. A new upstream connection, a body still arriving (a stream: spliced)
    or a chunked one continue in a task with gateway.upstream_http's coroutines.
    """

    _fast_relay: FastRelay | None = None  # set per server by install()
    _fast_off = False  # set once aiohttp's parser may hold state: the full path from then on
    _fast_flight: _Flight | None = None
    _fast_pending = b""
    _fast_paused = False
    _fast_failure: BaseException | None = None

    def data_received(self, data: bytes) -> None:
        if self._fast_flight is not None:
            self._fast_pending += data  # pipelined behind a fast request: after it
            if len(self._fast_pending) > _DRAIN_ABOVE and self.transport is not None:
                self.transport.pause_reading()
                self._fast_paused = True
            return
        if not self._fast_off:
            parsed = _parse(data)
            if parsed is None:
                # Not one clean bodiless head: aiohttp's parser may keep state from here
                # on, so this connection stays on the full path.
                self._fast_off = True
            elif self._fast_idle() and self._fast_start(data, parsed):
                return
        super().data_received(data)

    def _fast_idle(self) -> bool:
        return (self._fast_relay is not None and not self._force_close and not self._close
                and self._payload_parser is None and not self._upgraded
                and not self._messages and not self._request_in_progress
                and self._waiter is not None
                and not self._waiter.done() and self.transport is not None
                and self.transport.get_extra_info("sslcontext") is None)

    # ------------------------------------------------------------ start

    def _fast_start(self, data: bytes, parsed: _Head) -> bool:
        relay = self._fast_relay
        assert relay is not None
        lean = relay.lean()
        if lean is None or not parsed.host:
            return False
        try:
            host = parsed.host.decode("utf-8", "surrogateescape")
        except UnicodeDecodeError:  # pragma: no cover - surrogateescape never fails
            return False
        target = _Target(parsed.method, parsed.target, parsed.version, parsed.raw_headers,
                         host, parsed.keep_alive)
        decided = relay.qualifies(target, parsed.path)
        if not decided:
            return False
        if decided is not True:
            try:
                decided(relay.app, target.query, target.headers)
            except Exception:  # an observer never stops the relay
                log.exception("a pass-through observer failed")
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        remote = target.remote = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else ""
        state = target._state
        state[forwarding._PEER] = remote
        state[forwarding._PREFIX] = ""
        state[forwarding._DIRECT] = True
        manager = self._manager
        if manager is not None:
            manager.requests_count += 1
            arrived = getattr(manager, "head_arrived", None)
            if arrived is not None:
                arrived(self)
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        self._request_in_progress = True
        loop = self._loop
        flight = self._fast_flight = _Flight(target, lean, data, loop.time())
        relay.relayed += 1
        lines = upstream_lines(parsed, target, lean)
        deadline = loop.time() + relay.app.get(proxy.HEADERS_TIMEOUT,
                                               proxy.DEFAULT_HEADERS_TIMEOUT)
        conn = lean.pool.idle()
        if conn is not None:
            lines.append(b"\r\n")
            raw = b"\r\n".join(lines)
            try:
                sent = conn.sock.send(raw)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = -1  # the idle connection died: the coroutine path asks on a fresh one
            if sent == len(raw):
                flight.conn = conn
                loop.add_reader(conn.sock.fileno(), self._fast_readable)
                flight.timer = loop.call_at(deadline, self._fast_expired)
                return True
            if sent == 0:
                lean.pool.release(conn, reusable=True)  # untouched: back to the pool
            else:
                conn.close()
            lines.pop()
        elif self._fast_connect(flight, lines, deadline):
            return True
        flight.task = loop.create_task(self._fast_coro(flight, lines, deadline))
        return True

    def _fast_connect(self, flight: _Flight, lines: list[bytes], deadline: float) -> bool:
        """Open a new upstream connection in callbacks (an upstream that closes every one).

        Only to an address already resolved; any failure (refused, several addresses to
        try, a timeout) is left to the coroutine path, which tries again and reports it
        as the full path does.
        """
        pool = flight.lean.pool
        addresses = pool.resolved()
        if not addresses or len(addresses) != 1:
            return False
        family, address = addresses[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            error = sock.connect_ex(address)
        except OSError:
            sock.close()
            return False
        if error not in (0, errno.EINPROGRESS):
            sock.close()
            return False
        loop = self._loop
        flight.conn = upstream_http.Connection(sock)
        flight.lines = lines
        flight.deadline = deadline
        loop.add_writer(sock.fileno(), self._fast_connected)
        flight.timer = loop.call_at(min(deadline, loop.time() + pool.connect_timeout),
                                    self._fast_connect_expired)
        return True

    def _fast_connected(self) -> None:
        flight = self._fast_flight
        if flight is None or flight.conn is None or flight.lines is None:
            return
        conn, lines = flight.conn, flight.lines
        flight.conn = flight.lines = None
        loop = self._loop
        loop.remove_writer(conn.sock.fileno())
        if flight.timer is not None:
            flight.timer.cancel()
            flight.timer = None
        raw = b"\r\n".join([*lines, b"\r\n"])
        try:
            if conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                sent = conn.sock.send(raw)
            else:
                sent = -1
        except OSError:
            sent = -1
        if sent != len(raw):
            conn.close()  # not connected, or a fresh socket that took only part of a head
            flight.task = loop.create_task(self._fast_coro(flight, lines, flight.deadline))
            return
        flight.conn = conn
        loop.add_reader(conn.sock.fileno(), self._fast_readable)
        flight.timer = loop.call_at(flight.deadline, self._fast_expired)

    def _fast_connect_expired(self) -> None:
        flight = self._fast_flight
        if flight is None or flight.conn is None or flight.lines is None:
            return
        conn = flight.conn
        flight.conn = None
        self._loop.remove_writer(conn.sock.fileno())
        flight.timer = None
        conn.close()
        # As upstream_http reports a connect that timed out: the full path answers 504.
        failure = upstream_http.ConnectFailed("connect timed out")
        failure.__cause__ = TimeoutError()
        self._fast_hand_over(flight, failure)

    # ------------------------------------------------------------ callbacks

    def _fast_unwatch(self, flight: _Flight) -> upstream_http.Connection:
        conn = flight.conn
        assert conn is not None
        flight.conn = None
        self._loop.remove_reader(conn.sock.fileno())
        if flight.timer is not None:
            flight.timer.cancel()
            flight.timer = None
        return conn

    def _fast_expired(self) -> None:
        flight = self._fast_flight
        if flight is None or flight.conn is None:
            return
        self._fast_unwatch(flight).close()
        self._fast_hand_over(flight, TimeoutError())

    def _fast_readable(self) -> None:
        flight = self._fast_flight
        if flight is None or flight.conn is None:
            return
        try:
            self._fast_read(flight, flight.conn)
        except Exception:  # a bug here must not leave the connection hanging
            log.exception("fast pass-through failed for %s %s", flight.target.method,
                          flight.target.path)
            if flight.conn is not None:
                self._fast_unwatch(flight).close()
            self._keepalive = False
            self._fast_done(flight)

    def _fast_read(self, flight: _Flight, conn: upstream_http.Connection) -> None:
        try:
            data = conn.sock.recv(upstream_http.READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._fast_unwatch(flight).close()
            if not conn.buffer and conn.waited:
                # An idle connection the upstream had just closed: once more on a fresh
                # one (an idempotent request whose answer never started), as the full path.
                flight.task = self._loop.create_task(self._fast_coro(
                    flight, self._fast_relay._proxy._lean_request_lines(  # type: ignore[union-attr]
                        flight.target, flight.lean), None))
                return
            self._fast_hand_over(flight, upstream_http.Truncated(
                "connection closed before the response head"))
            return
        conn.buffer += data
        try:
            head = upstream_http.head_from_buffer(conn)
        except upstream_http.UpstreamError as exc:
            self._fast_unwatch(flight).close()
            self._fast_hand_over(flight, exc)
            return
        if head is None:
            return  # the head is not complete yet
        self._fast_unwatch(flight)
        try:
            body = upstream_http.Body(conn, head, flight.target.method)
        except upstream_http.UpstreamError as exc:  # a broken Content-Length, say
            conn.close()
            self._fast_hand_over(flight, exc)
            return
        exchange = upstream_http.Exchange(flight.lean.pool, conn, head, body)
        if body.done or (body.length is not None and len(conn.buffer) >= body.length):
            try:
                self._keepalive = self._fast_write_all(flight, exchange)
            except (ConnectionError, upstream_http.UpstreamError):
                self._keepalive = False
            finally:
                exchange.finish()
            self._fast_done(flight)
            return
        flight.task = self._loop.create_task(self._fast_rest(flight, exchange))

    # ------------------------------------------------------------ coroutines

    async def _fast_coro(self, flight: _Flight, lines: list[bytes],
                         deadline: float | None) -> None:
        """The exchange with gateway.upstream_http's coroutines (a new connection, say)."""
        if deadline is None:
            relay = self._fast_relay
            assert relay is not None
            deadline = self._loop.time() + relay.app.get(relay._proxy.HEADERS_TIMEOUT,
                                                         relay._proxy.DEFAULT_HEADERS_TIMEOUT)
        try:
            exchange = await upstream_http.send(flight.lean.pool, flight.target.method, lines,
                                                None, None, deadline)
        except (TimeoutError, upstream_http.UpstreamError, OSError) as exc:
            self._fast_hand_over(flight, exc)
            return
        except BaseException:
            self._keepalive = False
            self._fast_done(flight)
            raise
        await self._fast_rest(flight, exchange)

    async def _fast_rest(self, flight: _Flight, exchange: upstream_http.Exchange) -> None:
        try:
            try:
                self._keepalive = await self._fast_answer(flight, exchange)
            finally:
                exchange.finish()
        except (ConnectionError, upstream_http.UpstreamError) as exc:
            # The caller went away, or the upstream broke mid-body after the head went out:
            # the only honest signal left is a cut connection.
            if isinstance(exc, upstream_http.UpstreamError):
                log.warning("upstream failed mid-response for %s %s: %s", flight.target.method,
                            flight.target.path, exc)
            self._keepalive = False
        except BaseException:
            self._keepalive = False
            raise
        finally:
            self._fast_done(flight)

    # ------------------------------------------------------------ the end of a request

    def _fast_hand_over(self, flight: _Flight, failure: BaseException) -> None:
        """Give the request (and anything pipelined behind it) to aiohttp's own parser.

        gateway.proxy answers it with ``failure`` (502/504 in the protocol's format),
        and logs and counts it, without asking the upstream again.
        """
        self._fast_flight = None
        self._request_in_progress = False
        self._fast_off = True
        self._fast_failure = failure
        pending, self._fast_pending = self._fast_pending, b""
        self._fast_resume()
        if self.transport is not None:
            super().data_received(flight.data + pending)

    def _fast_resume(self) -> None:
        if self._fast_paused:
            self._fast_paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    def _fast_done(self, flight: _Flight, *, answered: bool = True) -> None:
        """The request is over: count and log it (``answered``), then the next one."""
        if self._fast_flight is not flight:
            return
        relay = self._fast_relay
        self._fast_flight = None
        self._request_in_progress = False
        if self._handler_waiter is not None and not self._handler_waiter.done():
            self._handler_waiter.set_result(None)  # a shutdown waits for this request
        sent = flight.sent
        if not answered:
            return  # the caller hung up before any answer: nothing to count or log
        if relay is not None and relay.metrics is not None:
            relay.metrics.count_request(metrics.PASSTHROUGH, sent.status)
        if self.access_logger is not None and self._logging_enabled:
            with contextlib.suppress(Exception):
                self.log_access(flight.target, sent, flight.start)  # type: ignore[arg-type]
        transport = self.transport
        if transport is None:
            return
        if not self._keepalive or self._force_close or self._close:
            transport.close()
            return
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        pending, self._fast_pending = self._fast_pending, b""
        self._fast_resume()
        if pending:
            self.data_received(pending)

    # ------------------------------------------------------------ writing the answer

    def _fast_head(self, flight: _Flight, head: upstream_http.ResponseHead
                   ) -> tuple[bytes, int | None, bool, bool, bool]:
        """(head bytes, Content-Length, chunked, keep-alive, no body) as aiohttp would send.

        The answer's end-to-end headers (gateway.proxy._lean_response_headers), then what
        aiohttp's response preparation adds: Transfer-Encoding for a body of unknown
        length (or the close for HTTP/1.0), no Content-Length where a body is forbidden,
        a default Content-Type, Date, Server, and Connection.
        """
        target = flight.target
        kept = proxy._lean_response_headers(target, head, flight.lean.base)  # type: ignore[arg-type]
        status = head.status
        flight.sent.status = status
        version = target.version
        keep_alive = target.keep_alive
        empty = target.method == "HEAD" or status in _EMPTY_STATUS
        length: int | None = None
        has_type = has_date = has_server = has_connection = False
        out = [f"HTTP/{version[0]}.{version[1]} {status} {head.reason}"]
        for name, value in kept:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                # aiohttp refuses to send such a header (a 500 on the full path); here the
                # head is not sent at all and the connection is cut.
                raise upstream_http.UpstreamError("answer header with a line break")
            lower = name.lower()
            if lower == "content-length":
                if length is None:
                    try:
                        length = int(value)
                    except ValueError:
                        length = None
                if empty and status in _EMPTY_STATUS:
                    continue  # aiohttp removes it where a body is forbidden
            elif lower == "content-type":
                has_type = True
            elif lower == "date":
                has_date = True
            elif lower == "server":
                has_server = True
            elif lower == "connection":
                has_connection = True
            out.append(f"{name}: {value}")
        chunked = False
        if length is None and not empty:
            if version >= HttpVersion11:
                chunked = True
                out.append("Transfer-Encoding: chunked")
            else:
                keep_alive = False
        if not empty and length != 0 and not has_type:
            out.append("Content-Type: application/octet-stream")
        if not has_date:
            out.append("Date: " + rfc822_formatted_time())
        if not has_server:
            out.append("Server: " + SERVER_SOFTWARE)
        if not has_connection:
            if keep_alive:
                if version == HttpVersion10:
                    out.append("Connection: keep-alive")
            elif version == HttpVersion11:
                out.append("Connection: close")
        out.append("\r\n")
        return ("\r\n".join(out).encode("utf-8", "surrogateescape"), length, chunked,
                keep_alive, empty)

    def _fast_transport(self) -> asyncio.Transport:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the caller went away")
        return transport  # type: ignore[return-value]

    def _fast_write_all(self, flight: _Flight, exchange: upstream_http.Exchange) -> bool:
        """The whole answer is buffered: write it in one go; keep-alive?"""
        head_bytes, length, chunked, keep_alive, empty = self._fast_head(flight, exchange.head)
        transport = self._fast_transport()
        body = b"" if empty else exchange.body.buffered()
        if length is not None:
            body = body[:length]
        flight.sent.body_length = len(body)
        if chunked:
            transport.write(b"%b%x\r\n%b\r\n0\r\n\r\n" % (head_bytes, len(body), body)
                            if body else head_bytes + b"0\r\n\r\n")
        else:
            transport.write(head_bytes + body)
        if length is not None and len(body) < length:
            return False  # short of its Content-Length: cut, as aiohttp would
        return keep_alive

    async def _fast_answer(self, flight: _Flight, exchange: upstream_http.Exchange) -> bool:
        """Write an answer whose body is still arriving; keep-alive?"""
        head_bytes, length, chunked, keep_alive, empty = self._fast_head(flight, exchange.head)
        answer = exchange.body
        sent = flight.sent
        transport = self._fast_transport()
        if empty:
            transport.write(head_bytes)
            return keep_alive
        left = length  # what the caller may still be sent (None: unbounded)

        def clip(data: bytes) -> bytes:
            nonlocal left
            if left is not None:
                data = data[:left]
                left -= len(data)
            return data

        first = clip(answer.buffered())
        sent.body_length += len(first)
        if chunked and first:
            transport.write(b"%b%x\r\n%b\r\n" % (head_bytes, len(first), first))
        else:
            transport.write(head_bytes + first)
        if not answer.done and not chunked and left:
            dst = self._fast_spliceable(answer)
            if dst is not None:
                before = answer.length or 0
                try:
                    await upstream_http.splice_body(answer, dst)
                finally:
                    moved = before - (answer.length or 0)
                    sent.body_length += moved
                    left -= moved
        while not answer.done:
            piece = clip(await answer.read())
            if not piece:
                continue
            sent.body_length += len(piece)
            transport = self._fast_transport()
            transport.write(b"%x\r\n%b\r\n" % (len(piece), piece) if chunked else piece)
            if transport.get_write_buffer_size() > _DRAIN_ABOVE:
                await self._drain_helper()
        if chunked:
            self._fast_transport().write(b"0\r\n\r\n")
        if left:  # the upstream sent less than its Content-Length said: cut, as aiohttp would
            return False
        return keep_alive

    def _fast_spliceable(self, answer: upstream_http.Body) -> Any:
        transport = self.transport
        if (not upstream_http.CAN_SPLICE or answer.length is None
                or answer.length < upstream_http.SPLICE_MIN or answer.conn.buffer
                or transport is None or transport.is_closing()
                or transport.get_write_buffer_size()):
            return None
        return transport.get_extra_info("socket")

    def connection_lost(self, exc: BaseException | None) -> None:
        flight = self._fast_flight
        super().connection_lost(exc)
        if flight is None:
            return
        if flight.conn is not None:
            if flight.lines is not None:  # still connecting: the writer is watched
                self._loop.remove_writer(flight.conn.sock.fileno())
                if flight.timer is not None:
                    flight.timer.cancel()
                    flight.timer = None
                flight.conn.close()
                flight.conn = None
            else:
                self._fast_unwatch(flight).close()
            self._keepalive = False
            self._fast_done(flight, answered=False)
        elif flight.task is not None and not flight.task.done():
            flight.task.cancel()


class _FastServer(web.Server):
    """A ``web.Server`` whose connections are FastRelayHandlers."""

    _fast_relay: FastRelay

    def __call__(self) -> RequestHandler:
        handler = FastRelayHandler(self, loop=self._loop, **self._kwargs)
        handler._fast_relay = self._fast_relay
        return handler


# False: every request takes aiohttp's full path (the bench's variant switch).
ENABLED = True

# aiohttp internals this module reads or drives (RequestHandler's state; web.Server's
# ``_loop`` and ``_kwargs``, checked on the instance by install()). They are private: an aiohttp release that renames one turns the
# fast path off (every request then takes the full path) instead of breaking requests.
_HANDLER_STATE = ("_close", "_force_close", "_handler_waiter", "_keepalive",
                  "_keepalive_handle", "_keepalive_timeout", "_logging_enabled", "_loop",
                  "_manager", "_messages", "_next_keepalive_close_time", "_payload_parser",
                  "_request_in_progress", "_upgraded", "_waiter")
_HANDLER_METHODS = ("_process_keepalive", "_drain_helper", "data_received", "connection_lost")


def compatible() -> bool:
    """Whether the installed aiohttp still has every internal the fast path relies on."""
    slots = {name for cls in RequestHandler.__mro__ for name in getattr(cls, "__slots__", ())}
    return (all(name in slots for name in _HANDLER_STATE)
            and all(callable(getattr(RequestHandler, name, None)) for name in _HANDLER_METHODS))


def install(server: web.Server, app: web.Application) -> web.Server:
    """Make ``server`` (an AppRunner's, before it accepts) relay ``app``'s fast requests.

    Only musegate's main app at the root is served this way (not the metrics-only
    listener, not an app mounted below a path).
    """
    from gateway import keys

    config = app.get(keys.CONFIG)
    if (ENABLED and _COMPATIBLE and type(server) is web.Server and config is not None
            and hasattr(server, "_loop") and hasattr(server, "_kwargs")
            and not config.mount_path and config.upstream_url):
        server.__class__ = _FastServer
        server._fast_relay = FastRelay(app)  # type: ignore[attr-defined]
    return server


_COMPATIBLE = compatible()
if not _COMPATIBLE:  # pragma: no cover - depends on the installed aiohttp
    log.warning("aiohttp %s: the pass-through's fast path is off (its internals changed)",
                aiohttp_version)
