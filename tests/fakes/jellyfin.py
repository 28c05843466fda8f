"""A fake Jellyfin server (10.9 / 10.10 API) for musegate's tests.

Jellyfin cannot be installed in the test environment, so this aiohttp app
answers the part of Jellyfin's HTTP API that musegate and music clients touch,
shaped after Jellyfin's own published API: the ``Jellyfin.Api`` controllers
(``SystemController``, ``UserController``, ``UserViewsController``,
``ItemsController``, ``UserLibraryController``, ``LibraryController``,
``InstantMixController``, ``PlaylistsController``, ``ArtistsController``,
``MusicGenresController``, ``AudioController``, ``UniversalAudioController``,
``ImageController``, ``DynamicHlsController``), the authorization header parser
(``AuthorizationContext``) and the ``BaseItemDto`` / ``QueryResult`` /
``UserDto`` / ``AuthenticationResult`` DTOs. It is written from those facts,
not from Jellyfin's code. What it copies faithfully:

* Auth exactly as ``AuthorizationContext`` reads it: ``X-Emby-Authorization``
  first, else ``Authorization``, scheme ``MediaBrowser`` or ``Emby``, then
  comma-separated ``Key="value"`` pairs (keys case-insensitive); the token is
  ``Token`` from that header, else ``X-Emby-Token``, else
  ``X-MediaBrowser-Token``, else the ``ApiKey`` query, else ``api_key``.
  A missing or unknown token on an authorised route → 401 with an empty body.
  API keys are not users: they see everything unless a ``userId`` is given.
* Routes and query parameter names are case-insensitive (ASP.NET Core routing).
* Ids are 32-hex GUIDs ("N" format) as Jellyfin serialises them; ``ServerId``
  likewise. JSON is PascalCase.
* ``BaseItemDto`` honours ``Fields`` (``Path``, ``MediaSources``, ``Genres``,
  ``DateCreated``, ``Etag``, ``SortName``, ``ChildCount``, ``CanDownload``,
  ``ParentId`` is always there), ``EnableUserData``, ``EnableImages``,
  ``ImageTypeLimit`` and ``EnableImageTypes``. ``Path`` (and the media source
  path) is only shown to administrators and API keys.
* ``Items?Ids=`` does not keep the requested order (the apiclient documents
  this): results come in library order unless ``SortBy`` says otherwise.
* Per-user visibility: a user restricted to some libraries never sees other
  libraries' songs, albums, artists or genres anywhere (Items, Ids, InstantMix,
  Similar, streams, Download → 404).
* Instant Mix is Jellyfin's native one: songs sharing a genre with the seed
  (its genres; an album's, artist's or playlist's songs' genres; or the genre),
  in random order, at most 200, then ``limit``. The shuffle uses ``fake.rng``
  (seeded) so tests stay deterministic.
* Streams (``/Audio/{id}/stream``, ``stream.{ext}``, ``universal``) and
  ``/Items/{id}/Download`` honour Range (206, 416) and HEAD; a tiny HLS
  playlist and segment; ``/Items/{id}/Images/Primary`` is a real PNG (served
  anonymously, as Jellyfin does); ``/socket`` is a websocket that sends
  ``ForceKeepAlive`` on connect and answers ``KeepAlive`` with ``KeepAlive``;
  ``GET /web`` redirects (302) to ``/web/``.

Usage::

    fake = FakeJellyfin()                       # or FakeJellyfin(base_url="/jellyfin")
    music = fake.add_library("Music")
    fake.add_library("Kids")
    admin_id, admin_token = fake.add_user("admin", "pw", admin=True)
    bob_id, bob_token = fake.add_user("bob", "bobpw", libraries=["Kids"])
    key = fake.add_api_key("musegate")
    song = fake.add_song("Music", "Low 1", "Artist A", "Album A", "Rock",
                         "/media/music/a/low1.flac", 12.0, tmp_path / "low1.flac")
    fake.set_user_data(admin_id, song, play_count=3, last_played=1_700_000_000.0)
    url = await fake.start()                    # http://127.0.0.1:PORT[/jellyfin]
    ...                                         # requests with X-Emby-Token: admin_token
    assert fake.requests[-1].path == "/Items"   # (method, path, query, headers)
    await fake.stop(); await fake.start()       # down, then back on the same port
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import WSMsgType, web
from multidict import CIMultiDict, MultiDict

VERSION = "10.10.3"
TICKS_PER_SECOND = 10_000_000
INSTANT_MIX_LIMIT = 200
CONTENT_TYPES = {
    "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg", "opus": "audio/ogg",
    "wav": "audio/wav", "m4a": "audio/mp4", "aac": "audio/aac",
}


def _png() -> bytes:
    """A valid 1×1 grey PNG (enough for clients and proxies to treat it as an image)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")


PNG = _png()


def _guid() -> str:
    return uuid.uuid4().hex


def _date(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


class Seen(NamedTuple):
    """One request the fake received (headers as sent, query as a multidict)."""

    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]


@dataclass
class Item:
    """One library object: CollectionFolder, MusicAlbum, MusicArtist, MusicGenre, Audio or Playlist."""

    id: str
    type: str
    name: str
    library: str | None = None  # library id (songs and albums)
    parent: str | None = None
    artist: str | None = None
    album: str | None = None
    album_id: str | None = None
    album_artist: str | None = None
    genres: list[str] = field(default_factory=list)
    path: str | None = None
    duration: float = 0.0
    data: bytes | Path | None = None
    created: float = 0.0
    collection_type: str | None = None
    owner: str | None = None  # playlists
    entries: list[tuple[str, str]] = field(default_factory=list)  # playlists: (entry id, item id)
    index: int | None = None
    year: int | None = None

    def bytes(self) -> bytes:
        if isinstance(self.data, Path):
            return self.data.read_bytes()
        return self.data or b""

    @property
    def container(self) -> str:
        return Path(self.path or "x.flac").suffix.lstrip(".").lower() or "flac"


