"""Jellyfin as a library source: scan, audio, playlists and listening history.

musegate talks to Jellyfin with one service account, never with a caller's
token: either an API key (Dashboard → API Keys; ``upstream_api_key``, which may
also be a user's access token) or a user name and password exchanged for an
access token with ``POST /Users/AuthenticateByName``. Every request carries the
token in Jellyfin's own header, ``Authorization: MediaBrowser Client=…,
Device=…, DeviceId=…, Version=…, Token=…``, so nothing secret sits in a logged
URL; the one exception is the download URL handed to the analyzer, which needs
``api_key=`` in its query (the analyzer redacts query strings).

Jellyfin quirks live here and nowhere else:

* Ids are 32-hex GUIDs and opaque; never parsed.
* An API key is not a user. It sees every library, but playlists and play
  counts belong to users, so those need ``upstream_user`` (the account to act
  as, looked up by name with ``GET /Users``).
* ``Path`` is reported to administrators and API keys only, and is the
  server's own path: a mapped local file is trusted only when its size equals
  the media source's ``Size``; otherwise the audio comes from
  ``/Items/{id}/Download``.
* Libraries are named in ``libraries`` (comma-separated); their ids come from
  the account's views (``/Users/{id}/Views``) or, for an API key,
  ``/Library/MediaFolders``.
* Song objects are requested without user data (``EnableUserData=false``) and
  stored without ``Path``/``MediaSources``, since raw objects may be shown to
  other users; the gateway fetches real BaseItemDtos with the caller's token.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from adapters.base import HistoryEntry, NoListeningHistory
from adapters.common import (
    MappedOrDownloaded,
    OwnedSession,
    ServerError,
    epoch,
    parse_path_map,
    to_int,
    unreachable,
)
from analysis.store import TrackRecord

log = logging.getLogger(__name__)

CLIENT_NAME = "musegate"
CLIENT_VERSION = "0.1.0"
PAGE_SIZE = 500
#: Ids per ``POST /Playlists/{id}/Items?Ids=…`` (keeps URLs short for proxies).
IDS_PER_REQUEST = 100
TICKS_PER_SECOND = 10_000_000
#: What a scan asks for: enough to fill a TrackRecord and to notice changes.
SCAN_FIELDS = "Path,MediaSources,Genres,DateCreated,Etag,ParentId"
#: Fields of a song that are private or per-user, dropped before it is stored as ``raw``.
PRIVATE_FIELDS = frozenset({"UserData", "Path", "MediaSources"})


class JellyfinError(ServerError):
    """Jellyfin answered with an error (or could not be used); the message names the server."""

    SERVER = "Jellyfin server"


class JellyfinAuthError(JellyfinError):
    """The service account was refused: a configuration problem, not a transient one."""


class JellyfinUnavailable(JellyfinError):
    """The server could not be reached or did not answer like Jellyfin."""


class JellyfinClient(OwnedSession):
    """A service-account session with one Jellyfin server (JSON, token in the auth header).

    With ``api_key`` the token is used as is; otherwise ``user``/``password`` are
    exchanged for an access token on first use (and again if it is revoked).
    ``user_id`` is the account playlists and history belong to (None for an API
    key without ``user``). Tokens never reach a log line.
    """

    def __init__(
        self,
        url: str,
        api_key: str = "",
        user: str = "",
        password: str = "",
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not url:
            raise ValueError("upstream_url is empty")
        if not api_key and not user:
            raise ValueError("Jellyfin needs upstream_api_key, or upstream_user and upstream_password")
        self.url = url.rstrip("/")
        self.user = user
        self._api_key = api_key
        self._password = password
        self._token: str | None = api_key or None
        self.user_id: str | None = None
        self.is_api_key = False
        self._connected = False
        self._init_session(session)
        # Stable per server and account, so Jellyfin shows one device, not one per restart.
        self.device_id = hashlib.sha256(f"musegate|{self.url}|{user}".encode()).hexdigest()[:32]

    def auth_header(self) -> str:
        """Jellyfin's ``MediaBrowser`` authorization header for the service account."""
        parts = [
            f'Client="{CLIENT_NAME}"', f'Device="{CLIENT_NAME}"',
            f'DeviceId="{self.device_id}"', f'Version="{CLIENT_VERSION}"',
        ]
        if self._token:
            parts.append(f'Token="{self._token}"')
        return "MediaBrowser " + ", ".join(parts)

    # ---- session ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Log in (password) or check the key, and learn which user the account is.

        ``GET /System/Info`` accepts both user tokens and API keys, so it is the
        check; ``/Users/Me`` then tells a user token from an API key.
        """
        if self._connected:
            return
        if not self._api_key:
            await self._login()
        await self._request("GET", "/System/Info", retry_login=False)
        if self._api_key:
            me = await self._request("GET", "/Users/Me", retry_login=False, allow=(400, 401, 403, 404))
            if isinstance(me, dict) and me.get("Id"):
                self.user_id = str(me["Id"])
            else:
                self.is_api_key = True
                if self.user:
                    self.user_id = self._user_id(await self._request("GET", "/Users"), self.user)
        self._connected = True

    async def _login(self) -> None:
        body = {"Username": self.user, "Pw": self._password}
        self._token = None
        answer = await self._request(
            "POST", "/Users/AuthenticateByName", json_body=body, retry_login=False, auth_kind="login"
        )
        if not isinstance(answer, dict) or not answer.get("AccessToken"):
            raise JellyfinUnavailable("AuthenticateByName answered without an AccessToken", self.url)
        self._token = str(answer["AccessToken"])
        self.user_id = str((answer.get("User") or {}).get("Id") or "") or None
        log.info("logged in to Jellyfin %s as %r", self.url, self.user)

    async def find_user(self, name_or_id: str) -> str:
        """The id of the user called ``name_or_id`` (or with that id); JellyfinError if none."""
        return self._user_id(await self.get("/Users"), name_or_id)

    def _user_id(self, users: Any, name_or_id: str) -> str:
        for user in users or []:
            if name_or_id.lower() in (str(user.get("Name", "")).lower(), str(user.get("Id", "")).lower()):
                return str(user["Id"])
        raise JellyfinError(f"no user named {name_or_id!r}", self.url)

    # ---- calls -----------------------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        await self.connect()
        return await self._request("GET", path, params=params)

    async def post(
        self, path: str, params: Mapping[str, Any] | None = None, json_body: Any = None
    ) -> Any:
        await self.connect()
        return await self._request("POST", path, params=params, json_body=json_body)

    async def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        await self.connect()
        return await self._request("DELETE", path, params=params)

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        retry_login: bool = True,
        allow: Sequence[int] = (),
        auth_kind: str = "token",
    ) -> Any:
        query = urlencode({k: _text(v) for k, v in (params or {}).items() if v is not None})
        url = f"{self.url}{path}" + (f"?{query}" if query else "")
        headers = {"Authorization": self.auth_header(), "Accept": "application/json"}
        log.debug("jellyfin %s %s", method, path)
        try:
            async with self._http().request(method, url, headers=headers, json=json_body) as resp:
                status = resp.status
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason, timed_out = unreachable(exc, self.read_timeout)
            raise JellyfinUnavailable(f"{method} {path}: {reason}", self.url,
                                      timed_out=timed_out) from None
        if status in allow:
            return None
        if status == 401:
            if retry_login and not self._api_key and self._password:
                self._connected = False
                await self._login()
                return await self._request(method, path, params, json_body, retry_login=False)
            raise JellyfinAuthError(self._refusal(auth_kind), self.url, status)
        if status == 403:
            raise JellyfinError(
                f"{method} {path} is forbidden for the service account "
                f"{self.user or '(API key)'!r}; it may need to be an administrator", self.url, status,
            )
        if status >= 500:  # the server (or a proxy before it) is failing, not refusing us
            raise JellyfinUnavailable(f"{method} {path} answered HTTP {status}", self.url, status)
        if status >= 400:
            raise JellyfinError(f"{method} {path} answered HTTP {status}", self.url, status)
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            raise JellyfinUnavailable(
                f"{method} {path} answered HTTP {status} without a JSON body; is this Jellyfin?",
                self.url, status,
            ) from None

    def _refusal(self, kind: str) -> str:
        if kind == "login":
            return (f"the service account {self.user!r} was refused (wrong user name or password); "
                    "check upstream_user / upstream_password")
        if self._api_key:
            return "the API key was refused (HTTP 401); check upstream_api_key"
        return (f"the access token of {self.user!r} was refused (HTTP 401); "
                "check upstream_user / upstream_password")

    def download_url(self, item_id: str) -> str:
        """``/Items/{id}/Download`` with the token in its query (for the analyzer); a secret."""
        if not self._token:
            raise JellyfinError("not logged in yet: scan the library before downloading audio", self.url)
        return f"{self.url}/Items/{quote(item_id)}/Download?" + urlencode({"api_key": self._token})


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def shared_item(item: Mapping[str, Any]) -> dict[str, Any]:
    """The song object without per-user data and server paths (safe to show anyone)."""
    return {k: v for k, v in item.items() if k not in PRIVATE_FIELDS}


def item_record(source: str, item: Mapping[str, Any]) -> TrackRecord:
    """A TrackRecord from an Audio BaseItemDto; ``size`` and ``path`` come from its media source."""
    sources = item.get("MediaSources") or []
    media = sources[0] if sources and isinstance(sources[0], dict) else {}
    size = to_int(media.get("Size"))
    path = item.get("Path") or media.get("Path")
    ticks = item.get("RunTimeTicks")
    artists = item.get("Artists") or []
    genres = item.get("Genres") or []
    return TrackRecord(
        source=source,
        upstream_id=str(item["Id"]),
        path=str(path) if path else None,
        size=size if size is not None and size >= 0 else None,
        mtime=epoch(item.get("DateCreated")),
        title=item.get("Name"),
        artist=(artists[0] if artists else None) or item.get("AlbumArtist"),
        album=item.get("Album"),
        genre=genres[0] if genres else None,
        year=to_int(item.get("ProductionYear")),
        duration=ticks / TICKS_PER_SECOND if isinstance(ticks, (int, float)) else None,
        raw=shared_item(item),
    )


class JellyfinAdapter(MappedOrDownloaded):
    """LibraryAdapter, PlaylistWriter and HistorySource for one Jellyfin server."""

    def __init__(
        self,
        url: str,
        api_key: str = "",
        user: str = "",
        password: str = "",
        path_map: str = "",
        libraries: str | Sequence[str] = "",
        page_size: int = PAGE_SIZE,
        client: JellyfinClient | None = None,
    ) -> None:
        self.client = client or JellyfinClient(url, api_key, user, password)
        self.url = self.client.url
        self.source = f"jellyfin:{self.url}"
        self.path_map = parse_path_map(path_map)
        names = libraries.split(",") if isinstance(libraries, str) else list(libraries)
        self.libraries = [n.strip() for n in names if n.strip()]
        self.page_size = max(1, page_size)

    @classmethod
    def from_config(cls, config: Any) -> JellyfinAdapter:
        adapter = cls(
            config.upstream_url,
            api_key=config.upstream_api_key,
            user=config.upstream_user,
            password=config.upstream_password,
            path_map=config.path_map,
            libraries=config.libraries,
        )
        adapter.client.set_timeouts(config.upstream_connect_timeout, config.upstream_timeout)
        return adapter

    async def check_reachable(self) -> None:
        """Raise JellyfinError unless ``/System/Info`` answers now (is the server down, or
        was it one track?)."""
        await self.client.get("/System/Info")

    async def close(self) -> None:
        await self.client.close()

    def _items_path(self) -> str:
        """``/Users/{id}/Items`` when the account is a user (its visibility), else ``/Items``."""
        uid = self.client.user_id
        return f"/Users/{uid}/Items" if uid and not self.client.is_api_key else "/Items"

    # ---- library ---------------------------------------------------------------------

    async def library_ids(self) -> dict[str, str]:
        """Every library the account sees, name → id."""
        await self.client.connect()
        if self.client.user_id and not self.client.is_api_key:
            body = await self.client.get(f"/Users/{self.client.user_id}/Views")
        else:
            body = await self.client.get("/Library/MediaFolders")
        return {str(v["Name"]): str(v["Id"]) for v in (body or {}).get("Items") or [] if "Id" in v}

    async def _parents(self) -> list[str | None]:
        if not self.libraries:
            return [None]
        found = await self.library_ids()
        folded = {name.lower(): lib_id for name, lib_id in found.items()}
        missing = [n for n in self.libraries if n.lower() not in folded]
        if missing:
            raise JellyfinError(
                f"no library named {', '.join(map(repr, missing))} (it has: "
                f"{', '.join(sorted(found)) or 'none'}); check libraries",
                self.url,
            )
        return [folded[n.lower()] for n in self.libraries]

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        """Every audio item now in the chosen libraries; unchanged ones reuse ``known``."""
        records: list[TrackRecord] = []
        seen: set[str] = set()
        for parent in await self._parents():
            for item in await self._audio_items(parent):
                if "Id" not in item or str(item["Id"]) in seen:
                    continue
                rec = item_record(self.source, item)
                seen.add(rec.upstream_id)
                old = known.get(rec.upstream_id)
                if old is not None and old.raw == rec.raw and (old.size, old.mtime, old.path) == (
                    rec.size, rec.mtime, rec.path
                ):
                    records.append(old)
                else:
                    records.append(rec)
        log.info("%s lists %d songs", self.url, len(records))
        return records

    async def _audio_items(self, parent: str | None) -> list[dict[str, Any]]:
        """All Audio items under ``parent`` (or everywhere), page by page."""
        items: list[dict[str, Any]] = []
        ids: set[str] = set()
        start = 0
        path = self._items_path()
        while True:
            params = {
                "IncludeItemTypes": "Audio", "Recursive": True, "Fields": SCAN_FIELDS,
                "SortBy": "SortName", "SortOrder": "Ascending", "EnableUserData": False,
                "EnableImages": False, "StartIndex": start, "Limit": self.page_size,
                "ParentId": parent,
            }
            body = await self.client.get(path, params)
            page = [i for i in (body or {}).get("Items") or [] if isinstance(i, dict)]
            fresh = [i for i in page if str(i.get("Id")) not in ids]
            ids.update(str(i.get("Id")) for i in fresh)
            items.extend(fresh)
            total = to_int((body or {}).get("TotalRecordCount"))
            start += len(page)
            if not fresh or len(page) < self.page_size or (total is not None and start >= total):
                break  # the end, or a server ignoring StartIndex: never loop forever
        return items

    # ---- audio -----------------------------------------------------------------------

    # local_path / audio_location: adapters.common.MappedOrDownloaded

    # ---- playlists -------------------------------------------------------------------

    async def _owner(self, what: str) -> str:
        await self.client.connect()
        if not self.client.user_id:
            raise JellyfinError(
                f"{what} belong to a Jellyfin user, and an API key is none: set upstream_user "
                "to the user musegate should act as", self.url,
            )
        return self.client.user_id

    async def write_playlist(self, name: str, tracks: list[TrackRecord]) -> str:
        """Create playlist ``name``, or fill the account's existing one with ``tracks``; returns its id.

        An existing playlist keeps its id (and so its place in clients): its
        entries are removed and ``tracks`` added in order.
        """
        uid = await self._owner("playlists")
        ids = [t.upstream_id for t in tracks]
        existing = await self._playlist_id(uid, name)
        if existing is None:
            body = {"Name": name, "Ids": ids, "UserId": uid, "MediaType": "Audio"}
            answer = await self.client.post("/Playlists", json_body=body)
            playlist_id = (answer or {}).get("Id") or await self._playlist_id(uid, name)
            if not playlist_id:
                raise JellyfinError(f"POST /Playlists {name!r} left no playlist", self.url)
            return str(playlist_id)
        current = await self.client.get(f"/Playlists/{existing}/Items", {"UserId": uid, "EnableImages": False})
        entries = [str(i["PlaylistItemId"]) for i in (current or {}).get("Items") or [] if i.get("PlaylistItemId")]
        for n in range(0, len(entries), IDS_PER_REQUEST):
            await self.client.delete(
                f"/Playlists/{existing}/Items", {"EntryIds": entries[n:n + IDS_PER_REQUEST]}
            )
        for n in range(0, len(ids), IDS_PER_REQUEST):
            await self.client.post(
                f"/Playlists/{existing}/Items", {"Ids": ids[n:n + IDS_PER_REQUEST], "UserId": uid}
            )
        return existing

    async def _playlist_id(self, uid: str, name: str) -> str | None:
        body = await self.client.get(
            f"/Users/{uid}/Items",
            {"IncludeItemTypes": "Playlist", "Recursive": True, "EnableImages": False,
             "EnableUserData": False},
        )
        mine = [p for p in (body or {}).get("Items") or [] if p.get("Name") == name]
        return str(mine[0]["Id"]) if mine else None

    # ---- history ---------------------------------------------------------------------

    async def listening_history(self, user: str | None = None) -> list[HistoryEntry]:
        """``user``'s played songs (name or id; default: the service account's user).

        Jellyfin keeps play counts per user (``UserData.PlayCount`` and
        ``LastPlayedDate``); another user's are readable with an API key or an
        administrator's token.
        """
        if user:
            await self.client.connect()
            own = self.client.user_id and user.lower() in (self.client.user.lower(), self.client.user_id)
            uid = self.client.user_id if own else await self.client.find_user(user)
        else:
            try:
                uid = await self._owner("play counts")
            except (JellyfinAuthError, JellyfinUnavailable):
                raise
            except JellyfinError as exc:
                raise NoListeningHistory(str(exc)) from None
        assert uid is not None
        entries: list[HistoryEntry] = []
        start = 0
        while True:
            body = await self.client.get(f"/Users/{uid}/Items", {
                "IncludeItemTypes": "Audio", "Recursive": True, "Filters": "IsPlayed",
                "SortBy": "PlayCount,DatePlayed", "SortOrder": "Descending,Descending",
                "EnableUserData": True, "EnableImages": False, "StartIndex": start,
                "Limit": self.page_size,
            })
            page = (body or {}).get("Items") or []
            for item in page:
                data = item.get("UserData") or {}
                plays = to_int(data.get("PlayCount")) or 0
                if plays <= 0 and not data.get("Played"):
                    continue
                entries.append(HistoryEntry(str(item["Id"]), max(plays, 1), epoch(data.get("LastPlayedDate"))))
            start += len(page)
            total = to_int((body or {}).get("TotalRecordCount"))
            if not page or len(page) < self.page_size or (total is not None and start >= total):
                break
        if not entries:
            raise NoListeningHistory(f"{self.url} has recorded no plays for {user or self.client.user!r} yet")
        return sorted(entries, key=lambda e: (-e.play_count, -(e.last_played or 0)))
