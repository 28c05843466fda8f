"""Pass-through to the upstream music server: everything musegate does not answer itself.

Clients point at musegate instead of their server, so every request that no
other route handles must reach the upstream *unchanged* and come back
unchanged: method, path (below the upstream's own sub-path), query, body and
headers in; status, headers and body out. Only hop-by-hop headers (RFC 9110
§7.6.1) are dropped, because they describe one TCP hop, not the message.

Nothing is buffered, decompressed or re-encoded: bodies are relayed chunk by
chunk in both directions with backpressure (``resp.write`` waits for the
client), so a 200 MB ``stream`` costs musegate a few socket buffers of memory
and a gzip answer reaches the client byte-identical, ``Content-Length`` and
``Content-Encoding`` included. Range/If-Range/206/416, HEAD, Location and
ETag need no special handling for the same reason: the upstream implements
them and musegate does not touch them. Streams have no read timeout (a paused
player or Navidrome's SSE ``/api/events`` may sit idle for hours); websockets
are relayed message by message.

To a plain ``http://`` upstream the exchange goes through gateway.upstream_http, a
small HTTP/1.1 client on raw sockets (aiohttp's ClientSession cost about 0.5 ms
of CPU per relayed request); a big Content-Length body (a ``stream``) is moved
from the upstream's socket to the caller's with ``os.splice`` on Linux, so its
bytes never pass through Python. TLS upstreams and websockets use aiohttp's client.

When the upstream cannot be reached the caller gets a 502 — for a Subsonic
``/rest/`` path a Subsonic error body in the caller's format, so a client
shows "server unreachable" rather than a parse error — and musegate keeps
running; the next request tries again. When it accepts the connection but
sends no status line and headers within ``upstream_timeout`` the caller gets
a 504 the same way (a wedged server must not hold every caller forever);
once the headers came, the body has no timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway import forwarding, subsonic_format, upstream_http

log = logging.getLogger(__name__)

# The shared upstream session (one connection pool for the app's lifetime).
SESSION = web.AppKey("proxy_session", aiohttp.ClientSession)
# Seconds to wait for the upstream's status line and headers (``upstream_timeout``).
HEADERS_TIMEOUT = web.AppKey("proxy_headers_timeout", float)
# The lean pass-through client's connections to a plain-http upstream (gateway.upstream_http),
# with the upstream base URL and Host header it serves.
POOL = web.AppKey("proxy_pool", object)

# RFC 9110 §7.6.1 hop-by-hop headers, plus the de-facto Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
})
# Request headers the client library must set for the new hop itself: Host names the
# upstream (the caller's goes in X-Forwarded-Host); Expect was already answered by musegate.
# X-Forwarded-Prefix describes musegate's public prefix, not the upstream's own sub-path.
_REQUEST_DROP = frozenset({"host", "expect", "x-forwarded-prefix"})
# The websocket handshake headers belong to each hop's own handshake.
_WS_DROP = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
})
# aiohttp adds these to requests when absent; a pass-through must not invent them
# (an invented Accept-Encoding would make the upstream compress what the caller did not ask for).
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# The drop sets of the common cases, built once instead of per request.
_DROP_SETS = {extra: HOP_BY_HOP | extra for extra in (
    frozenset(), _REQUEST_DROP, _REQUEST_DROP | _WS_DROP)}
# How much one read from the upstream socket may bring (asyncio's default is 256 KiB):
# fewer, larger reads mean fewer loop iterations and writes per MB of a stream. Memory
# stays bounded by the client's read buffer (read_bufsize) plus one read.
UPSTREAM_READ_SIZE = 1 << 20

# Connecting may fail fast (a dead upstream should give a 502 quickly); reading may not
# (a paused stream or an idle SSE connection is normal). Defaults of the
# ``upstream_connect_timeout`` and ``upstream_timeout`` settings.
CONNECT_TIMEOUT = 10.0
DEFAULT_HEADERS_TIMEOUT = 30.0
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT,
                                         sock_connect=CONNECT_TIMEOUT, sock_read=None)


def new_session(timeout: aiohttp.ClientTimeout = UPSTREAM_TIMEOUT) -> aiohttp.ClientSession:
    """The upstream client: no decompression, no cookie jar, no connection cap, no read timeout.

    The cookie jar is a dummy because the session is shared by every caller: a cookie
    one user's login set must never be replayed for another. Cookies still pass through
    as ordinary headers in both directions.
    """
    return aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=timeout,
        skip_auto_headers=_NO_AUTO_HEADERS,
        # Bigger reads mean fewer, larger writes on a big stream; iter_any still hands
        # over whatever has arrived at once, so small SSE events are not held back.
        read_bufsize=1 << 20,
    )


def add_proxy(app: web.Application, upstream_url: str, *, exclude_prefix: str,
              connect_timeout: float = CONNECT_TIMEOUT,
              headers_timeout: float = DEFAULT_HEADERS_TIMEOUT) -> None:
    """Forward every request no other route answers to ``upstream_url``.

    The catch-all is indexed under "/" by aiohttp's router, which tries longer path
    prefixes first, so musegate's own routes and the intercepted Subsonic endpoints
    always win whatever the registration order; registering it last keeps that true
    for same-prefix routes too. Paths under ``exclude_prefix`` (musegate's own API
    namespace) are never forwarded: an unknown one is musegate's 404, not the upstream's.
    """
    base = _upstream_base(upstream_url)
    prefix = exclude_prefix.rstrip("/")
    app[HEADERS_TIMEOUT] = headers_timeout
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout,
                                    sock_connect=connect_timeout, sock_read=None)

    lean = _lean_target(base)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        session = new_session(timeout)
        app[SESSION] = session
        pool = None
        if lean is not None:
            host, port, host_header = lean
            pool = upstream_http.UpstreamPool(host, port, connect_timeout=connect_timeout)
            app[POOL] = _Lean(base, pool, host_header)
        try:
            yield
        finally:
            if pool is not None:
                await pool.close()
            await session.close()

    async def handler(request: web.Request) -> web.StreamResponse:
        path = request.path
        if prefix and (path == prefix or path.startswith(prefix + "/")):
            raise web.HTTPNotFound()
        return await forward(request, base)

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{proxy_tail:.*}", handler, name="upstream-proxy")


def _upstream_base(upstream_url: str) -> str:
    url = URL(upstream_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("upstream_url must be an http(s):// URL")
    return upstream_url.split("?", 1)[0].split("#", 1)[0].rstrip("/")


class _Lean:
    """The lean client's pool for one upstream base URL (plain http, no userinfo)."""

    __slots__ = ("base", "pool", "host_header", "path")

    def __init__(self, base: str, pool: upstream_http.UpstreamPool, host_header: str) -> None:
        self.base = base
        self.pool = pool
        self.host_header = host_header
        self.path = URL(base).raw_path.rstrip("/")


