"""Jellyfin callers' credentials: parsed the way Jellyfin parses them, checked by Jellyfin itself.

musegate holds no user database. A Jellyfin client proves who it is with a
token (a user's access token or an API key) in one of several places, and
Jellyfin reads them in a fixed order (``AuthorizationContext`` in
Jellyfin.Server.Implementations, 10.9/10.10):

1. the ``X-Emby-Authorization`` header, or when that is absent or empty the
   ``Authorization`` header — only its first value, only when its scheme is
   ``MediaBrowser`` or ``Emby`` (case-insensitive) — whose comma-separated
   ``Key="value"`` parts give ``Client``, ``Device``, ``DeviceId``,
   ``Version`` and ``Token`` (keys are case-sensitive; a double quote toggles
   quoting so commas inside quotes are kept; values are URL-decoded);
2. then ``X-Emby-Token``, 3. ``X-MediaBrowser-Token``, 4. the ``ApiKey`` query
   parameter, 5. the legacy ``api_key`` query parameter (query names are
   case-insensitive, as in ASP.NET Core).

``JellyfinCredentials.of`` reproduces that order exactly, so musegate finds
the same token Jellyfin would. The token is then checked by asking Jellyfin
``GET /System/Info`` *with the caller's own authorization* (it accepts user
tokens and API keys alike). Anything but a success is Jellyfin's verdict and
is relayed to the caller unchanged (a bad token gets Jellyfin's own empty 401).
A success is remembered for ``auth_cache_seconds`` under a SHA-256 of the
token, so a burst of calls costs one check and no token is kept beyond the
request that carried it. Failures are never cached: a revoked or mistyped
token is asked about again, and a token that becomes valid works at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

import aiohttp
from multidict import CIMultiDict, MultiMapping

from gateway.subsonic_auth import CredentialCache
from gateway.upstream_errors import TRANSPORT_ERRORS, UpstreamDown, from_exception, from_status

log = logging.getLogger(__name__)

# The request headers Jellyfin reads credentials from; relayed verbatim to Jellyfin when
# musegate asks it something on the caller's behalf.
AUTH_HEADERS = ("X-Emby-Authorization", "Authorization", "X-Emby-Token", "X-MediaBrowser-Token")
SCHEMES = ("mediabrowser", "emby")
CHECK_PATH = "/System/Info"

__all__ = [
    "AUTH_HEADERS", "CredentialCache", "JellyfinAuthChecker", "JellyfinCredentials",
    "Refused", "UpstreamDown", "authorization_parts", "header_parts",
]


def header_parts(value: str) -> dict[str, str]:
    """The ``Key="value", …`` parts of a MediaBrowser header, parsed as Jellyfin does.

    A double quote toggles "inside a value"; outside quotes a comma ends a part and
    the first ``=`` separates the key. Keys are trimmed; values lose surrounding
    double quotes (not spaces) and are URL-decoded (``+`` is a space). An empty
    value (``Token=,``) is skipped, and a later key wins over an earlier one.
    """
    result: dict[str, str] = {}
    quoted = False
    start = 0
    key = ""
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            if start < i:
                result[key] = unquote_plus(value[start:i].strip('"'))
                key = ""
            start = i + 1
        elif ch == "=" and not quoted:
            key = value[start:i].strip()
            start = i + 1
    if start < len(value):
        result[key] = unquote_plus(value[start:].strip('"'))
    return result


def authorization_parts(value: str | None) -> dict[str, str] | None:
    """The parts of a ``MediaBrowser …``/``Emby …`` header; None for other schemes (Basic, Bearer)."""
    if not value:
        return None
    space = value.find(" ")
    if space == -1 or value[:space].lower() not in SCHEMES:
        return None
    return header_parts(value[space + 1 :])


def _joined(values: list[str]) -> str:
    """A repeated header or query parameter reads as its values joined by commas (StringValues)."""
    return ",".join(values)


@dataclass(frozen=True)
class JellyfinCredentials:
    """What one request carries (never logged: the token and raw headers are kept out of repr)."""

    token: str | None = field(default=None, repr=False)
    client: str | None = None
    device: str | None = None
    device_id: str | None = None
    version: str | None = None
    from_query: bool = False
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def of(
        cls, headers: Mapping[str, str] | MultiMapping[str], query: MultiMapping[str] | Mapping[str, str]
    ) -> JellyfinCredentials:
        """Find the token where Jellyfin looks for it, in Jellyfin's order."""
        hdrs = CIMultiDict(headers)
        values = hdrs.getall("X-Emby-Authorization", [])
        if not values or not values[0]:
            values = hdrs.getall("Authorization", [])
        parts = authorization_parts(values[0]) if values else None
        parts = parts or {}
        token = parts.get("Token") or None
        from_query = False
        for name in ("X-Emby-Token", "X-MediaBrowser-Token"):
            if not token:
                token = _joined(hdrs.getall(name, [])) or None
        if not token:
            lowered = CIMultiDict(query)
            for name in ("ApiKey", "api_key"):
                if not token:
                    token = _joined(lowered.getall(name, [])) or None
                    from_query = bool(token)
        if token is not None and not token.strip():
            token = None  # Jellyfin: whitespace is "no token"
        relayed = tuple((k, v) for k, v in hdrs.items() if k.lower() in _AUTH_LOWER)
        return cls(token, parts.get("Client"), parts.get("Device"), parts.get("DeviceId"),
                   parts.get("Version"), from_query, relayed)

    @property
    def present(self) -> bool:
        return self.token is not None

    def cache_key(self) -> str | None:
        """SHA-256 of the token: equal tokens, equal key; the token cannot be recovered from it."""
        if self.token is None:
            return None
        return hashlib.sha256(b"jellyfin-token\0" + self.token.encode("utf-8")).hexdigest()

    def upstream_headers(self) -> dict[str, str]:
        """What musegate sends Jellyfin to act as this caller.

        The caller's own authorization headers go verbatim, so Jellyfin sees the same
        client and device as on a direct call (and does not rename the caller's device
        to "musegate"). A token that came in the query string travels as X-Emby-Token
        instead, which keeps it out of URLs and access logs.
        """
        out: dict[str, str] = {}
        for k, v in self.headers:
            out.setdefault(k, v)
        if self.from_query and self.token:
            out["X-Emby-Token"] = self.token
        return out


