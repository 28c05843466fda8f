"""What every server adapter needs the same way: an HTTP session it owns, value parsing,
and the path map that lets musegate read a mounted copy of the library.

Kept in one place so that a fix (a date format, a path-map edge case) reaches
every server family at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any, Self

import aiohttp

log = logging.getLogger(__name__)


class SourceError(Exception):
    """A library source failed in a way its message explains (the server refused, is down,
    answered nonsense, the folder is missing): a run that meets one is reported with that
    message alone, since a traceback would say nothing more to the person who must act."""


class ServerError(SourceError):
    """A media server answered with an error (or could not be used).

    One shape for the HTTP-status servers (Jellyfin, Lyrion) so callers and the
    gateway read ``message``/``server``/``status`` the same way whichever it is;
    ``SERVER`` names the kind in the text a user sees.
    """

    SERVER = "media server"

    def __init__(self, message: str, server: str = "", status: int = 0,
                 timed_out: bool = False) -> None:
        self.message = message
        self.server = server
        self.status = status
        self.timed_out = timed_out
        where = f"{self.SERVER} {server}: " if server else ""
        super().__init__(f"{where}{message}")


#: Seconds to connect, and of silence while waiting for (or reading) an answer, when the
#: configuration does not say (``upstream_connect_timeout``, ``upstream_timeout``).
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0


def unreachable(exc: BaseException, read_timeout: float) -> tuple[str, bool]:
    """What to tell a user about a failed request to the server, and whether it timed out.

    aiohttp's own texts say "Timeout on reading data from socket" or nothing at all;
    the setting that bounds the wait is what the user can change.
    """
    from analysis.decode import redact_url  # here: decode loads PyAV, which serve defers

    if isinstance(exc, TimeoutError):
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            return "could not connect in time (setting upstream_connect_timeout)", True
        return (f"did not answer within {read_timeout:g} s (setting upstream_timeout)", True)
    detail = f"{type(exc).__name__}: {redact_url(str(exc))}".rstrip(": ")
    if len(detail) > 200:  # aiohttp quotes a bad status line whole: keep the start
        detail = detail[:197] + "..."
    if isinstance(exc, (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        return f"the connection was cut before the answer was complete ({detail})", False
    if isinstance(exc, aiohttp.ClientResponseError):  # a status line that is not HTTP
        return f"answered with something that is not HTTP ({detail})", False
    return f"cannot reach the server ({detail})", False


class OwnedSession:
    """An aiohttp session created on first use (inside the running loop) and closed with us.

    A caller may pass its own session instead; that one is left open on close.
    ``connect_timeout``/``read_timeout`` bound connecting and every silence of the
    server (not a whole download, which may rightly take long).
    """

    _session: aiohttp.ClientSession | None
    _own_session: bool
    connect_timeout: float = CONNECT_TIMEOUT
    read_timeout: float = READ_TIMEOUT

    def set_timeouts(self, connect: float, read: float) -> None:
        """The configured bounds (``upstream_connect_timeout``, ``upstream_timeout``)."""
        self.connect_timeout, self.read_timeout = float(connect), float(read)

    def _init_session(self, session: aiohttp.ClientSession | None) -> None:
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No total timeout: a large answer may take long; stalls are caught by sock_read.
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout,
                                            sock_read=self.read_timeout)
            self._session = aiohttp.ClientSession(timeout=timeout)
            self._own_session = True
        return self._session


def epoch(value: Any) -> float | None:
    """Seconds since 1970 from an ISO-8601 string (servers' 'Z' and 7-digit fractions too)."""
    if not value or not isinstance(value, str):
        return None
    text = value.replace("Z", "+00:00")
    if "." in text:  # Jellyfin writes 7 fractional digits; fromisoformat takes at most 6
        head, _, tail = text.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        text = f"{head}.{digits[:6]}{tail[len(digits):]}"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def to_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_path_map(text: str) -> list[tuple[str, Path]]:
    """``'SERVER=LOCAL;SERVER2=LOCAL2'`` → pairs, longest server prefix first.

    An empty server prefix (``'=/mnt/music'``) maps relative paths, which is what
    servers like supysonic report (paths relative to the music folder).
    """
    pairs: list[tuple[str, Path]] = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"path_map entry {part!r} is not SERVER_PREFIX=LOCAL_PREFIX")
        server, local = part.split("=", 1)
        pairs.append((server.strip().rstrip("/"), Path(local.strip()).expanduser()))
    pairs.sort(key=lambda p: len(p[0]), reverse=True)
    return pairs


def map_path(server_path: str, path_map: Iterable[tuple[str, Path]]) -> Path | None:
    """The local copy of ``server_path`` under the first matching prefix, if any."""
    for prefix, local in path_map:
        if not prefix:
            if not server_path.startswith("/"):
                return local / server_path
            continue
        if server_path == prefix or server_path.startswith(prefix + "/"):
            return local / server_path[len(prefix):].lstrip("/")
    return None


def verified_local_copy(
    server_path: str | None, size: int | None, path_map: list[tuple[str, Path]], what: str
) -> Path | None:
    """The mapped file for ``server_path`` only if it exists with the size the server reports.

    Checking the size catches a stale mount or a wrong mapping (Navidrome's
    made-up paths) before the wrong file is analysed; the caller then downloads.
    """
    if not path_map or not server_path:
        return None
    local = map_path(str(server_path), path_map)
    if local is None:
        return None
    try:
        actual = os.stat(local).st_size
    except OSError:
        return None
    if size is None or size != actual:
        log.debug("mapped file for %s has size %s, server says %s", what, actual, size)
        return None
    return local


class MappedOrDownloaded:
    """Audio for servers that report each file's path and size and offer a download URL.

    Jellyfin and Lyrion both do: the mounted copy is used when the path map has
    one of the reported size, otherwise the client's download URL (a secret: it
    can carry credentials). Needs ``self.path_map`` and ``self.client.download_url``.
    """

    path_map: list[tuple[str, Path]]
    client: Any

    def local_path(self, track: Any) -> Path | None:
        """The mounted copy of ``track`` when the path map has one of the reported size."""
        return verified_local_copy(track.path, track.size, self.path_map, track.upstream_id)

    def audio_location(self, track: Any) -> str:
        """A local path (mapped, size verified) or the server's download URL."""
        local = self.local_path(track)
        if local is not None:
            return str(local)
        return self.client.download_url(track.upstream_id)