def _lean_target(base: str) -> tuple[str, int, str] | None:
    """(host, port, Host header) when the lean client can serve ``base``, else None.

    TLS upstreams and URLs with credentials in them stay on aiohttp's client.
    """
    url = URL(base)
    if url.scheme != "http" or url.user is not None or url.password is not None:
        return None
    host = url.raw_host or ""
    port = url.port or 80
    shown = f"[{host}]" if ":" in host else host
    return host, port, shown if url.explicit_port is None or port == 80 else f"{shown}:{port}"


def target_url(request: web.Request, upstream_url: str) -> URL:
    """The upstream's sub-path + the caller's raw path and query, not re-encoded.

    ``raw_path`` keeps the caller's exact percent-encoding (``%2F``, ``+``, repeated
    keys, key order), which a decode/re-encode round trip would not.
    """
    return URL(_upstream_base(upstream_url) + request.raw_path, encoded=True)


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Header names listed in Connection are hop-by-hop too (RFC 9110 §7.6.1)."""
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()):
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str],
                extra_drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    # Without a Connection header (the usual keep-alive request) the drop set is a constant.
    drop = (_DROP_SETS.get(extra_drop) if "Connection" not in headers else None)
    if drop is None:
        drop = HOP_BY_HOP | _connection_tokens(headers) | extra_drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def request_headers(request: web.Request, *, websocket: bool = False) -> CIMultiDict[str]:
    """The caller's end-to-end headers plus X-Forwarded-For/Proto/Host.

    X-Forwarded-For is appended to (the standard chain). Proto and Host are kept when
    a trusted proxy set them — musegate behind a TLS-terminating proxy must tell the
    upstream "https" and the public host, not its own loopback hop — and set from what
    musegate saw otherwise. (From an untrusted caller gateway.forwarding has already
    removed them, so they can never be forged through musegate.)
    """
    headers = _end_to_end(request.headers, _REQUEST_DROP | _WS_DROP if websocket else _REQUEST_DROP)
    peer = forwarding.peer(request)
    chain = ", ".join(v for v in request.headers.getall("X-Forwarded-For", ()) if v)
    headers.popall("X-Forwarded-For", None)
    headers["X-Forwarded-For"] = f"{chain}, {peer}" if chain and peer else (chain or peer)
    if "X-Forwarded-Proto" not in headers:
        headers["X-Forwarded-Proto"] = request.scheme
    if "X-Forwarded-Host" not in headers and request.host:
        headers["X-Forwarded-Host"] = request.host
    return headers


def _redacted(request: web.Request) -> str:
    """Method and path for logs: query strings carry Subsonic passwords, tokens and salts."""
    return f"{request.method} {request.path}"


async def forward(
    request: web.Request, upstream_url: str, body: bytes | None = None
) -> web.StreamResponse:
    """Relay ``request`` to ``upstream_url`` and stream the answer back unchanged.

    ``body`` is for callers that already consumed the request body (an intercepted
    Subsonic POST form that falls back to the upstream): those bytes are sent instead
    of the (now empty) request stream. Uses the app's shared session when ``add_proxy``
    installed one, otherwise a session for this one exchange.
    """
    lean = request.app.get(POOL)
    if (isinstance(lean, _Lean) and _upstream_base(upstream_url) == lean.base
            and not _is_websocket(request)):
        return await _forward_lean(request, lean, body)
    session = request.app.get(SESSION)
    if session is not None:
        return await _forward(request, session, upstream_url, body)
    async with new_session() as own:
        return await _forward(request, own, upstream_url, body)


def _is_websocket(request: web.Request) -> bool:
    return (request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in _connection_tokens(request.headers))


async def _forward(request: web.Request, session: aiohttp.ClientSession, upstream_url: str,
                   body: bytes | None) -> web.StreamResponse:
    url = target_url(request, upstream_url)
    if _is_websocket(request):
        return await _relay_websocket(request, session, url)

    headers = request_headers(request)
    data: Any = None
    if body is not None:
        headers.popall("Content-Length", None)  # aiohttp sets it from the bytes
        data = body
    elif request.body_exists:
        data = request.content  # streamed; Content-Length kept, or chunked when the caller chunked

    try:
        async with asyncio.timeout(request.app.get(HEADERS_TIMEOUT, DEFAULT_HEADERS_TIMEOUT)):
            upstream = await session.request(
                request.method, url, headers=headers, data=data,
                allow_redirects=False, auto_decompress=False,
            )
    except TimeoutError:
        log.warning("upstream did not answer in time for %s", _redacted(request))
        return upstream_error(request, "the music server behind musegate did not answer in time",
                              status=504)
    except (aiohttp.ClientError, OSError) as exc:
        log.warning("upstream unreachable for %s: %s", _redacted(request), type(exc).__name__)
        return upstream_error(request, "the music server behind musegate is unreachable")

    try:
        return await _relay_response(request, upstream, upstream_url)
    finally:
        if upstream.content.is_eof():
            upstream.release()  # fully read: the connection goes back to the pool
        else:
            upstream.close()  # abandoned mid-body: the connection cannot be reused


# Request bodies up to this size are read before sending, so that the request can be sent
# again if an idle connection turns out to be closed; larger ones are streamed.
_REPLAYABLE_BODY = 65536


async def _forward_lean(request: web.Request, lean: _Lean,
                        body: bytes | None) -> web.StreamResponse:
    """``_forward`` over gateway.upstream_http: same headers in and out, same errors."""
    lines = _lean_request_lines(request, lean)
    data: upstream_http.BodySource = body
    length: int | None = None
    if body is None and request.body_exists:
        length = request.content_length
        if length is not None and length <= _REPLAYABLE_BODY:
            data = await request.read()
        else:
            content = request.content
            data = content.iter_any  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    try:
        failure = _fast_failure(request)
        if failure is not None:
            raise failure  # the fast path already asked the upstream (gateway.fast_relay)
        exchange = await upstream_http.send(
            lean.pool, request.method, lines, data, length,
            loop.time() + request.app.get(HEADERS_TIMEOUT, DEFAULT_HEADERS_TIMEOUT))
    except TimeoutError:
        log.warning("upstream did not answer in time for %s", _redacted(request))
        return upstream_error(request, "the music server behind musegate did not answer in time",
                              status=504)
    except upstream_http.ConnectFailed as exc:
        log.warning("upstream unreachable for %s: %s", _redacted(request), exc)
        if isinstance(exc.__cause__, TimeoutError):
            return upstream_error(request, "the music server behind musegate did not answer "
                                           "in time", status=504)
        return upstream_error(request, "the music server behind musegate is unreachable")
    except (upstream_http.UpstreamError, OSError) as exc:
        log.warning("upstream unreachable for %s: %s", _redacted(request), type(exc).__name__)
        return upstream_error(request, "the music server behind musegate is unreachable")

    head = exchange.head
    answer = exchange.body
    resp = _RelayResponse(status=head.status, reason=head.reason,
                          headers=_lean_response_headers(request, head, lean.base))
    try:
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp  # the head goes out with aiohttp's write_eof
        # What arrived with the upstream's head goes out with ours, in one write (or the
        # head alone, now, when the body has not started yet).
        await resp.write(answer.buffered())
        dst = _spliceable(request, answer)
        if dst is not None:
            before = answer.length or 0
            try:
                await upstream_http.splice_body(answer, dst)
            finally:
                _count_sent(resp, before - (answer.length or 0))
        while not answer.done:
            data_piece = await answer.read()
            if data_piece:
                await resp.write(data_piece)
    except ConnectionError:
        return resp  # the caller went away; finish() below hangs up on the upstream
    except upstream_http.UpstreamError as exc:
        log.warning("upstream failed mid-response for %s: %s", _redacted(request), exc)
        if request.transport is not None:
            request.transport.close()
        return resp
    finally:
        exchange.finish()
    return resp


def _fast_failure(request: web.Request) -> BaseException | None:
    """The upstream failure of this request's attempt on gateway.fast_relay's path, once.

    That path hands a request it could not relay to aiohttp's with the failure noted on
    the connection, so that the error is answered here without asking the upstream again.
    """
    protocol = request.protocol
    failure = getattr(protocol, "_fast_failure", None)
    if failure is not None:
        protocol._fast_failure = None  # type: ignore[union-attr]
    return failure


# Request headers the lean path never relays, lower-cased: hop-by-hop, the ones the new hop
# sets itself, the body framing (upstream_http frames the body) and X-Forwarded-For, which is
# rebuilt below with the caller appended.
_LEAN_DROP = HOP_BY_HOP | _REQUEST_DROP | {"content-length", "x-forwarded-for"}


def _lean_request_lines(request: web.Request, lean: _Lean) -> list[bytes]:
    """The upstream request head as lines of bytes, straight from the caller's raw headers.

    The same headers as :func:`request_headers` (end-to-end ones in the caller's order and
    bytes, then X-Forwarded-For/Proto/Host), without building a CIMultiDict twice per request.
    """
    target = lean.path + request.raw_path
    if "\r" in target or "\n" in target:
        raise upstream_http.UpstreamError("header with a line break")
    lines = [f"{request.method} {target} HTTP/1.1".encode("utf-8", "surrogateescape"),
             lean.host_header.encode("ascii").join((b"Host: ", b""))]
    raw = request.raw_headers
    drop: frozenset[str] | set[str] = _LEAN_DROP
    chain: list[str] = []
    proto = host = False
    for name, value in raw:
        lower = name.decode("latin-1").lower()
        if lower == "connection":
            drop = drop | {t.strip().lower() for t in value.decode("latin-1").split(",")
                           if t.strip()}
    for name, value in raw:
        lower = name.decode("latin-1").lower()
        if lower in drop:
            if lower == "x-forwarded-for" and value:
                chain.append(value.decode("utf-8", "surrogateescape"))
            continue
        if b"\r" in value or b"\n" in value:
            raise upstream_http.UpstreamError("header with a line break")
        if lower == "x-forwarded-proto":
            proto = True
        elif lower == "x-forwarded-host":
            host = True
        lines.append(b"%s: %s" % (name, value))
    peer = forwarding.peer(request)
    joined = ", ".join(chain)
    xff = f"{joined}, {peer}" if joined and peer else (joined or peer)
    lines.append(b"X-Forwarded-For: " + xff.encode("utf-8", "surrogateescape"))
    if not proto:
        lines.append(b"X-Forwarded-Proto: " + request.scheme.encode("ascii"))
    if not host and request.host:
        lines.append(b"X-Forwarded-Host: " + request.host.encode("utf-8", "surrogateescape"))
    return lines


def _spliceable(request: web.Request, answer: upstream_http.Body) -> Any:
    """The caller's socket when the rest of this body can go to it in the kernel, else None.

    Only a big Content-Length body, to a plain (not TLS) transport that has sent
    everything it was given (the head), so nothing of aiohttp's overtakes the spliced bytes.
    """
    if (not upstream_http.CAN_SPLICE or answer.length is None
            or answer.length < upstream_http.SPLICE_MIN or answer.conn.buffer):
        return None
    transport = request.transport
    if (transport is None or transport.is_closing()
            or transport.get_extra_info("sslcontext") is not None
            or transport.get_write_buffer_size()):
        return None
    return transport.get_extra_info("socket")


def _count_sent(resp: web.StreamResponse, sent: int) -> None:
    """Tell aiohttp's writer about bytes that went around it (for its length and the access log)."""
    writer = getattr(resp, "_payload_writer", None)
    if writer is not None and sent:
        writer.output_size += sent
        if writer.length is not None:
            writer.length = max(0, writer.length - sent)


