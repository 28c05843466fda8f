"""Any Subsonic / OpenSubsonic server as a library source: Navidrome, LMS, gonic, supysonic…

musegate reads the library with a service account (``upstream_user``), never
with a caller's credentials: the scan, the audio downloads, playlists and
history all go through :class:`SubsonicClient`, which signs each request the
way the server accepts.

Server quirks live here and nowhere else:

* Auth. Navidrome and most servers take token auth (``t`` = md5(password +
  salt), ``s`` = salt). LMS refuses it with error 41 and wants ``p`` or an API
  key; servers older than API 1.13 (supysonic) do not know ``t``/``s`` and
  answer error 10 (missing ``p``). ``auto`` tries token auth once with ``ping``
  and settles on ``p=enc:…`` when the server answers 10, 41 or 42.
* Ids are opaque (LMS prefixes them, supysonic uses UUIDs): never parsed.
* ``path`` is what the server chooses to expose (Navidrome reports a fake one
  unless configured otherwise), so a mapped local file is trusted only when its
  size equals the song's ``size``; otherwise the audio is downloaded.
* Song objects carry the service account's own per-user data (playCount,
  starred, rating…); that is stripped before the object is stored as ``raw``,
  since raw objects may be shown to other users.
* Music folders. The library is listed folder by folder (``getMusicFolders``,
  then ``search3``/``getAlbumList2`` with ``musicFolderId``) and each stored
  song records the folder it was found in under ``musegateFolderId``, so the
  gateway's ``subsonic_visibility = "folders"`` can filter answers by the
  folders a caller's own ``getMusicFolders`` lists without asking the server
  about every song. A song listed in several folders keeps the first. Servers
  without ``getMusicFolders``, and servers that ignore ``musicFolderId``
  (every folder lists the same songs), are listed unscoped: their songs record
  no folder, which that mode treats as "visible to nobody".
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp

from adapters.base import HistoryEntry, NoListeningHistory
from adapters.common import (
    OwnedSession,
    SourceError,
    epoch,
    parse_path_map,
    to_int,
    unreachable,
    verified_local_copy,
)
from analysis.store import TrackRecord

log = logging.getLogger(__name__)

API_VERSION = "1.16.1"
CLIENT_NAME = "musegate"
PAGE_SIZE = 500
ALBUM_CONCURRENCY = 8
HISTORY_ALBUMS = 50
# POST the parameters as a form beyond this query length (long playlists): URLs
# of tens of kilobytes are refused by some proxies and servers.
MAX_QUERY_CHARS = 4000

#: Errors meaning "this server does not take token auth": 41 (LMS, LDAP users),
#: 42 (OpenSubsonic: mechanism not supported), 10 (pre-1.13 servers: ``p`` missing).
TOKEN_UNSUPPORTED = frozenset({10, 41, 42})
AUTH_FAILED = frozenset({40, 41, 42, 43, 44})

#: Fields of a song that belong to the service account rather than to the song.
PER_USER_FIELDS = frozenset(
    {"playCount", "played", "starred", "userRating", "bookmarkPosition", "averageRating"}
)

#: Key of the stored raw song object naming the music folder the scan found it in.
#: Internal to musegate: the gateway removes it before a song object leaves.
FOLDER_KEY = "musegateFolderId"

Params = Mapping[str, Any] | Sequence[tuple[str, Any]]


class SubsonicError(SourceError):
    """The server answered ``status="failed"`` (or could not be used); ``code`` is Subsonic's."""

    def __init__(self, code: int, message: str, server: str = "", timed_out: bool = False
                 ) -> None:
        self.code = code
        self.message = message
        self.server = server
        self.timed_out = timed_out
        where = f"Subsonic server {server}: " if server else ""
        super().__init__(f"{where}{message} (error {code})")


class SubsonicAuthError(SubsonicError):
    """The service account was refused: a configuration problem, not a transient one."""


class SubsonicUnavailable(SubsonicError):
    """The server could not be reached or did not answer like a Subsonic server."""