@dataclass
class User:
    id: str
    name: str
    password: str
    libraries: set[str] | None  # library ids, None = all
    admin: bool
    can_download: bool = True


@dataclass
class Caller:
    """Who is asking: a user, or an API key (user None, elevated)."""

    token: str
    user: User | None

    @property
    def elevated(self) -> bool:
        return self.user is None or self.user.admin


Handler = Callable[[web.Request, dict[str, str], "Caller | None"], Awaitable[web.StreamResponse]]


def parse_authorization(value: str) -> dict[str, str] | None:
    """``MediaBrowser Client="…", Token="…"`` → a case-insensitive dict (None if not that scheme)."""
    scheme, _, rest = value.partition(" ")
    if not rest or scheme.lower() not in ("mediabrowser", "emby"):
        return None
    out: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, val = part.strip().partition("=")
        if eq and key:
            out[key.lower()] = val.strip().strip('"')
    return out


def request_token(request: web.Request) -> str | None:
    """The token Jellyfin would read from this request, in its order of precedence."""
    header = request.headers.get("X-Emby-Authorization") or request.headers.get("Authorization")
    parsed = parse_authorization(header) if header else None
    token = (parsed or {}).get("token")
    for name in ("X-Emby-Token", "X-MediaBrowser-Token"):
        token = token or request.headers.get(name)
    query = {k.lower(): v for k, v in request.query.items()}
    token = token or query.get("apikey") or query.get("api_key")
    return token or None