def public_location(value: str, upstream_url: str, request: web.Request) -> str:
    """A ``Location`` the upstream sent, as the caller must follow it (nginx's proxy_redirect).

    The upstream knows its own URL, not musegate's: an absolute URL to the upstream, or a
    path under its own sub-path, is turned into the same place below musegate's public
    prefix. Anything else (another site, a relative reference) is left alone.
    """
    base = _upstream_base(upstream_url)
    own_path = URL(base).raw_path.rstrip("/")
    public = forwarding.public_prefix(request)
    if value.startswith(base + "/") or value == base:
        rest = value[len(base):]
        return forwarding.public_origin(request) + public + (rest or "/")
    if value.startswith("/") and not value.startswith("//"):
        if not own_path:
            return public + value if public else value
        if value == own_path or value.startswith((own_path + "/", own_path + "?")):
            return public + (value[len(own_path):] or "/")
    return value


def public_cookie(value: str, upstream_url: str, request: web.Request) -> str:
    """A ``Set-Cookie`` whose ``Path`` names the upstream's sub-path, moved to musegate's prefix."""
    own_path = URL(_upstream_base(upstream_url)).raw_path.rstrip("/")
    public = forwarding.public_prefix(request)
    if own_path == public:
        return value
    parts = value.split(";")
    for i, part in enumerate(parts[1:], 1):  # parts[0] is the cookie itself
        name, _, path = part.strip().partition("=")
        under = not own_path or path == own_path or path.startswith(own_path + "/")
        if name.lower() == "path" and path.startswith("/") and under:
            parts[i] = f" Path={public + path[len(own_path):] or '/'}"
    return ";".join(parts)


