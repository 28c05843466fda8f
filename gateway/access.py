"""Who may use musegate's own JSON API and metrics.

The intercepted Subsonic and Jellyfin calls check the caller with the music
server itself; musegate's own API has no such caller, and it shows the whole
library, so it needs a rule of its own:

- with ``api_key`` set, a request must carry it (``X-API-Key: KEY`` or
  ``Authorization: Bearer KEY``);
- without one, only a direct caller on this machine is admitted (loopback peer,
  no proxy header), and only while musegate itself listens on a loopback address.
  A server bound to ``0.0.0.0`` — a container, a LAN box — keeps its API closed
  until a key is set, because there a connection from 127.0.0.1 may well be a
  port forwarder relaying someone else.

A logged-in web UI session (cookie, plus its CSRF token on state-changing
methods) is admitted as well: the pages call this same API.

The liveness and readiness probes stay open: they say nothing about the library.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway import forwarding
from gateway.ui_session import csrf_ok, session_of
from musegate.config import Config

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class AccessDenied(Exception):
    """The caller may not use the API; ``status`` is 401 (no or wrong key) or 403."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def presented_key(request: web.BaseRequest) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def loopback_only(config: Config) -> bool:
    """True when, without a key, the API may answer direct local callers."""
    return forwarding.is_loopback(config.host) or config.host.lower() == "localhost"


def key_matches(given: str | None, config: Config) -> bool:
    """``given`` is the configured api_key (compared in constant time; False when none is set)."""
    if not config.api_key or given is None:
        return False
    return hmac.compare_digest(given.encode(), config.api_key.encode())


def local_without_key(request: web.BaseRequest, config: Config) -> bool:
    """The keyless rule: no api_key set, a direct local caller, musegate bound to loopback."""
    return (not config.api_key and loopback_only(config)
            and forwarding.is_direct_local(request))


def check(request: web.BaseRequest, config: Config) -> None:
    """Raise :class:`AccessDenied` unless ``request`` may use the API.

    A web UI session (``gateway.ui_session``) admits the request too; on a
    state-changing method only with the session's CSRF token.
    """
    key = presented_key(request)
    session = session_of(request) if key is None and isinstance(request, web.Request) else None
    if session is not None:
        if csrf_ok(request, session):
            return
        raise AccessDenied(403, "missing or wrong X-CSRF-Token for this web UI session")
    if config.api_key:
        if key_matches(key, config):
            return
        raise AccessDenied(401, "this API needs musegate's api_key "
                                "(X-API-Key header or Authorization: Bearer)")
    if key is not None:
        raise AccessDenied(401, "an API key was sent but musegate has no api_key configured")
    if local_without_key(request, config):
        return
    raise AccessDenied(403, "set api_key to use musegate's API from another machine "
                            "or through a proxy")
