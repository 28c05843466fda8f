"""Web UI sessions: a random id in an HttpOnly cookie, the rest in memory on the server.

A session is created only after the upstream server (or the admin API key)
accepted a login (``gateway.ui_login``). The browser holds nothing but the
session id: an HttpOnly, ``SameSite=Strict`` cookie whose ``Path`` is the
public base path, ``Secure`` when the page was loaded over https. What the
server keeps per session is what it needs to act *as that user* later — the
Subsonic credentials or the Jellyfin access token — in memory only, never
written to disk, dropped on logout, expiry or restart.

Every state-changing request (POST, PUT, PATCH, DELETE) must also carry the
session's CSRF token in the ``X-CSRF-Token`` header: a cross-site page can
make the browser send the cookie (SameSite aside) but cannot read the token.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

COOKIE = "musegate_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# A session not used for this long is forgotten.
IDLE_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000

# Who a session belongs to: the operator (api key or a loopback caller without one),
# or a user of the upstream server.
ADMIN, LOCAL, SUBSONIC, JELLYFIN = "admin", "local", "subsonic", "jellyfin"


@dataclass
class UiSession:
    id: str = field(repr=False)
    csrf: str = field(repr=False)
    user: str
    kind: str
    created: float
    last_seen: float
    # Subsonic: the credential query parameters (u, p); Jellyfin: the access token and user id.
    subsonic_params: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    jellyfin_token: str | None = field(default=None, repr=False)
    jellyfin_user_id: str | None = None
    # Per-session caches (visible upstream ids by index signature, ...).
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def sees_everything(self) -> bool:
        """Operators see the whole library; upstream users only what the server shows them."""
        return self.kind in (ADMIN, LOCAL)

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "kind": self.kind, "csrf": self.csrf}


class SessionTable:
    """Sessions by id; expired ones are dropped when met and when the table grows."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS,
                 clock: Callable[[], float] = time.time) -> None:
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: dict[str, UiSession] = {}

    def create(self, user: str, kind: str, **extra: Any) -> UiSession:
        now = self._clock()
        if len(self._sessions) >= MAX_SESSIONS:
            self._sessions = {k: s for k, s in self._sessions.items() if not self._expired(s, now)}
            if len(self._sessions) >= MAX_SESSIONS:  # still full: the oldest goes
                oldest = min(self._sessions.values(), key=lambda s: s.last_seen)
                del self._sessions[oldest.id]
        session = UiSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, kind,
                            now, now, **extra)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> UiSession | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[session_id]
            return None
        session.last_seen = now
        return session

    def drop(self, session_id: str) -> UiSession | None:
        return self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: UiSession, now: float) -> bool:
        return now - session.last_seen > self.idle_seconds


SESSIONS = web.AppKey("ui_sessions", SessionTable)
# Set on a request once its session has been looked up (None: no valid session).
REQUEST_SESSION = web.RequestKey("musegate_ui_session", object)


def session_of(request: web.Request) -> UiSession | None:
    """The request's valid session (by cookie), or None; looked up once per request."""
    if REQUEST_SESSION in request:
        found = request[REQUEST_SESSION]
        return found if isinstance(found, UiSession) else None
    table = request.app.get(SESSIONS)
    session = table.get(request.cookies.get(COOKIE)) if table is not None else None
    request[REQUEST_SESSION] = session
    return session


def csrf_ok(request: web.Request, session: UiSession) -> bool:
    """Safe methods need no token; every other method must echo the session's token."""
    if request.method in SAFE_METHODS:
        return True
    sent = request.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent.encode(), session.csrf.encode())


def admitted_session(request: web.Request) -> UiSession | None:
    """The session when it may make this request (valid cookie, and CSRF token when needed)."""
    session = session_of(request)
    if session is None or not csrf_ok(request, session):
        return None
    return session


def set_cookie(response: web.StreamResponse, session: UiSession, path: str, secure: bool) -> None:
    response.set_cookie(COOKIE, session.id, path=path or "/", httponly=True, samesite="Strict",
                        secure=secure, max_age=None)


def clear_cookie(response: web.StreamResponse, path: str, secure: bool) -> None:
    response.del_cookie(COOKIE, path=path or "/", secure=secure, httponly=True, samesite="Strict")