def _response_headers(request: web.Request, upstream: aiohttp.ClientResponse,
                      upstream_url: str) -> CIMultiDict[str]:
    return _public_headers(request, upstream.headers, upstream_url)


def _public_headers(request: web.Request, upstream: CIMultiDictProxy[str] | CIMultiDict[str],
                    upstream_url: str) -> CIMultiDict[str]:
    """The upstream's end-to-end answer headers, Location and cookie paths made public."""
    headers = _end_to_end(upstream)
    if "Location" in headers:
        headers["Location"] = public_location(headers["Location"], upstream_url, request)
    if "Set-Cookie" in headers:
        cookies = [public_cookie(c, upstream_url, request) for c in headers.getall("Set-Cookie")]
        headers.popall("Set-Cookie")
        for cookie in cookies:
            headers.add("Set-Cookie", cookie)
    return headers


def _lean_response_headers(request: web.Request, head: upstream_http.ResponseHead,
                           upstream_url: str) -> list[tuple[str, str]]:
    """:func:`_public_headers` of a parsed head, in one pass when nothing needs rewriting.

    Only an answer with a Location or Set-Cookie (rare on a pass-through) takes the
    general path; the usual one is filtered without building a CIMultiDict first.
    """
    drop = HOP_BY_HOP | head.connection if head.connection else HOP_BY_HOP
    kept = []
    rewrite = False
    for name, value in head.headers:
        lower = name.lower()
        if lower in drop:
            continue
        if lower == "location" or lower == "set-cookie":
            rewrite = True
        kept.append((name, value))
    if rewrite:
        return list(_public_headers(request, CIMultiDict(kept), upstream_url).items())
    return kept