class FakeJellyfin:
    """The fake server; see the module docstring for what it is faithful to and how to use it."""

    def __init__(self, base_url: str = "", server_name: str = "Fake Jellyfin") -> None:
        self.base_url = "/" + base_url.strip("/") if base_url.strip("/") else ""
        self.server_id = _guid()
        self.server_name = server_name
        self.items: dict[str, Item] = {}
        self.users: dict[str, User] = {}
        self.tokens: dict[str, str | None] = {}  # token → user id (None: API key)
        self.api_keys: dict[str, str] = {}  # key → name
        self.user_data: dict[tuple[str, str], dict[str, Any]] = {}
        self.default_plays: dict[str, tuple[int, float | None]] = {}
        self.requests: list[Seen] = []
        self.rng = random.Random(0)
        self.sockets: set[web.WebSocketResponse] = set()
        self.port: int | None = None
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._clock = 1_700_000_000.0
        self._routes = self._build_routes()

    # ---- building the library ----------------------------------------------------------

    def add_library(self, name: str, collection_type: str = "music") -> str:
        lib = Item(_guid(), "CollectionFolder", name, collection_type=collection_type)
        lib.library = lib.id
        self.items[lib.id] = lib
        return lib.id

    def add_user(
        self, name: str, password: str, libraries: list[str] | None = None, admin: bool = False
    ) -> tuple[str, str]:
        """A user (seeing ``libraries`` by name, or all) and an access token for it."""
        libs = None if libraries is None else {self._library_id(n) for n in libraries}
        user = User(_guid(), name, password, libs, admin)
        self.users[user.id] = user
        token = _guid()
        self.tokens[token] = user.id
        return user.id, token

    def add_api_key(self, name: str) -> str:
        key = _guid()
        self.api_keys[key] = name
        self.tokens[key] = None
        return key

    def add_song(
        self,
        library: str,
        title: str,
        artist: str,
        album: str,
        genre: str | list[str] | None,
        path: str,
        duration_s: float,
        data: bytes | Path,
        play_count: int = 0,
        last_played: float | None = None,
    ) -> str:
        """A song (and implicitly its album, artist and genre items); returns its id.

        ``play_count``/``last_played`` are the song's user data for every user
        without their own (``set_user_data`` sets one user's).
        """
        lib = self._library_id(library)
        genres = [genre] if isinstance(genre, str) else list(genre or [])
        self._artist(artist)
        for g in genres:
            self._genre(g)
        album_item = self._album(lib, album, artist, genres)
        self._clock += 60
        song = Item(
            _guid(), "Audio", title, library=lib, parent=album_item.id, artist=artist,
            album=album, album_id=album_item.id, album_artist=artist, genres=genres,
            path=path, duration=float(duration_s), data=data, created=self._clock,
            index=sum(1 for i in self.items.values() if i.parent == album_item.id) + 1,
        )
        self.items[song.id] = song
        if play_count or last_played:
            self.default_plays[song.id] = (play_count, last_played)
        return song.id

    def remove_item(self, item_id: str) -> None:
        self.items.pop(item_id, None)

    def set_user_data(
        self, user_id: str, item_id: str, play_count: int = 0, last_played: float | None = None,
        is_favorite: bool = False,
    ) -> None:
        self.user_data[(user_id, item_id)] = {
            "play_count": play_count, "last_played": last_played, "is_favorite": is_favorite,
        }

    def _library_id(self, name_or_id: str) -> str:
        for item in self.items.values():
            if item.type == "CollectionFolder" and name_or_id in (item.name, item.id):
                return item.id
        raise KeyError(f"no library {name_or_id!r}")

    def _named(self, kind: str, name: str) -> Item | None:
        return next((i for i in self.items.values() if i.type == kind and i.name == name), None)

    def _artist(self, name: str) -> Item:
        found = self._named("MusicArtist", name)
        if found is None:
            found = Item(_guid(), "MusicArtist", name)
            self.items[found.id] = found
        return found

    def _genre(self, name: str) -> Item:
        found = self._named("MusicGenre", name)
        if found is None:
            found = Item(_guid(), "MusicGenre", name)
            self.items[found.id] = found
        return found

    def _album(self, lib: str, name: str, artist: str, genres: list[str]) -> Item:
        for item in self.items.values():
            if item.type == "MusicAlbum" and (item.library, item.name, item.album_artist) == (lib, name, artist):
                for g in genres:
                    if g not in item.genres:
                        item.genres.append(g)
                return item
        album = Item(_guid(), "MusicAlbum", name, library=lib, parent=lib, artist=artist,
                     album_artist=artist, genres=list(genres))
        self.items[album.id] = album
        return album

    # ---- lifecycle ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    async def start(self) -> str:
        """Serve on 127.0.0.1 (the same port as before after a ``stop``); returns the base URL."""
        self._runner = web.AppRunner(self.app(), handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port or 0, reuse_address=True)
        await site.start()
        if self.port is None:
            server = site._server
            assert server is not None
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{self.port}{self.base_url}"
        return self.url

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeJellyfin:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- dispatch -----------------------------------------------------------------------

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], bool, Handler]]:
        """(methods, pattern, needs auth, handler), matched case-insensitively like ASP.NET."""
        g = "(?P<id>[0-9a-fA-F-]{32,36})"
        table: list[tuple[str, str, bool, Handler]] = [
            ("GET", r"/System/Info/Public", False, self._public_info),
            ("GET", r"/System/Info", True, self._system_info),
            ("GET,POST", r"/System/Ping", False, self._ping),
            ("POST", r"/Users/AuthenticateByName", False, self._authenticate),
            ("GET", r"/Users", True, self._users),
            ("GET", r"/Users/Me", True, self._me),
            ("GET", rf"/Users/{g}", True, self._user),
            ("GET", r"/Users/(?P<uid>[0-9a-fA-F-]{32,36})/Views", True, self._views),
            ("GET", r"/UserViews", True, self._views),
            ("GET", r"/Library/MediaFolders", True, self._media_folders),
            ("GET", rf"/Users/(?P<uid>[0-9a-fA-F-]{{32,36}})/Items/{g}", True, self._item),
            ("GET", r"/Users/(?P<uid>[0-9a-fA-F-]{32,36})/Items", True, self._items),
            ("GET", r"/Items", True, self._items),
            ("GET", rf"/Items/{g}/Download", True, self._download),
            ("GET", rf"/Items/{g}/Images/(?P<kind>\w+)(?:/\d+)?", False, self._image),
            ("GET", rf"/(?:Items|Songs|Albums|Artists|Playlists)/{g}/InstantMix", True, self._instant_mix),
            ("GET", r"/(?:Artists|MusicGenres)/InstantMix", True, self._instant_mix),
            ("GET", r"/MusicGenres/(?P<name>[^/]+)/InstantMix", True, self._instant_mix),
            ("GET", rf"/(?:Items|Albums|Artists)/{g}/Similar", True, self._similar),
            ("GET", rf"/Items/{g}", True, self._item),
            ("POST", r"/Playlists", True, self._create_playlist),
            ("GET", rf"/Playlists/{g}/Items", True, self._playlist_items),
            ("POST", rf"/Playlists/{g}/Items", True, self._add_to_playlist),
            ("DELETE", rf"/Playlists/{g}/Items", True, self._remove_from_playlist),
            ("GET", rf"/Playlists/{g}", True, self._playlist),
            ("GET", r"/Artists(?:/AlbumArtists)?", True, self._artists),
            ("GET", r"/MusicGenres", True, self._genres),
            ("GET,HEAD", rf"/Audio/{g}/(?:stream|universal)(?:\.(?P<ext>\w+))?", True, self._stream),
            ("GET,HEAD", rf"/Audio/{g}/main\.m3u8", True, self._hls_playlist),
            ("GET,HEAD", rf"/Audio/{g}/hls1/(?P<pl>\w+)/(?P<seg>\d+)\.(?P<ext>\w+)", True, self._hls_segment),
            ("GET", r"/socket", False, self._socket),
            ("GET", r"/web", False, self._web_redirect),
            ("GET", r"/web/(?:index\.html)?", False, self._web),
        ]
        return [
            (m, re.compile(p + r"/?", re.IGNORECASE) if not p.endswith("/web") else re.compile(p, re.IGNORECASE), a, h)
            for m, p, a, h in table
        ]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, request.query.copy(), request.headers.copy()))
        path = request.path
        if self.base_url:
            if not path.lower().startswith(self.base_url.lower()):
                return web.Response(status=404)
            path = path[len(self.base_url):] or "/"
        if path == "/":
            raise web.HTTPFound(f"{self.base_url}/web/")
        for methods, pattern, needs_auth, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if request.method not in methods.split(",") and not (
                request.method == "HEAD" and "GET" in methods.split(",")
            ):
                continue
            caller = self._caller(request)
            if needs_auth and caller is None:
                return web.Response(status=401)
            params = {k: v for k, v in match.groupdict().items() if v is not None}
            try:
                return await handler(request, params, caller)
            except ValueError:
                # Jellyfin's ASP.NET model binding refuses a query value that does not
                # parse as the parameter's type (limit=null, StartIndex=x) with a 400
                # validation ProblemDetails, never a 500.
                return web.json_response(
                    {"title": "One or more validation errors occurred.", "status": 400},
                    status=400, content_type="application/problem+json")
        return web.Response(status=404)

    def _caller(self, request: web.Request) -> Caller | None:
        token = request_token(request)
        if token is None or token not in self.tokens:
            return None
        uid = self.tokens[token]
        return Caller(token, self.users.get(uid) if uid else None)

    # ---- helpers --------------------------------------------------------------------------

    @staticmethod
    def _q(request: web.Request) -> dict[str, str]:
        """Query parameters with lower-cased names (ASP.NET binds them case-insensitively)."""
        return {k.lower(): v for k, v in request.query.items()}

    @staticmethod
    def _list(value: str | None, sep: str = ",") -> list[str]:
        return [v.strip() for v in (value or "").split(sep) if v.strip()]

    @staticmethod
    def _bool(value: str | None, default: bool) -> bool:
        if value is None or value == "":
            return default
        return value.lower() == "true"

    def _effective_user(self, caller: Caller, q: dict[str, str], uid: str | None = None) -> User | None:
        """The user a request acts for: the route's or query's userId (if allowed), else the token's."""
        wanted = uid or q.get("userid")
        if wanted:
            user = self.users.get(wanted.replace("-", "").lower())
            if user is None:
                raise web.HTTPNotFound()
            if caller.user is not None and caller.user.id != user.id and not caller.user.admin:
                raise web.HTTPForbidden()
            return user
        return caller.user

    def _visible(self, item: Item, user: User | None) -> bool:
        if item.type == "Playlist":
            return user is None or item.owner == user.id
        if user is None or user.libraries is None:
            return True
        if item.type in ("Audio", "MusicAlbum", "CollectionFolder"):
            return item.library in user.libraries
        songs = self._songs_of(item, user)
        return bool(songs)

    def _songs(self, user: User | None) -> list[Item]:
        return [i for i in self.items.values() if i.type == "Audio" and self._visible(i, user)]

    def _songs_of(self, item: Item, user: User | None) -> list[Item]:
        """The songs an item stands for (as the user sees them)."""
        if item.type == "Audio":
            return [item] if self._visible(item, user) else []
        if item.type == "Playlist":
            songs = [self.items.get(i) for _, i in item.entries]
            return [s for s in songs if s is not None and self._visible(s, user)]
        songs = self._songs(user)
        if item.type == "MusicAlbum":
            return [s for s in songs if s.album_id == item.id]
        if item.type == "MusicArtist":
            return [s for s in songs if s.artist == item.name or s.album_artist == item.name]
        if item.type == "MusicGenre":
            return [s for s in songs if item.name in s.genres]
        if item.type == "CollectionFolder":
            return [s for s in songs if s.library == item.id]
        return []

    def _get_visible(self, item_id: str, user: User | None) -> Item:
        item = self.items.get(item_id.replace("-", "").lower())
        if item is None or not self._visible(item, user):
            raise web.HTTPNotFound()
        return item

    def _plays(self, user: User | None, item: Item) -> dict[str, Any]:
        if user is not None and (user.id, item.id) in self.user_data:
            return self.user_data[(user.id, item.id)]
        count, last = self.default_plays.get(item.id, (0, None))
        return {"play_count": count, "last_played": last, "is_favorite": False}

    # ---- DTOs -----------------------------------------------------------------------------

    def dto(
        self, item: Item, user: User | None, fields: Iterable[str] = (), *, elevated: bool = False,
        user_data: bool = True, images: bool = True, image_limit: int | None = None,
        image_types: Iterable[str] = (),
    ) -> dict[str, Any]:
        """A BaseItemDto for ``item`` as ``user`` sees it (field names and gating as Jellyfin's)."""
        want = {f.lower() for f in fields}
        dto: dict[str, Any] = {"Name": item.name, "ServerId": self.server_id, "Id": item.id}
        if "etag" in want:
            dto["Etag"] = hashlib.md5(f"{item.id}{item.name}{item.genres}{item.path}".encode()).hexdigest()  # noqa: S324
        if "datecreated" in want:
            dto["DateCreated"] = _date(item.created or self._clock)
        if "candownload" in want:
            dto["CanDownload"] = item.type == "Audio" and (user is None or user.can_download)
        if "sortname" in want:
            dto["SortName"] = item.name.lower()
        if item.type == "CollectionFolder":
            dto.update(IsFolder=True, Type="CollectionFolder", CollectionType=item.collection_type,
                       LocationType="FileSystem")
        elif item.type == "Audio":
            dto.update(
                IsFolder=False, Type="Audio", ParentId=item.parent, Container=item.container,
                RunTimeTicks=int(item.duration * TICKS_PER_SECOND), IndexNumber=item.index,
                ProductionYear=item.year, LocationType="FileSystem", MediaType="Audio",
                ChannelId=None, Album=item.album, AlbumId=item.album_id, AlbumArtist=item.album_artist,
                Artists=[item.artist],
                ArtistItems=[{"Name": item.artist, "Id": self._artist(item.artist or "").id}],
                AlbumArtists=[{"Name": item.album_artist, "Id": self._artist(item.album_artist or "").id}],
            )
            if images:
                dto["AlbumPrimaryImageTag"] = self._tag(item.album_id or "")
        elif item.type == "MusicAlbum":
            songs = self._songs_of(item, user)
            dto.update(
                IsFolder=True, Type="MusicAlbum", ParentId=item.parent, LocationType="FileSystem",
                RunTimeTicks=int(sum(s.duration for s in songs) * TICKS_PER_SECOND),
                AlbumArtist=item.album_artist, Artists=[item.artist],
                ArtistItems=[{"Name": item.artist, "Id": self._artist(item.artist or "").id}],
                AlbumArtists=[{"Name": item.album_artist, "Id": self._artist(item.album_artist or "").id}],
            )
            if "childcount" in want:
                dto["ChildCount"] = len(songs)
        elif item.type == "MusicArtist":
            dto.update(IsFolder=True, Type="MusicArtist", LocationType="FileSystem")
        elif item.type == "MusicGenre":
            dto.update(IsFolder=True, Type="MusicGenre", LocationType="FileSystem")
        elif item.type == "Playlist":
            dto.update(IsFolder=True, Type="Playlist", MediaType="Audio", LocationType="FileSystem",
                       RunTimeTicks=int(sum(s.duration for s in self._songs_of(item, user)) * TICKS_PER_SECOND))
            if "childcount" in want:
                dto["ChildCount"] = len(item.entries)
        if "genres" in want and item.type in ("Audio", "MusicAlbum"):
            dto["Genres"] = list(item.genres)
            dto["GenreItems"] = [{"Name": g, "Id": self._genre(g).id} for g in item.genres]
        if "path" in want and elevated and item.path:
            dto["Path"] = item.path
        if "mediasources" in want and item.type == "Audio":
            source: dict[str, Any] = {
                "Protocol": "File", "Id": item.id, "Type": "Default", "Container": item.container,
                "Size": len(item.bytes()), "Name": item.name, "IsRemote": False,
                "RunTimeTicks": int(item.duration * TICKS_PER_SECOND), "SupportsDirectPlay": True,
                "SupportsDirectStream": True, "SupportsTranscoding": True,
                "MediaStreams": [{"Codec": item.container, "Type": "Audio", "Index": 0, "IsDefault": True}],
            }
            if elevated:
                source["Path"] = item.path
            dto["MediaSources"] = [source]
        if images:
            types = {t.lower() for t in image_types}
            tags = {"Primary": self._tag(item.id)} if item.type != "MusicGenre" else {}
            if types:
                tags = {k: v for k, v in tags.items() if k.lower() in types}
            if image_limit is not None and image_limit <= 0:
                tags = {}
            dto["ImageTags"] = tags
            dto["BackdropImageTags"] = []
            dto["ImageBlurHashes"] = {}
        if user is not None and user_data:
            plays = self._plays(user, item)
            ud: dict[str, Any] = {
                "PlaybackPositionTicks": 0, "PlayCount": plays["play_count"],
                "IsFavorite": plays["is_favorite"], "Played": plays["play_count"] > 0,
                "Key": item.id, "ItemId": item.id,
            }
            if plays["last_played"] is not None:
                ud["LastPlayedDate"] = _date(plays["last_played"])
            dto["UserData"] = ud
        # Jellyfin's JSON options omit nulls (JsonIgnoreCondition.WhenWritingNull).
        return {k: v for k, v in dto.items() if v is not None}

    @staticmethod
    def _tag(item_id: str) -> str:
        return hashlib.md5(item_id.encode()).hexdigest()  # noqa: S324 - an image tag, not security

    def _dto_options(self, q: dict[str, str]) -> dict[str, Any]:
        limit = q.get("imagetypelimit")
        return {
            "fields": self._list(q.get("fields")),
            "user_data": self._bool(q.get("enableuserdata"), True),
            "images": self._bool(q.get("enableimages"), True),
            "image_limit": int(limit) if limit not in (None, "") else None,
            "image_types": self._list(q.get("enableimagetypes")),
        }

    def _result(
        self, items: list[Item], user: User | None, caller: Caller, q: dict[str, str], *,
        start: int = 0, limit: int | None = None, extra: Callable[[Item, dict[str, Any]], None] | None = None,
    ) -> web.Response:
        opts = self._dto_options(q)
        total = len(items)
        page = items[start:] if limit is None else items[start:start + limit]
        elevated = caller.elevated if user is None or caller.user is None else user.admin
        dtos = []
        for item in page:
            dto = self.dto(item, user, elevated=elevated, **opts)
            if extra:
                extra(item, dto)
            dtos.append(dto)
        return web.json_response({"Items": dtos, "TotalRecordCount": total, "StartIndex": start})

    # ---- system and users -------------------------------------------------------------------

    def _public(self) -> dict[str, Any]:
        return {
            "LocalAddress": self.url, "ServerName": self.server_name, "Version": VERSION,
            "ProductName": "Jellyfin Server", "OperatingSystem": "", "Id": self.server_id,
            "StartupWizardCompleted": True,
        }

    async def _public_info(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        return web.json_response(self._public())

    async def _system_info(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        info = self._public() | {
            "OperatingSystemDisplayName": "Linux", "HasPendingRestart": False, "IsShuttingDown": False,
            "SupportsLibraryMonitor": True, "WebSocketPortNumber": self.port, "CanSelfRestart": False,
            "CanLaunchWebBrowser": False, "HasUpdateAvailable": False, "TranscodingTempPath": "",
            "CastReceiverApplications": [], "ProgramDataPath": "", "WebPath": "", "ItemsByNamePath": "",
            "CachePath": "", "LogPath": "", "InternalMetadataPath": "", "PackageName": "fake",
        }
        return web.json_response(info)

    async def _ping(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        return web.json_response("Jellyfin Server")

    def _user_dto(self, user: User) -> dict[str, Any]:
        folders = sorted(user.libraries or [])
        return {
            "Name": user.name, "ServerId": self.server_id, "Id": user.id, "HasPassword": True,
            "HasConfiguredPassword": True, "HasConfiguredEasyPassword": False, "EnableAutoLogin": False,
            "LastLoginDate": _date(self._clock), "LastActivityDate": _date(self._clock),
            "Configuration": {"PlayDefaultAudioTrack": True, "OrderedViews": [], "MyMediaExcludes": []},
            "Policy": {
                "IsAdministrator": user.admin, "IsHidden": False, "IsDisabled": False,
                "EnableAllFolders": user.libraries is None, "EnabledFolders": folders,
                "EnableContentDownloading": user.can_download, "EnableMediaPlayback": True,
                "EnableAudioPlaybackTranscoding": True, "AuthenticationProviderId": "default",
                "PasswordResetProviderId": "default",
            },
        }

    async def _authenticate(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        try:
            body = {k.lower(): v for k, v in (await request.json()).items()}
        except (ValueError, AttributeError):
            return web.Response(status=400, text="Error processing request.")
        name, password = body.get("username"), body.get("pw") or ""
        user = next((u for u in self.users.values() if u.name.lower() == str(name).lower()), None)
        if user is None or user.password != password:
            return web.Response(status=401, text="Error processing request.")
        header = request.headers.get("X-Emby-Authorization") or request.headers.get("Authorization") or ""
        client = parse_authorization(header) or {}
        token = _guid()
        self.tokens[token] = user.id
        return web.json_response({
            "User": self._user_dto(user),
            "SessionInfo": {
                "Id": _guid(), "UserId": user.id, "UserName": user.name, "Client": client.get("client"),
                "DeviceId": client.get("deviceid"), "DeviceName": client.get("device"),
                "ApplicationVersion": client.get("version"), "ServerId": self.server_id,
                "IsActive": True, "SupportsMediaControl": False, "PlayableMediaTypes": [],
            },
            "AccessToken": token,
            "ServerId": self.server_id,
        })

    async def _users(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        if not c.elevated:
            return web.Response(status=403)
        return web.json_response([self._user_dto(u) for u in self.users.values()])

    async def _me(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        if c.user is None:
            return web.Response(status=400, text="Error processing request.")
        return web.json_response(self._user_dto(c.user))

    async def _user(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        user = self.users.get(p["id"].replace("-", "").lower())
        if user is None:
            return web.Response(status=404)
        return web.json_response(self._user_dto(user))

    async def _views(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q, p.get("uid"))
        if user is None:
            return web.Response(status=400, text="Error processing request.")
        libs = [i for i in self.items.values() if i.type == "CollectionFolder" and self._visible(i, user)]
        return self._result(libs, user, c, q)

    async def _media_folders(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        if not c.elevated:
            return web.Response(status=403)
        libs = [i for i in self.items.values() if i.type == "CollectionFolder"]
        return self._result(libs, None, c, self._q(request))

    # ---- items ------------------------------------------------------------------------------

    async def _item(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q, p.get("uid"))
        item = self._get_visible(p["id"], user)
        opts = self._dto_options(q)
        opts["fields"] = [*opts["fields"], "Genres", "DateCreated", "MediaSources", "Path", "Etag",
                          "ChildCount", "SortName", "CanDownload"]  # a single item carries all fields
        elevated = c.elevated if c.user is None else c.user.admin
        return web.json_response(self.dto(item, user, elevated=elevated, **opts))

    def _query_items(self, q: dict[str, str], user: User | None) -> list[Item]:
        types = {t.lower() for t in self._list(q.get("includeitemtypes"))}
        excluded = {t.lower() for t in self._list(q.get("excludeitemtypes"))}
        recursive = self._bool(q.get("recursive"), False)
        ids = [i.replace("-", "").lower() for i in self._list(q.get("ids"))]
        parent_id = (q.get("parentid") or "").replace("-", "").lower()
        if ids:
            wanted = set(ids)
            items = [i for i in self.items.values() if i.id in wanted]
        elif parent_id:
            parent = self.items.get(parent_id)
            if parent is None or not self._visible(parent, user):
                return []
            if parent.type in ("Playlist", "MusicAlbum", "MusicArtist", "MusicGenre"):
                items = self._songs_of(parent, user)
                if parent.type == "MusicArtist" and not types & {"audio"}:
                    album_ids = {s.album_id for s in items}
                    items = [self.items[a] for a in album_ids if a in self.items] if types else items
            elif recursive:
                items = [i for i in self.items.values() if i.library == parent.id and i.id != parent.id]
            else:
                items = [i for i in self.items.values() if i.parent == parent.id]
        elif recursive:
            items = [i for i in self.items.values()
                     if i.type in ("Audio", "MusicAlbum") or (i.type == "Playlist")]
        else:
            items = [i for i in self.items.values() if i.type == "CollectionFolder"]
        items = [i for i in items if self._visible(i, user)]
        if types:
            items = [i for i in items if i.type.lower() in types]
        if excluded:
            items = [i for i in items if i.type.lower() not in excluded]
        media = {m.lower() for m in self._list(q.get("mediatypes"))}
        if media:
            items = [i for i in items if i.type in ("Audio", "Playlist") and "audio" in media]
        genres = set(self._list(q.get("genres"), "|"))
        if genres:
            items = [i for i in items if genres & set(i.genres)]
        genre_ids = set(self._list(q.get("genreids"), "|")) | set(self._list(q.get("genreids")))
        if genre_ids:
            names = {self.items[g].name for g in genre_ids if g in self.items}
            items = [i for i in items if names & set(i.genres)]
        for key in ("artistids", "albumartistids"):
            artist_ids = set(self._list(q.get(key), "|")) | set(self._list(q.get(key)))
            if artist_ids:
                names = {self.items[a].name for a in artist_ids if a in self.items}
                attr = "artist" if key == "artistids" else "album_artist"
                items = [i for i in items if getattr(i, attr) in names]
        album_ids = set(self._list(q.get("albumids"), "|")) | set(self._list(q.get("albumids")))
        if album_ids:
            items = [i for i in items if i.album_id in album_ids]
        term = (q.get("searchterm") or "").lower()
        if term:
            items = [i for i in items if term in i.name.lower()]
        for flag in self._list(q.get("filters")):
            f = flag.lower()
            if f == "isplayed":
                items = [i for i in items if self._plays(user, i)["play_count"] > 0]
            elif f == "isunplayed":
                items = [i for i in items if self._plays(user, i)["play_count"] == 0]
            elif f == "isfavorite":
                items = [i for i in items if self._plays(user, i)["is_favorite"]]
        return self._sorted(items, user, q)

    def _sorted(self, items: list[Item], user: User | None, q: dict[str, str]) -> list[Item]:
        keys = self._list(q.get("sortby"))
        orders = [o.lower() for o in self._list(q.get("sortorder"))]
        if any(k.lower() == "random" for k in keys):
            items = list(items)
            self.rng.shuffle(items)
            return items
        for n, key in reversed(list(enumerate(keys))):
            desc = (orders[n] if n < len(orders) else (orders[0] if orders else "ascending")) == "descending"
            k = key.lower()

            def sort_key(i: Item, k: str = k) -> Any:
                if k in ("playcount",):
                    return self._plays(user, i)["play_count"]
                if k in ("dateplayed", "datelastplayed"):
                    return self._plays(user, i)["last_played"] or 0.0
                if k == "datecreated":
                    return i.created
                if k == "album":
                    return (i.album or "").lower()
                if k in ("albumartist", "artist"):
                    return (i.album_artist or "").lower()
                if k == "indexnumber":
                    return i.index or 0
                return i.name.lower()

            items = sorted(items, key=sort_key, reverse=desc)
        return items

    async def _items(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q, p.get("uid"))
        items = self._query_items(q, user)
        start = int(q.get("startindex") or 0)
        limit = int(q["limit"]) if q.get("limit") else None
        return self._result(items, user, c, q, start=start, limit=limit)

    async def _artists(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q)
        artists = [i for i in self.items.values() if i.type == "MusicArtist" and self._visible(i, user)]
        parent = q.get("parentid")
        if parent:
            artists = [a for a in artists if any(s.library == parent for s in self._songs_of(a, user))]
        artists = self._sorted(artists, user, q)
        start = int(q.get("startindex") or 0)
        limit = int(q["limit"]) if q.get("limit") else None
        return self._result(artists, user, c, q, start=start, limit=limit)

    async def _genres(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q)
        genres = [i for i in self.items.values() if i.type == "MusicGenre" and self._visible(i, user)]
        start = int(q.get("startindex") or 0)
        limit = int(q["limit"]) if q.get("limit") else None
        return self._result(self._sorted(genres, user, q), user, c, q, start=start, limit=limit)

    # ---- instant mix and similar ---------------------------------------------------------------

    def native_mix(self, seed: Item | str, user: User | None) -> list[Item]:
        """Jellyfin's own Instant Mix: up to 200 random songs sharing a genre with the seed."""
        if isinstance(seed, str):
            genres = {seed}
        elif seed.type == "MusicGenre":
            genres = {seed.name}
        else:
            genres = {g for s in self._songs_of(seed, user) for g in s.genres}
            if seed.type in ("Audio", "MusicAlbum"):
                genres |= set(seed.genres)
        songs = [s for s in self._songs(user) if genres & set(s.genres)]
        self.rng.shuffle(songs)
        return songs[:INSTANT_MIX_LIMIT]

    async def _instant_mix(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q)
        if "name" in p:
            from urllib.parse import unquote

            seed: Item | str = unquote(p["name"])
        else:
            seed_id = p.get("id") or q.get("id")
            if not seed_id:
                return web.Response(status=400, text="Error processing request.")
            seed = self._get_visible(seed_id, user)
        songs = self.native_mix(seed, user)
        limit = int(q["limit"]) if q.get("limit") else None
        return self._result(songs, user, c, q, limit=limit)

    async def _similar(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        """Jellyfin's metadata similarity: same type, scored by shared genres and artists."""
        assert c is not None
        q = self._q(request)
        user = self._effective_user(c, q)
        seed = self._get_visible(p["id"], user)
        kind = "Audio" if seed.type == "MusicGenre" else seed.type
        pool = [i for i in self.items.values() if i.type == kind and i.id != seed.id and self._visible(i, user)]
        scored = []
        for item in pool:
            score = len(set(item.genres) & set(seed.genres)) * 10
            score += 5 if item.album_artist and item.album_artist == seed.album_artist else 0
            if score:
                scored.append((score, item))
        scored.sort(key=lambda s: -s[0])
        limit = int(q["limit"]) if q.get("limit") else None
        return self._result([i for _, i in scored], user, c, q, limit=limit)

    # ---- playlists ----------------------------------------------------------------------------

    async def _create_playlist(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        body: dict[str, Any] = {}
        if request.can_read_body:
            try:
                raw = await request.json()
            except (ValueError, json.JSONDecodeError):
                raw = {}
            body = {k.lower(): v for k, v in (raw or {}).items()}
        name = body.get("name") or q.get("name")
        ids = body.get("ids") or self._list(q.get("ids"))
        uid = body.get("userid") or q.get("userid")
        user = self._effective_user(c, {"userid": uid} if uid else {})
        if user is None or not name:
            return web.Response(status=400, text="Error processing request.")
        playlist = Item(_guid(), "Playlist", str(name), owner=user.id, created=self._clock)
        for item_id in ids:
            for song in self._songs_of(self._get_visible(str(item_id), user), user):
                playlist.entries.append((_guid(), song.id))
        self.items[playlist.id] = playlist
        return web.json_response({"Id": playlist.id})

    def _own_playlist(self, c: Caller, q: dict[str, str], pid: str) -> tuple[Item, User | None]:
        user = self._effective_user(c, q)
        playlist = self.items.get(pid.replace("-", "").lower())
        if playlist is None or playlist.type != "Playlist":
            raise web.HTTPNotFound()
        if user is not None and playlist.owner != user.id:
            raise web.HTTPForbidden()
        return playlist, user

    async def _playlist(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        playlist, _ = self._own_playlist(c, self._q(request), p["id"])
        return web.json_response({"OpenAccess": False, "Shares": [], "ItemIds": [i for _, i in playlist.entries]})

    async def _playlist_items(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        playlist, user = self._own_playlist(c, q, p["id"])
        entry_of: dict[int, str] = {}
        songs: list[Item] = []
        for entry, item_id in playlist.entries:
            song = self.items.get(item_id)
            if song is not None and self._visible(song, user):
                entry_of[len(songs)] = entry
                songs.append(song)
        start = int(q.get("startindex") or 0)
        limit = int(q["limit"]) if q.get("limit") else None
        counter = iter(range(start, len(songs)))

        def add_entry(item: Item, dto: dict[str, Any]) -> None:
            dto["PlaylistItemId"] = entry_of[next(counter)]

        return self._result(songs, user, c, q, start=start, limit=limit, extra=add_entry)

    async def _add_to_playlist(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        playlist, user = self._own_playlist(c, q, p["id"])
        for item_id in self._list(q.get("ids")):
            for song in self._songs_of(self._get_visible(item_id, user), user):
                playlist.entries.append((_guid(), song.id))
        return web.Response(status=204)

    async def _remove_from_playlist(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        q = self._q(request)
        playlist, _ = self._own_playlist(c, q, p["id"])
        gone = set(self._list(q.get("entryids")))
        playlist.entries = [e for e in playlist.entries if e[0] not in gone]
        return web.Response(status=204)

    # ---- media --------------------------------------------------------------------------------

    @staticmethod
    def _ranged(request: web.Request, data: bytes, content_type: str, headers: dict[str, str]) -> web.Response:
        """``data`` honouring a single ``Range: bytes=…`` (206 / 416), as ASP.NET's file results do."""
        total = len(data)
        base = {"Accept-Ranges": "bytes", **headers}
        spec = request.headers.get("Range", "")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if not spec or m is None or (not m.group(1) and not m.group(2)):
            return web.Response(body=data, content_type=content_type, headers=base)
        first, last = m.group(1), m.group(2)
        if first:
            start = int(first)
            end = min(int(last), total - 1) if last else total - 1
        else:
            start = max(0, total - int(last))
            end = total - 1
        if start >= total or start > end:
            return web.Response(status=416, headers={**base, "Content-Range": f"bytes */{total}"})
        return web.Response(
            status=206, body=data[start:end + 1], content_type=content_type,
            headers={**base, "Content-Range": f"bytes {start}-{end}/{total}"},
        )

    def _audio_for(self, p: dict[str, str], c: Caller | None, request: web.Request) -> Item:
        assert c is not None
        user = self._effective_user(c, self._q(request))
        item = self._get_visible(p["id"], user)
        if item.type != "Audio":
            raise web.HTTPNotFound()
        return item

    async def _stream(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        item = self._audio_for(p, c, request)
        return self._ranged(request, item.bytes(), CONTENT_TYPES.get(item.container, "audio/flac"), {})

    async def _download(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        assert c is not None
        item = self._audio_for(p, c, request)
        if c.user is not None and not c.user.can_download:
            return web.Response(status=403)
        name = Path(item.path or f"{item.id}.{item.container}").name
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return self._ranged(request, item.bytes(), CONTENT_TYPES.get(item.container, "audio/flac"), headers)

    async def _image(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        if p["id"].replace("-", "").lower() not in self.items:
            return web.Response(status=404)
        return web.Response(body=PNG, content_type="image/png",
                            headers={"Cache-Control": "public, max-age=31536000"})

    async def _hls_playlist(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        item = self._audio_for(p, c, request)
        seconds = max(1, int(item.duration + 0.999))
        text = (
            "#EXTM3U\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-VERSION:6\n"
            f"#EXT-X-TARGETDURATION:{seconds}\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:{item.duration:.6f}, nodesc\nhls1/main/0.ts?{request.query_string}\n#EXT-X-ENDLIST\n"
        )
        return web.Response(text=text, content_type="application/x-mpegURL")

    async def _hls_segment(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        item = self._audio_for(p, c, request)
        if p["seg"] != "0":
            return web.Response(status=404)
        return self._ranged(request, item.bytes(), "video/mp2t", {})

    async def _web_redirect(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        raise web.HTTPFound(f"{self.base_url}/web/")

    async def _web(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.Response:
        return web.Response(text="<!DOCTYPE html><html><head><title>Jellyfin</title></head></html>",
                            content_type="text/html")

    async def _socket(self, request: web.Request, p: dict[str, str], c: Caller | None) -> web.StreamResponse:
        """Jellyfin's session websocket: ForceKeepAlive on connect, KeepAlive echoed."""
        if c is None:
            return web.Response(status=401)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.add(ws)
        try:
            await ws.send_json({"MessageType": "ForceKeepAlive", "MessageId": _guid(), "Data": 60})
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    kind = json.loads(msg.data).get("MessageType")
                except (ValueError, AttributeError):
                    continue
                if kind == "KeepAlive":
                    await ws.send_json({"MessageType": "KeepAlive", "MessageId": _guid()})
                elif kind == "Echo":  # test aid: lets a relay test see server→client traffic on demand
                    await ws.send_str(msg.data)
        finally:
            self.sockets.discard(ws)
        return ws

    async def broadcast(self, message: dict[str, Any]) -> None:
        """Send a server-initiated message (e.g. ``LibraryChanged``) to every connected socket."""
        await asyncio.gather(*(ws.send_json(message) for ws in list(self.sockets)), return_exceptions=True)
