"""Lyrion Music Server (LMS, formerly Logitech Media Server) as a library source.

musegate speaks LMS's JSON-RPC: ``POST /jsonrpc.js`` with
``{"id": 1, "method": "slim.request", "params": [PLAYER, [COMMAND, ...]]}``,
the CLI's commands as positional strings, answers in ``result``. Nothing here
needs a player (PLAYER is ``""``): the library is read with ``titles`` and
playlists are saved ones (``playlists new`` / ``playlists edit``).

LMS quirks live here and nowhere else:

* LMS has one optional account: with *password protection* on (Settings →
  Advanced → Security) every HTTP request, ``/jsonrpc.js`` and
  ``/music/{id}/download`` alike, needs HTTP Basic auth, and a wrong pair is
  answered ``401``. A host that is not in LMS's allowed IP list gets ``403``.
* A malformed or unknown command is not an error: LMS answers ``{}`` or an
  empty ``result``. Answers are therefore checked for the fields they must have.
* Tracks are identified by an integer id (``id``) and by their URL (``u``,
  ``file:///music/Artist/01%20Song.flac``); the URL is what LMS itself and its
  plugins exchange, so it is kept in the stored song as ``url``. The server's
  path is the URL decoded. Remote (streamed) tracks are skipped: there is no
  file to analyse.
* There are no users: play counts (tag ``O``) are server-wide and LMS keeps no
  last-played time that the CLI can report.
* ``titles`` has no "changed since" filter; a scan pages through every title
  (``itemsPerResponse`` per call) and reuses what the store knows unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp

from adapters.base import HistoryEntry, NoListeningHistory
from adapters.common import (
    MappedOrDownloaded,
    OwnedSession,
    ServerError,
    parse_path_map,
    to_int,
    unreachable,
)
from analysis.store import TrackRecord

log = logging.getLogger(__name__)

PAGE_SIZE = 500
#: Tags a scan asks ``titles`` for: roles (albumartist…), artist, album, compilation,
#: duration, album id, file size, genre(s), modification time, type, artist id,
#: track number, url, remote flag, year. ``A`` comes before ``a``: its ``artist`` role
#: lists every artist ("A, B") and LMS lets the later tag win, the primary artist.
SCAN_TAGS = "AalCdefgGnostuxy"
#: Tags for listening history: play count and url (the id comes anyway).
HISTORY_TAGS = "Ou"


class LyrionError(ServerError):
    """LMS answered with an error (or could not be used); the message names the server."""

    SERVER = "Lyrion server"


class LyrionAuthError(LyrionError):
    """LMS refused the user name and password (or this host): a configuration problem."""


class LyrionUnavailable(LyrionError):
    """The server could not be reached or did not answer like LMS."""


def path_from_url(url: str) -> str | None:
    """The server-side path of a ``file://`` URL (LMS's own encoding undone); None otherwise."""
    if not url.lower().startswith("file://"):
        return None
    path = unquote(urlsplit(url).path)
    if len(path) > 2 and path[0] == "/" and path[2] == ":" and path[1].isalpha():
        path = path[1:]  # file:///C:/Music/x.flac -> C:/Music/x.flac
    return path


def url_from_path(path: str) -> str:
    """A ``file://`` URL for a server path (for callers that only have the path)."""
    if len(path) > 1 and path[1] == ":":
        path = "/" + path.replace("\\", "/")
    return "file://" + quote(path, safe="/:!$&'()*+,;=@~-._")