class _RelayResponse(web.StreamResponse):
    """A StreamResponse whose head is held back until the first body bytes are written.

    aiohttp's StreamResponse sends the head on ``prepare`` by itself, so a small answer
    (a ``ping``, a JSON page) went out as two packets and woke the caller twice; holding
    it lets head and body leave in one write. ``_relay_response`` flushes the head at once
    when no body bytes are there yet, so a stream that starts slowly (SSE) is not delayed.
    """

    _send_headers_immediately = False


def _read_in_large_pieces(upstream: aiohttp.ClientResponse) -> None:
    """Let the upstream socket be read ``UPSTREAM_READ_SIZE`` at a time (asyncio transports)."""
    conn = upstream.connection
    transport = conn.transport if conn is not None else None
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = max(transport.max_size, UPSTREAM_READ_SIZE)  # type: ignore[attr-defined]


async def _relay_response(request: web.Request, upstream: aiohttp.ClientResponse,
                          upstream_url: str) -> web.StreamResponse:
    resp = _RelayResponse(status=upstream.status, reason=upstream.reason,
                          headers=_response_headers(request, upstream, upstream_url))
    try:
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp  # the head goes out with aiohttp's write_eof
        _read_in_large_pieces(upstream)
        content = upstream.content
        # What arrived with the upstream's head goes out with ours, in one write (or the
        # head alone, now, when the body has not started yet).
        await resp.write(content.read_nowait())
        async for chunk in content.iter_any():
            await resp.write(chunk)
    except ConnectionError:
        # The caller went away (skipped track, closed player): stop reading the upstream;
        # closing its response in forward() tells an endless stream to stop too.
        return resp
    except (TimeoutError, aiohttp.ClientError) as exc:
        # The upstream died mid-body. The status line is gone, so the only honest signal
        # left is a truncated message: close the caller's connection without the final
        # chunk (or short of Content-Length).
        log.warning("upstream failed mid-response for %s: %s",
                    _redacted(request), type(exc).__name__)
        if request.transport is not None:
            request.transport.close()
        return resp
    return resp


