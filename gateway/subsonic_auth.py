"""Callers' credentials: checked with the upstream server, remembered only as a hash.

musegate holds no user database. The upstream server decides who a caller is,
so every intercepted request is first checked with the upstream's own ``ping``
using the caller's own parameters (``u``+``p``, ``u``+``p=enc:…``,
``u``+``t``+``s``, ``apiKey``, or HTTP Basic), and its error (40 wrong
credentials, 41/42 scheme not supported, 43 conflicting, 44 bad API key…) is
passed on unchanged. A success is reused for ``auth_cache_seconds`` so a
client's burst of calls costs one check; the cache key is a SHA-256 over the
credential parameters, so no password, token or API key is ever kept in
memory beyond the request that carried it.

The cache is the bound on a changed password: an entry lives ``auth_cache_seconds``
from its check and is never renewed without asking the upstream, and refusals
are never stored. When the upstream is down an expired or absent entry is an
outage (``UpstreamDown``: 502/504), never an admission; only a caller checked
within the bound can still be answered, and only from what musegate holds.

``UpstreamCaller`` is the one place that calls the upstream *as the caller*
(the service account's client lives in ``adapters.subsonic``); it also feeds
the envelope cache so musegate's answers carry the upstream's identity.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.subsonic_format import (
    DEFAULT_VERSION,
    GENERIC,
    MISSING_PARAMETER,
    EnvelopeCache,
)
from gateway.upstream_errors import TRANSPORT_ERRORS, UpstreamDown, from_exception, from_status

log = logging.getLogger(__name__)

CREDENTIAL_PARAMS = ("u", "p", "t", "s", "apiKey")
CLIENT_NAME = "musegate"


class UpstreamError(Exception):
    """The upstream answered with a Subsonic error (its code and message are passed on)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Credentials:
    """The credential parts of one request (never logged, never stored)."""

    params: tuple[tuple[str, str], ...]
    authorization: str | None = None

    @classmethod
    def of(cls, params: Mapping[str, str], headers: Mapping[str, str]) -> Credentials:
        found = tuple((k, params[k]) for k in CREDENTIAL_PARAMS if params.get(k))
        auth = headers.get("Authorization")
        return cls(found, auth if auth and auth.lower().startswith("basic ") else None)

    @property
    def present(self) -> bool:
        names = {k for k, _ in self.params}
        return bool(self.authorization or "apiKey" in names or "u" in names)

    def cache_key(self) -> str:
        """SHA-256 over every credential part: equal credentials, equal key; nothing recoverable."""
        blob = json.dumps([list(self.params), self.authorization], separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.authorization} if self.authorization else {}


class CredentialCache:
    """Successful checks by hash, each valid for ``ttl`` seconds (0 disables caching)."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, float] = {}

    def __contains__(self, key: str) -> bool:
        expiry = self._entries.get(key)
        if expiry is None:
            return False
        if expiry <= self._clock():
            del self._entries[key]
            return False
        return True

    def add(self, key: str) -> None:
        if self.ttl <= 0:
            return
        now = self._clock()
        if len(self._entries) > 10_000:  # bounded: drop what has expired
            self._entries = {k: t for k, t in self._entries.items() if t > now}
        self._entries[key] = now + self.ttl

    def keys(self) -> list[str]:
        """The stored keys (hashes), for inspection and tests."""
        return list(self._entries)


class FolderCache:
    """Each caller's visible music folder ids, by credential hash, for ``ttl`` seconds.

    Used by ``subsonic_visibility = "folders"``: one ``getMusicFolders`` per caller
    per ``auth_cache_seconds`` instead of one per request. Keyed like CredentialCache
    (SHA-256 of the credentials), so nothing recoverable is kept; 0 disables it.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, frozenset[str]]] = {}

    def get(self, key: str) -> frozenset[str] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, folders: frozenset[str]) -> None:
        if self.ttl <= 0:
            return
        now = self._clock()
        if len(self._entries) > 10_000:  # bounded: drop what has expired
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        self._entries[key] = (now + self.ttl, folders)

    def keys(self) -> list[str]:
        """The stored keys (hashes), for inspection and tests."""
        return list(self._entries)


class UpstreamCaller:
    """Subsonic calls to the upstream with the *caller's* credentials, always in JSON."""

    def __init__(
        self, upstream_url: str, session: aiohttp.ClientSession, envelope: EnvelopeCache
    ) -> None:
        self.base = upstream_url.rstrip("/")
        self.session = session
        self.envelope = envelope

    async def call(
        self,
        endpoint: str,
        creds: Credentials | None,
        client: Mapping[str, str],
        **params: Any,
    ) -> dict[str, Any]:
        """The ``subsonic-response`` body; UpstreamError on status failed, UpstreamDown otherwise."""
        query: dict[str, str] = {
            "v": client.get("v") or DEFAULT_VERSION,
            "c": client.get("c") or CLIENT_NAME,
        }
        if creds is not None:
            query.update(dict(creds.params))
        query.update({k: str(v) for k, v in params.items()})
        query["f"] = "json"
        url = f"{self.base}/rest/{endpoint}"
        try:
            async with self.session.get(
                url, params=query, headers=creds.headers() if creds else {}
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TRANSPORT_ERRORS as exc:
            log.warning("upstream %s unreachable: %s", endpoint, type(exc).__name__)
            raise from_exception(endpoint, exc) from None
        try:
            body = json.loads(raw)["subsonic-response"]
        except (ValueError, KeyError, TypeError):
            body = None
        if not isinstance(body, dict):
            # Not a Subsonic answer. A 5xx or a 2xx (garbage, an HTML page where JSON was
            # asked for) is an outage: treating it as the upstream's refusal of one song
            # would turn a broken server into a silently empty answer. A 4xx without a
            # Subsonic body is a refusal by something in front of the server.
            log.warning("upstream %s answered HTTP %s without a Subsonic body", endpoint, status)
            if status >= 500:
                raise from_status(endpoint, status)
            if status < 400:
                raise UpstreamDown(f"{endpoint}: not a Subsonic answer (HTTP {status})")
            raise UpstreamError(GENERIC, f"unexpected answer (HTTP {status})")
        self.envelope.update(body)
        if body.get("status") != "ok":
            error = body.get("error") or {}
            raise UpstreamError(int(error.get("code", GENERIC)), str(error.get("message", "")))
        return body


class AuthChecker:
    """``check()`` passes, or raises UpstreamError (the upstream's verdict) / UpstreamDown."""

    def __init__(self, upstream: UpstreamCaller, cache: CredentialCache) -> None:
        self.upstream = upstream
        self.cache = cache

    async def check(self, creds: Credentials, client: Mapping[str, str]) -> None:
        if not creds.present:
            raise UpstreamError(MISSING_PARAMETER, "Required parameter is missing: u or apiKey")
        key = creds.cache_key()
        if key in self.cache:
            return
        await self.upstream.call("ping", creds, client)
        self.cache.add(key)