class LyrionClient(OwnedSession):
    """JSON-RPC calls to one LMS, with HTTP Basic auth when a user name is set.

    The password never reaches a log line; the only URL that carries it is the
    download URL handed to the analyzer (``http://user:pass@host/...``), which
    the analyzer redacts.
    """

    def __init__(
        self,
        url: str,
        user: str = "",
        password: str = "",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not url:
            raise ValueError("upstream_url is empty")
        self.url = url.rstrip("/")
        self.user = user
        self._password = password
        self._headers = {"Accept": "application/json"}
        if user:
            self._headers["Authorization"] = aiohttp.encode_basic_auth(user, password)
        self._init_session(session)
        self._checked = False

    async def connect(self) -> str:
        """Check the address and credentials (``version ?``); returns LMS's version."""
        answer = await self.request(["version", "?"])
        version = answer.get("_version")
        if not version:
            raise LyrionUnavailable("'version ?' answered without a version; is this LMS?", self.url)
        self._checked = True
        return str(version)

    async def request(self, command: Sequence[Any], player: str = "") -> dict[str, Any]:
        """One ``slim.request``; the ``result`` object (an empty dict when LMS sends none)."""
        body = {"id": 1, "method": "slim.request", "params": [player, [str(c) for c in command]]}
        log.debug("lyrion %s", command[0] if command else "?")
        try:
            async with self._http().post(
                f"{self.url}/jsonrpc.js", json=body, headers=self._headers
            ) as resp:
                status = resp.status
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason, timed_out = unreachable(exc, self.read_timeout)
            raise LyrionUnavailable(reason, self.url, timed_out=timed_out) from None
        if status == 401:
            who = f"user {self.user!r}" if self.user else "no user name"
            raise LyrionAuthError(
                f"LMS has password protection on and refused {who} (HTTP 401); "
                "check upstream_user / upstream_password", self.url, status,
            )
        if status == 403:
            raise LyrionAuthError(
                "LMS refused this host (HTTP 403): add musegate's address to the allowed IP "
                "addresses in LMS's Settings → Advanced → Security", self.url, status,
            )
        if status >= 500:  # LMS (or a proxy before it) is failing, not refusing us
            raise LyrionUnavailable(f"/jsonrpc.js answered HTTP {status}", self.url, status)
        if status >= 400:
            raise LyrionError(f"/jsonrpc.js answered HTTP {status}", self.url, status)
        try:
            answer = json.loads(text) if text else {}
        except ValueError:
            raise LyrionUnavailable(
                f"/jsonrpc.js answered HTTP {status} without JSON; is this LMS?", self.url, status
            ) from None
        if not isinstance(answer, dict):
            raise LyrionUnavailable("/jsonrpc.js answered something other than an object", self.url)
        result = answer.get("result")
        return result if isinstance(result, dict) else {}

    def download_url(self, track_id: str) -> str:
        """``/music/{id}/download`` (the original file), with Basic credentials in it if any."""
        url = f"{self.url}/music/{quote(str(track_id))}/download"
        if not self.user:
            return url
        parts = urlsplit(url)
        userinfo = f"{quote(self.user, safe='')}:{quote(self._password, safe='')}"
        return urlunsplit(parts._replace(netloc=f"{userinfo}@{parts.netloc}"))


def _genres(entry: Mapping[str, Any]) -> list[str]:
    text = entry.get("genres") or entry.get("genre") or ""
    return [g.strip() for g in str(text).split(",") if g.strip()]


def title_record(source: str, entry: Mapping[str, Any]) -> TrackRecord | None:
    """A TrackRecord from one ``titles_loop`` entry; None for a remote or path-less track."""
    url = str(entry.get("url") or "")
    path = path_from_url(url)
    if path is None or str(entry.get("remote") or "0") == "1" or "id" not in entry:
        return None
    genres = _genres(entry)
    raw = {k: v for k, v in entry.items() if k not in ("playcount", "rating")}
    if genres:
        raw["genres"] = ",".join(genres)
    size = to_int(entry.get("filesize"))
    duration = entry.get("duration")
    try:
        seconds = float(duration) if duration not in (None, "") else None
    except (TypeError, ValueError):
        seconds = None
    mtime = to_int(entry.get("modificationTime"))
    return TrackRecord(
        source=source,
        upstream_id=str(entry["id"]),
        path=path,
        size=size if size is not None and size >= 0 else None,
        mtime=float(mtime) if mtime is not None else None,
        title=entry.get("title"),
        artist=entry.get("artist") or entry.get("trackartist") or entry.get("albumartist"),
        album=entry.get("album"),
        genre=genres[0] if genres else None,
        year=to_int(entry.get("year")) or None,
        duration=seconds,
        raw=raw,
    )


class LyrionAdapter(MappedOrDownloaded):
    """LibraryAdapter, PlaylistWriter and HistorySource for one Lyrion Music Server."""

    def __init__(
        self,
        url: str,
        user: str = "",
        password: str = "",
        path_map: str = "",
        page_size: int = PAGE_SIZE,
        client: LyrionClient | None = None,
    ) -> None:
        self.client = client or LyrionClient(url, user, password)
        self.url = self.client.url
        self.source = f"lyrion:{self.url}"
        self.path_map = parse_path_map(path_map)
        self.page_size = max(1, page_size)

    @classmethod
    def from_config(cls, config: Any) -> LyrionAdapter:
        adapter = cls(
            config.upstream_url,
            user=config.upstream_user,
            password=config.upstream_password,
            path_map=config.path_map,
        )
        adapter.client.set_timeouts(config.upstream_connect_timeout, config.upstream_timeout)
        return adapter

    def _probe_client(self, user: str = "", password: str = "") -> LyrionClient:
        """A one-off client with this adapter's timeouts (a credential check, a probe)."""
        probe = LyrionClient(self.url, user, password)
        probe.set_timeouts(self.client.connect_timeout, self.client.read_timeout)
        return probe

    async def check_reachable(self) -> None:
        """Raise LyrionError unless LMS answers ``version ?`` now (is it down, or was it
        one track?)."""
        await self.client.connect()

    async def close(self) -> None:
        await self.client.close()

    async def password_protected(self) -> bool:
        """Whether LMS demands credentials at all (only then can it check a password)."""
        anonymous = self._probe_client()
        try:
            await anonymous.connect()
        except LyrionAuthError as exc:
            return exc.status == 401
        finally:
            await anonymous.close()
        return False

    async def check_credentials(self, user: str, password: str) -> bool:
        """Whether LMS accepts ``user``/``password`` (True when it has no password protection:
        ask :meth:`password_protected` first when the answer must prove who the caller is)."""
        probe = self._probe_client(user, password)
        try:
            await probe.connect()
        except LyrionAuthError:
            return False
        finally:
            await probe.close()
        return True

    # ---- library ---------------------------------------------------------------------

    async def _titles(self, tags: str) -> list[dict[str, Any]]:
        """Every ``titles_loop`` entry, ``page_size`` per call, until ``count`` is reached."""
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        start = 0
        while True:
            result = await self.client.request(["titles", start, self.page_size, f"tags:{tags}"])
            if "count" not in result:
                raise LyrionUnavailable("'titles' answered without a count; is this LMS?", self.url)
            page = [e for e in result.get("titles_loop") or [] if isinstance(e, dict)]
            fresh = [e for e in page if str(e.get("id")) not in seen]
            seen.update(str(e.get("id")) for e in fresh)
            entries.extend(fresh)
            total = to_int(result.get("count")) or 0
            start += len(page)
            if not fresh or start >= total:
                break  # the end, or a server ignoring <start>: never loop forever
        return entries

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        """Every local track LMS has now; unchanged ones (same metadata) reuse ``known``."""
        records: list[TrackRecord] = []
        skipped = 0
        for entry in await self._titles(SCAN_TAGS):
            rec = title_record(self.source, entry)
            if rec is None:
                skipped += 1
                continue
            old = known.get(rec.upstream_id)
            if old is not None and old.raw == rec.raw and (old.size, old.mtime, old.path) == (
                rec.size, rec.mtime, rec.path
            ):
                records.append(old)
            else:
                records.append(rec)
        log.info("%s lists %d songs (%d remote or without a file skipped)",
                 self.url, len(records), skipped)
        return records

    # ---- audio -----------------------------------------------------------------------

    # local_path / audio_location: adapters.common.MappedOrDownloaded

    # ---- playlists -------------------------------------------------------------------

    async def write_playlist(self, name: str, tracks: list[TrackRecord]) -> str:
        """Save ``tracks`` in order as LMS playlist ``name``; returns its playlist id.

        An existing playlist of that name keeps its id (and file): its entries
        are deleted and ``tracks`` added, one ``playlists edit cmd:add`` each.
        """
        created = await self.client.request(["playlists", "new", f"name:{name}"])
        playlist_id = created.get("playlist_id")
        if playlist_id is None and created.get("overwritten_playlist_id") is not None:
            playlist_id = created["overwritten_playlist_id"]
            listing = await self.client.request(
                ["playlists", "tracks", 0, 1, f"playlist_id:{playlist_id}"]
            )
            for _ in range(to_int(listing.get("count")) or 0):
                await self.client.request(
                    ["playlists", "edit", "cmd:delete", f"playlist_id:{playlist_id}", "index:0"]
                )
        if playlist_id is None:
            raise LyrionError(
                f"'playlists new' made no playlist {name!r}; is a playlist folder set in LMS's "
                "Settings → Basic Settings?", self.url,
            )
        for track in tracks:
            url = str(track.raw.get("url") or "") or url_from_path(track.path or "")
            command = ["playlists", "edit", "cmd:add", f"playlist_id:{playlist_id}", f"url:{url}"]
            if track.title:
                command.append(f"title:{track.title}")
            await self.client.request(command)
        return str(playlist_id)

    # ---- history ---------------------------------------------------------------------

    async def listening_history(self, user: str | None = None) -> list[HistoryEntry]:
        """Songs LMS has counted plays for, most played first.

        LMS has no users, so ``user`` is not used: the counts are the server's,
        from every player. LMS's CLI reports no last-played time.
        """
        entries = [
            HistoryEntry(str(e["id"]), plays)
            for e in await self._titles(HISTORY_TAGS)
            if "id" in e and (plays := to_int(e.get("playcount")) or 0) > 0
        ]
        if not entries:
            raise NoListeningHistory(f"{self.url} has counted no plays yet")
        return sorted(entries, key=lambda e: (-e.play_count, e.upstream_id))