async def _relay_websocket(request: web.Request, session: aiohttp.ClientSession,
                           url: URL) -> web.StreamResponse:
    """Handshake with the upstream first (its refusal is relayed), then pump both ways."""
    offered = [p.strip() for v in request.headers.getall("Sec-WebSocket-Protocol", ())
               for p in v.split(",") if p.strip()]
    try:
        upstream = await session.ws_connect(
            url, headers=request_headers(request, websocket=True), protocols=offered,
            autoclose=True, autoping=True, max_msg_size=0,
        )
    except aiohttp.WSServerHandshakeError as exc:
        return web.Response(status=exc.status, text=f"upstream refused the websocket: {exc.message}")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        log.warning("upstream unreachable for %s: %s", _redacted(request), type(exc).__name__)
        return upstream_error(request, "the music server behind musegate is unreachable")

    client = web.WebSocketResponse(
        protocols=[upstream.protocol] if upstream.protocol else (),
        autoclose=True, autoping=True, max_msg_size=0,
    )
    try:
        await client.prepare(request)
        to_upstream = asyncio.create_task(_pump(client, upstream))
        to_client = asyncio.create_task(_pump(upstream, client))
        await asyncio.wait({to_upstream, to_client}, return_when=asyncio.FIRST_COMPLETED)
        for task in (to_upstream, to_client):
            if not task.done():
                # The other side closed: let the pump see the close frame, then stop.
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=CONNECT_TIMEOUT)
    finally:
        await upstream.close()
        await client.close()
    return client


def _close_code(code: int | None) -> int:
    """A code that may be sent on the wire (1005/1006 are only ever reported locally)."""
    if code is None or code == 1005:
        return 1000
    if code == 1006:
        return 1011
    return code


async def _pump(src: Any, dst: Any) -> None:
    """Copy messages from one websocket to the other; mirror the close with its code."""
    async for msg in src:
        if msg.type == WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type == WSMsgType.ERROR:
            break
    if not dst.closed:
        await dst.close(code=_close_code(src.close_code))


_REASONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def upstream_error(request: web.Request, message: str, status: int = 502) -> web.StreamResponse:
    """502/503/504: a Subsonic error body in the caller's format for /rest/ paths, text otherwise."""
    if "/rest/" in request.path:
        return subsonic_format.error_response(request, subsonic_format.GENERIC, message,
                                              status=status)
    return web.Response(status=status, text=f"{status} {_REASONS.get(status, 'Bad Gateway')}: "
                                            f"{message}\n")