_AUTH_LOWER = frozenset(h.lower() for h in AUTH_HEADERS)


class Refused(Exception):
    """Jellyfin refused the caller: its status, body and content type, to be relayed unchanged."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = dict(headers)


# Headers of Jellyfin's refusal worth relaying (the body is re-sent decoded, so encoding and
# length headers are recomputed by aiohttp).
_RELAY = ("Content-Type", "WWW-Authenticate", "X-Response-Time-ms", "Server")


class JellyfinAuthChecker:
    """``check()`` returns when Jellyfin accepts the caller; raises Refused or UpstreamDown."""

    def __init__(self, session: aiohttp.ClientSession, cache: CredentialCache) -> None:
        self.session = session
        self.cache = cache

    async def check(self, base: str, creds: JellyfinCredentials,
                    extra_headers: Mapping[str, str] | None = None) -> None:
        """Ask ``{base}/System/Info`` as the caller unless a success for this token is cached.

        A request without any token is asked about too (it costs one call): whatever
        Jellyfin answers — normally an empty 401 — is exactly what the caller gets.
        """
        key = creds.cache_key()
        if key is not None and key in self.cache:
            return
        headers = {**(extra_headers or {}), **creds.upstream_headers(),
                   "Accept": "application/json"}
        try:
            async with self.session.get(base.rstrip("/") + CHECK_PATH, headers=headers,
                                        allow_redirects=False) as resp:
                body = await resp.read()
                status = resp.status
                relay = {k: resp.headers[k] for k in _RELAY if k in resp.headers}
        except TRANSPORT_ERRORS as exc:
            log.warning("jellyfin auth check unreachable: %s", type(exc).__name__)
            raise from_exception("auth check", exc) from None
        if status >= 500:
            # Jellyfin failing is not Jellyfin refusing the caller: relaying its 500 page
            # would read as "your token is bad" to some clients, and a 200 would be worse.
            log.warning("jellyfin auth check answered HTTP %s", status)
            raise from_status("auth check", status)
        if 200 <= status < 300:
            if not _is_json_object(body):
                log.warning("jellyfin auth check answered HTTP %s without JSON", status)
                raise UpstreamDown(f"auth check: not a Jellyfin answer (HTTP {status})")
            if key is not None:
                self.cache.add(key)
            return
        raise Refused(status, body, relay)


def _is_json_object(body: bytes) -> bool:
    """``/System/Info`` answers a JSON object; anything else did not come from Jellyfin."""
    try:
        return isinstance(json.loads(body), dict)
    except ValueError:
        return False