def _items(params: Params) -> list[tuple[str, str]]:
    """Flatten params, expanding lists into repeated keys (``songId=a&songId=b``)."""
    pairs = params.items() if isinstance(params, Mapping) else params
    out: list[tuple[str, str]] = []
    for key, value in pairs:
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            out.extend((key, _text(v)) for v in value)
        else:
            out.append((key, _text(value)))
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SubsonicClient(OwnedSession):
    """A service-account session with one Subsonic server; always JSON, always signed.

    ``auth`` is ``auto`` (token, falling back to password on servers that refuse
    tokens), ``token``, ``password`` or ``apikey``. Credentials never reach a log
    line: only endpoint names are logged.
    """

    def __init__(
        self,
        url: str,
        user: str = "",
        password: str = "",
        api_key: str = "",
        auth: str = "auto",
        client_name: str = CLIENT_NAME,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if auth not in ("auto", "token", "password", "apikey"):
            raise ValueError(f"unknown upstream_auth {auth!r}")
        if not url:
            raise ValueError("upstream_url is empty")
        self.url = url.rstrip("/")
        self.user = user
        self._password = password
        self._api_key = api_key
        self.client_name = client_name
        self.auth = auth
        # The scheme actually used: decided on first use when ``auto``.
        self.mode: str | None = None if auth == "auto" else auth
        if auth == "auto" and api_key and not password:
            self.mode = "apikey"
        self._init_session(session)
        self._negotiating = asyncio.Lock()

    # ---- lifecycle -------------------------------------------------------------

    # ---- signing ---------------------------------------------------------------

    def _auth_params(self, mode: str) -> list[tuple[str, str]]:
        base = [("c", self.client_name), ("v", API_VERSION), ("f", "json")]
        if mode == "apikey":
            return [("apiKey", self._api_key), *base]
        if mode == "token":
            salt = secrets.token_hex(8)
            token = hashlib.md5((self._password + salt).encode("utf-8")).hexdigest()  # noqa: S324 - Subsonic's scheme
            return [("u", self.user), ("t", token), ("s", salt), *base]
        return [("u", self.user), ("p", "enc:" + self._password.encode("utf-8").hex()), *base]

    def signed_url(self, endpoint: str, params: Params = ()) -> str:
        """A URL for ``endpoint`` carrying the service account's credentials (for downloads).

        Requires the auth scheme to be known (after any successful ``call``), since
        a URL cannot fall back by itself. Treat it as a secret.
        """
        mode = self.mode or ("apikey" if self.auth == "apikey" else "password")
        query = urlencode([*self._auth_params(mode), *_items(params)])
        return f"{self.url}/rest/{endpoint}?{query}"

    # ---- calls -----------------------------------------------------------------

    async def call(self, endpoint: str, params: Params = (), **kw: Any) -> dict[str, Any]:
        """``endpoint``'s ``subsonic-response`` body; SubsonicError when it failed.

        Parameters come as keywords or as ``params`` (a mapping or pairs; list
        values repeat the key, as ``songId`` must).
        """
        extra = _items(params) + _items(kw)
        if self.mode is None:
            await self._negotiate()
        assert self.mode is not None
        return await self._request(endpoint, self.mode, extra)

    async def _negotiate(self) -> None:
        """Decide between token and password auth with one ``ping`` (``auto`` only)."""
        async with self._negotiating:
            if self.mode is not None:
                return
            try:
                await self._request("ping", "token", [])
            except SubsonicUnavailable:
                raise
            except SubsonicError as exc:
                if exc.code not in TOKEN_UNSUPPORTED:
                    raise
                log.info(
                    "Subsonic server %s refuses token auth (error %s); using password auth",
                    self.url, exc.code,
                )
                await self._request("ping", "password", [])
                self.mode = "password"
                return
            self.mode = "token"

    async def _request(
        self, endpoint: str, mode: str, extra: list[tuple[str, str]]
    ) -> dict[str, Any]:
        pairs = [*self._auth_params(mode), *extra]
        url = f"{self.url}/rest/{endpoint}"
        http = self._http()
        log.debug("subsonic call %s (%d params)", endpoint, len(extra))
        try:
            query = urlencode(pairs)
            if len(query) > MAX_QUERY_CHARS:
                ctx = http.post(url, data=pairs)
            else:
                ctx = http.get(f"{url}?{query}")
            async with ctx as resp:
                status = resp.status
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    body = None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason, timed_out = unreachable(exc, self.read_timeout)
            raise SubsonicUnavailable(0, f"{endpoint}: {reason}", self.url, timed_out) from None
        answer = body.get("subsonic-response") if isinstance(body, dict) else None
        if not isinstance(answer, dict):
            raise SubsonicUnavailable(
                0, f"{endpoint} answered HTTP {status} without a Subsonic JSON body", self.url
            )
        if answer.get("status") != "ok":
            err = answer.get("error") or {}
            code = int(err.get("code", 0) or 0)
            message = str(err.get("message") or "request failed")
            if code in AUTH_FAILED or (code == 10 and endpoint == "ping" and mode != "token"):
                raise SubsonicAuthError(
                    code,
                    f"the service account {self.user or '(API key)'!r} was refused ({message}); "
                    "check upstream_user / upstream_password / upstream_api_key / upstream_auth",
                    self.url,
                )
            raise SubsonicError(code, f"{endpoint}: {message}", self.url)
        return answer


# ---- song objects ---------------------------------------------------------------


def shared_song(song: Mapping[str, Any]) -> dict[str, Any]:
    """The song object without the service account's per-user fields (safe to show anyone)."""
    return {k: v for k, v in song.items() if k not in PER_USER_FIELDS}


def song_record(source: str, song: Mapping[str, Any], folder: str | None = None) -> TrackRecord:
    """A TrackRecord from a Subsonic Child; ``mtime`` is the server's changed/created time.

    ``folder`` (the music folder id the song was listed under) is kept in ``raw``
    under FOLDER_KEY so folder-based visibility needs no round trip per song.
    """
    raw = shared_song(song)
    if folder is not None:
        raw[FOLDER_KEY] = folder
    size = to_int(song.get("size"))
    duration = song.get("duration")
    return TrackRecord(
        source=source,
        upstream_id=str(song["id"]),
        path=str(song["path"]) if song.get("path") else None,
        size=size if size is not None and size >= 0 else None,
        mtime=epoch(song.get("changed")) or epoch(song.get("created")),
        title=song.get("title"),
        artist=song.get("artist") or song.get("displayArtist"),
        album=song.get("album"),
        genre=song.get("genre"),
        year=to_int(song.get("year")),
        duration=float(duration) if isinstance(duration, (int, float)) else None,
        raw=raw,
    )


class SubsonicAdapter:
    """LibraryAdapter, PlaylistWriter and HistorySource for one Subsonic server."""

    def __init__(
        self,
        url: str,
        user: str = "",
        password: str = "",
        api_key: str = "",
        auth: str = "auto",
        path_map: str = "",
        page_size: int = PAGE_SIZE,
        enumerate_with: str = "auto",
        client: SubsonicClient | None = None,
    ) -> None:
        if enumerate_with not in ("auto", "search3", "albums"):
            raise ValueError(f"unknown enumeration {enumerate_with!r}")
        self.client = client or SubsonicClient(url, user, password, api_key, auth)
        self.url = self.client.url
        self.source = f"subsonic:{self.url}"
        self.path_map = parse_path_map(path_map)
        self.page_size = max(1, page_size)
        self.enumerate_with = enumerate_with
        #: How the last scan enumerated the library: "search3" or "albums".
        self.last_enumeration: str | None = None

    @classmethod
    def from_config(cls, config: Any) -> SubsonicAdapter:
        adapter = cls(
            config.upstream_url,
            config.upstream_user,
            config.upstream_password,
            config.upstream_api_key,
            config.upstream_auth,
            config.path_map,
        )
        adapter.client.set_timeouts(config.upstream_connect_timeout, config.upstream_timeout)
        return adapter

    async def check_reachable(self) -> None:
        """Raise SubsonicError unless the server answers ``ping`` now (is it down, or was it
        one track?)."""
        await self.client.call("ping")

    async def close(self) -> None:
        await self.client.close()

    # ---- library ---------------------------------------------------------------

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        """Every song now on the server; songs whose object did not change reuse ``known``."""
        songs: list[tuple[dict[str, Any], str | None]] | None = None
        if self.enumerate_with in ("auto", "search3"):
            try:
                songs = await self._per_folder(self._songs_by_search)
            except (SubsonicAuthError, SubsonicUnavailable):
                raise
            except SubsonicError as exc:
                if self.enumerate_with == "search3":
                    raise
                log.info("search3 failed on %s (%s); walking albums instead", self.url, exc.message)
            if songs is not None and not songs and self.enumerate_with == "auto":
                songs = None  # some servers answer nothing to an empty query: walk albums
            if songs is not None:
                self.last_enumeration = "search3"
        if songs is None:
            songs = await self._per_folder(self._songs_by_albums)
            self.last_enumeration = "albums"
        records: list[TrackRecord] = []
        seen: set[str] = set()
        for song, folder in songs:
            if song.get("isDir") or song.get("isVideo") or "id" not in song:
                continue
            rec = song_record(self.source, song, folder)
            if rec.upstream_id in seen:
                continue
            seen.add(rec.upstream_id)
            old = known.get(rec.upstream_id)
            if old is not None and old.raw == rec.raw and (old.size, old.mtime) == (rec.size, rec.mtime):
                records.append(old)
            else:
                records.append(rec)
        log.info("%s lists %d songs (%s)", self.url, len(records), self.last_enumeration)
        return records

    async def _music_folders(self) -> list[str]:
        """The server's music folder ids; [] when it has no ``getMusicFolders`` to ask."""
        try:
            body = await self.client.call("getMusicFolders")
        except (SubsonicAuthError, SubsonicUnavailable):
            raise
        except SubsonicError as exc:
            log.info("getMusicFolders failed on %s (%s); listing without folders",
                     self.url, exc.message)
            return []
        folders = (body.get("musicFolders") or {}).get("musicFolder") or []
        if isinstance(folders, dict):
            folders = [folders]
        ids: list[str] = []
        for folder in folders:
            if isinstance(folder, dict) and folder.get("id") is not None:
                fid = str(folder["id"])
                if fid not in ids:
                    ids.append(fid)
        return ids

    async def _per_folder(
        self, enumerate_songs: Callable[[str | None], Awaitable[list[dict[str, Any]]]]
    ) -> list[tuple[dict[str, Any], str | None]]:
        """(song, folder id) for every song, listed folder by folder when the server has folders.

        ``enumerate_songs(folder)`` lists one folder (None: the whole library). A song
        in several folders keeps the first. When every folder lists exactly the same
        songs (more than one folder), the server ignored ``musicFolderId``: recording
        a folder would then be a lie, so the songs record none.
        """
        folders = await self._music_folders()
        if not folders:
            return [(s, None) for s in await enumerate_songs(None)]
        listed = [await enumerate_songs(f) for f in folders]
        id_sets = [frozenset(str(s.get("id")) for s in songs) for songs in listed]
        if len(folders) > 1 and id_sets[0] and all(ids == id_sets[0] for ids in id_sets):
            log.warning("%s ignores musicFolderId: songs record no music folder", self.url)
            return [(s, None) for s in listed[0]]
        out: list[tuple[dict[str, Any], str | None]] = []
        seen: set[str] = set()
        for folder, songs in zip(folders, listed, strict=True):
            for song in songs:
                sid = str(song.get("id"))
                if sid not in seen:
                    seen.add(sid)
                    out.append((song, folder))
        return out

    async def _songs_by_search(self, folder: str | None = None) -> list[dict[str, Any]]:
        songs: list[dict[str, Any]] = []
        ids: set[str] = set()
        offset = 0
        while True:
            body = await self.client.call(
                "search3", query="", artistCount=0, albumCount=0,
                songCount=self.page_size, songOffset=offset, musicFolderId=folder,
            )
            page = (body.get("searchResult3") or {}).get("song") or []
            new = [s for s in page if str(s.get("id")) not in ids]
            if not new:
                break  # end, or a server that ignores songOffset: never loop forever
            ids.update(str(s.get("id")) for s in new)
            songs.extend(new)
            if len(page) < self.page_size:
                break
            offset += len(page)
        return songs

    async def _songs_by_albums(self, folder: str | None = None) -> list[dict[str, Any]]:
        album_ids: list[str] = []
        offset = 0
        while True:
            body = await self.client.call(
                "getAlbumList2", type="alphabeticalByName", size=self.page_size, offset=offset,
                musicFolderId=folder,
            )
            page = (body.get("albumList2") or {}).get("album") or []
            fresh = [str(a["id"]) for a in page if "id" in a and str(a["id"]) not in album_ids]
            if not fresh:
                break
            album_ids.extend(fresh)
            if len(page) < self.page_size:
                break
            offset += len(page)
        return [s for songs in await self._album_songs(album_ids) for s in songs]

    async def _album_songs(self, album_ids: Sequence[str]) -> list[list[dict[str, Any]]]:
        limit = asyncio.Semaphore(ALBUM_CONCURRENCY)

        async def one(album_id: str) -> list[dict[str, Any]]:
            async with limit:
                try:
                    body = await self.client.call("getAlbum", id=album_id)
                except SubsonicError as exc:
                    if isinstance(exc, (SubsonicAuthError, SubsonicUnavailable)):
                        raise
                    log.warning("album %s skipped: %s", album_id, exc.message)
                    return []
            album = body.get("album") or {}
            return [s for s in album.get("song") or [] if isinstance(s, dict)]

        return list(await asyncio.gather(*(one(a) for a in album_ids)))

    # ---- audio -----------------------------------------------------------------

    def local_path(self, track: TrackRecord) -> Path | None:
        """The mounted copy of ``track`` when the path map has one of the right size."""
        raw = track.raw or {}
        want = to_int(raw.get("size"))
        return verified_local_copy(raw.get("path") or track.path,
                                   track.size if want is None else want,
                                   self.path_map, track.upstream_id)

    def audio_location(self, track: TrackRecord) -> str:
        """A local path (mapped, size verified) or a signed ``download`` URL; the URL is a secret."""
        local = self.local_path(track)
        if local is not None:
            return str(local)
        return self.client.signed_url("download", [("id", track.upstream_id)])

    # ---- playlists -------------------------------------------------------------

    async def write_playlist(self, name: str, tracks: list[TrackRecord]) -> str:
        """Create playlist ``name`` or replace the songs of the service account's one; returns its id."""
        song_ids = [t.upstream_id for t in tracks]
        existing = await self._playlist_id(name)
        if existing is None:
            body = await self.client.call("createPlaylist", name=name, songId=song_ids)
            created = body.get("playlist") or {}
            playlist_id = str(created["id"]) if created.get("id") else await self._playlist_id(name)
            if playlist_id is None:
                raise SubsonicError(0, f"createPlaylist {name!r} left no playlist", self.url)
            return playlist_id
        body = await self.client.call("getPlaylist", id=existing)
        count = len((body.get("playlist") or {}).get("entry") or [])
        await self.client.call(
            "updatePlaylist",
            playlistId=existing,
            songIndexToRemove=list(range(count)),
            songIdToAdd=song_ids,
        )
        return existing

    async def _playlist_id(self, name: str) -> str | None:
        body = await self.client.call("getPlaylists")
        mine = [
            p for p in (body.get("playlists") or {}).get("playlist") or []
            if p.get("name") == name and p.get("owner") in (None, self.client.user)
        ]
        return str(mine[0]["id"]) if mine else None

    # ---- history ---------------------------------------------------------------

    async def listening_history(self, user: str | None = None) -> list[HistoryEntry]:
        """The service account's plays: songs of its frequent and recent albums.

        Subsonic offers no way to read another user's play counts, so only the
        service account's history exists here. Servers that report no per-song
        ``playCount`` (supysonic) still list played albums under ``recent``:
        their songs then count as played once.
        """
        if user and user != self.client.user:
            raise NoListeningHistory(
                f"musegate reads listening history from {self.url} with its service account "
                f"{self.client.user!r}; the server does not let it read {user!r}'s plays"
            )
        frequent, recent = await asyncio.gather(
            self.client.call("getAlbumList2", type="frequent", size=HISTORY_ALBUMS),
            self.client.call("getAlbumList2", type="recent", size=HISTORY_ALBUMS),
        )
        frequent_albums = (frequent.get("albumList2") or {}).get("album") or []
        recent_albums = (recent.get("albumList2") or {}).get("album") or []
        order: dict[str, dict[str, Any]] = {}
        for album in [*recent_albums, *frequent_albums]:
            order.setdefault(str(album["id"]), album)
        ids = list(order)
        per_album = await self._album_songs(ids)
        entries: dict[str, HistoryEntry] = {}
        counted = False
        for songs in per_album:
            for song in songs:
                if "playCount" not in song:
                    continue
                counted = True
                plays = to_int(song.get("playCount")) or 0
                if plays > 0:
                    entries[str(song["id"])] = HistoryEntry(
                        str(song["id"]), plays, epoch(song.get("played"))
                    )
        if not counted:
            recent_ids = {str(a["id"]) for a in recent_albums}
            for album_id, songs in zip(ids, per_album, strict=True):
                if album_id not in recent_ids:
                    continue
                album = order[album_id]
                plays = max(1, to_int(album.get("playCount")) or 1)
                for song in songs:
                    entries.setdefault(
                        str(song["id"]),
                        HistoryEntry(str(song["id"]), plays, epoch(album.get("played"))),
                    )
        if not entries:
            raise NoListeningHistory(
                f"{self.url} has recorded no plays for {self.client.user!r} yet"
            )
        return sorted(entries.values(), key=lambda e: (-e.play_count, -(e.last_played or 0)))
