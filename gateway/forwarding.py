"""Who is calling, and under which public URL: reverse-proxy headers and the mount path.

A reverse proxy in front of musegate tells it the caller's address, scheme, host
and stripped prefix in ``X-Forwarded-*`` headers. Anyone can send those headers,
so they are believed only from the addresses in ``trusted_proxies``; from anyone
else they are removed before any handler sees the request. That matters twice:
the JSON API admits direct loopback callers, which a forged ``X-Forwarded-For``
must not turn into, and the pass-through relays these headers to the music
server, which may trust musegate's address for them.

``mount_path`` is the sub-path a proxy keeps when it forwards (``/music/rest/ping``
arrives as is). This middleware strips it once, so every handler — the API, the
Subsonic and Jellyfin handlers, the pass-through — works on the same path it
would see at the root, and the upstream never sees the prefix. What remains to
know about the public URL (for ``Location`` headers, cookie paths and links) is
kept on the request: :func:`public_prefix`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from musegate.config import Config, parse_networks

# Headers only a trusted proxy may set (RFC 7239 Forwarded and the de-facto X-Forwarded-*).
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                 "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Real-IP")

_PREFIX = web.RequestKey("public_prefix", str)
_PEER = web.RequestKey("peer", str)
_DIRECT = web.RequestKey("direct", bool)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # [v6]:port
        value = value[1:value.index("]")]
    elif value.count(":") == 1:  # v4:port
        value = value.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_trusted(value: str | None, trusted: Sequence[Network]) -> bool:
    addr = _address(value or "")
    return addr is not None and any(addr in net for net in trusted)


def is_loopback(value: str | None) -> bool:
    addr = _address(value or "")
    return addr is not None and addr.is_loopback


def client_address(chain: Sequence[str], peer: str, trusted: Sequence[Network]) -> str:
    """The first address, from the right, that is not one of our trusted proxies.

    Each proxy appends the address it saw, so only the right-most entries were written
    by proxies we trust; anything left of the first untrusted one may be forged.
    """
    hops = [h.strip() for v in chain for h in v.split(",") if h.strip()]
    current = peer
    while hops and is_trusted(current, trusted):
        current = hops.pop()
    return current


def _prefix_header(value: str) -> str:
    """A forwarded prefix as a clean path ('' for none, never a full URL or a trick)."""
    value = value.split(",", 1)[0].strip().strip("/")
    if not value or any(c in value for c in "?#\\ ") or "//" in value or ".." in value.split("/"):
        return ""
    return "/" + value


def _first(value: str | None) -> str:
    return (value or "").split(",", 1)[0].strip()


def _strip_mount(raw_path: str, mount: str) -> str | None:
    """``/music/rest/ping?u=a`` -> ``/rest/ping?u=a`` (None when outside the mount)."""
    if raw_path == mount or raw_path.startswith(mount + "?"):
        return "/" + raw_path[len(mount):]
    if raw_path.startswith(mount + "/"):
        return raw_path[len(mount):]
    return None


def middleware(config: Config) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Rewrite each request to what the handlers need: the real caller, and the path below the mount."""
    rewrite = rewriter(config)

    @web.middleware
    async def forwarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(rewrite(request))

    return forwarded


def rewriter(config: Config) -> Callable[[web.Request], web.Request]:
    """What :func:`middleware` does to a request, as a plain function (the pass-through's
    fast path in gateway.app calls it without the middleware around it)."""
    trusted = parse_networks(config.trusted_proxies)
    mount = config.mount_path

    def rewrite(request: web.Request) -> web.Request:
        peer = request.remote or ""
        headers = request.headers
        changes: dict[str, Any] = {}
        prefix = ""
        present = [h for h in PROXY_HEADERS if h in headers]
        if present and trusted and is_trusted(peer, trusted):
            changes["remote"] = client_address(headers.getall("X-Forwarded-For", ()), peer, trusted)
            proto = _first(headers.get("X-Forwarded-Proto")).lower()
            if proto in ("http", "https"):
                changes["scheme"] = proto
            host = _first(headers.get("X-Forwarded-Host"))
            if host and all(c not in host for c in "/\\@ "):
                changes["host"] = host
            prefix = _prefix_header(headers.get("X-Forwarded-Prefix", ""))
        elif present:
            kept = CIMultiDict(headers)
            for name in present:
                kept.popall(name, None)
            changes["headers"] = kept
        if mount:
            inner = _strip_mount(request.raw_path, mount)
            if inner is None:
                raise web.HTTPNotFound()
            changes["rel_url"] = URL(inner, encoded=True)
        if changes:
            request = request.clone(**changes)
        request[_PREFIX] = prefix + mount
        request[_PEER] = peer
        request[_DIRECT] = not present
        return request

    return rewrite


def public_prefix(request: web.BaseRequest) -> str:
    """The path the outside world puts in front of musegate's own paths ('' at the root)."""
    return request.get(_PREFIX, "")


def public_origin(request: web.BaseRequest) -> str:
    """scheme://host[:port] as the caller addressed it (through a trusted proxy if any)."""
    return f"{request.scheme}://{request.host}"


def peer(request: web.BaseRequest) -> str:
    """The TCP peer: the proxy that forwarded the request, or the caller itself."""
    return request.get(_PEER, request.remote or "")


def is_direct_local(request: web.BaseRequest) -> bool:
    """A caller on this machine talking to musegate directly (no proxy header at all)."""
    return request.get(_DIRECT, True) and is_loopback(peer(request))
