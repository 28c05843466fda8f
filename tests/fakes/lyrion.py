"""A fake Lyrion Music Server (LMS 8.x/9.x) for musegate's tests.

LMS cannot be installed in the test environment, so this aiohttp app answers
the part of LMS's HTTP interface musegate uses, written from LMS's published
CLI documentation (lyrion.org/reference/cli: "Using the CLI" for jsonrpc.js,
"Database commands" for ``titles``, ``songinfo`` and ``playlists``) and the
behaviour of its web server as documented there, not from LMS's code. What it
copies faithfully:

* ``POST /jsonrpc.js`` with ``{"id", "method": "slim.request", "params":
  [PLAYER, [COMMAND, ...]]}``; the answer echoes ``id``, ``method`` and
  ``params`` and carries ``result``. ``GET /jsonrpc.js?request=<JSON>`` too
  (LMS 9.1+). A malformed request or an unknown command is answered ``{}``
  (LMS does no error handling there).
* Password protection: when ``password`` is set every request, downloads
  included, needs HTTP Basic auth; otherwise ``401`` with
  ``WWW-Authenticate: Basic realm="Lyrion Music Server"``. ``blocked`` answers
  ``403`` (a host outside LMS's allowed IP list).
* ``titles|songs|tracks <start> <itemsPerResponse> tags:…``: ``count`` is the
  total, ``titles_loop`` the page (absent past the end), sorted by title;
  every entry has ``id`` and ``title`` plus the tags asked for (default
  ``gald``), in the order asked (a later tag's key overwrites an earlier one's,
  as ``A``'s ``artist`` role list and ``a``'s primary artist do), with LMS's tag names: ``a`` artist, ``A`` roles (``albumartist``,
  ``trackartist``…), ``l`` album, ``C`` compilation, ``d`` duration, ``e``
  album_id, ``f`` filesize, ``g`` genre, ``G`` genres, ``n``
  modificationTime, ``O`` playcount, ``o`` type, ``s`` artist_id, ``t``
  tracknum, ``u`` url, ``x`` remote, ``y`` year. Empty values are left out.
* ``songinfo 0 100 track_id:N tags:…``: ``songinfo_loop`` of one-key objects.
* URLs are ``file://`` plus the percent-encoded path (LMS's
  ``fileURLFromPath``); remote tracks have ``http…`` URLs and ``remote: 1``.
* Saved playlists: ``playlists`` (``playlists_loop`` of ``id``/``playlist``),
  ``playlists new name:`` (``playlist_id``, or ``overwritten_playlist_id`` when
  the name exists, without creating), ``playlists tracks`` (``count``,
  ``playlisttracks_loop`` with ``playlist index``), ``playlists edit`` with
  ``cmd:add url: title:`` and ``cmd:delete index:``, ``playlists delete``.
* ``GET /music/{id}/download`` sends a local track's file (404 otherwise).

Usage::

    fake = FakeLyrion(user="admin", password="pw")   # no user: no password protection
    tid = fake.add_track("Song", "Artist", "Album", "/music/a/song.flac", tmp_path / "song.flac",
                         genres=["Rock"], duration=8.0, playcount=2)
    url = await fake.start()                         # http://127.0.0.1:PORT
    ...
    fake.commands[-1]                                # ["titles", "0", "500", "tags:…"]
    await fake.stop()
"""

from __future__ import annotations

import base64
import binascii
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web

DEFAULT_TAGS = "gald"
REALM = "Lyrion Music Server"


@dataclass
class FakeTrack:
    id: int
    title: str
    artist: str
    album: str
    path: str  # the server's path
    file: Path | None  # what /music/{id}/download sends
    genres: list[str] = field(default_factory=list)
    duration: float = 0.0
    album_artist: str = ""
    year: int = 0
    tracknum: int = 0
    playcount: int = 0
    mtime: int = 1_700_000_000
    remote_url: str = ""
    album_id: int = 0
    artist_id: int = 0
    featuring: list[str] = field(default_factory=list)  # more ARTIST-role contributors

    @property
    def url(self) -> str:
        if self.remote_url:
            return self.remote_url
        return "file://" + quote(self.path, safe="/:!$&'()*+,;=@~-._")

    @property
    def size(self) -> int | None:
        return self.file.stat().st_size if self.file is not None and self.file.exists() else None

    def tag(self, letter: str) -> dict[str, Any]:
        """The fields one tag letter adds, LMS-named; empty values are left out."""
        values: dict[str, Any] = {}
        if letter == "a":
            values["artist"] = self.artist
        elif letter == "A":  # per role, every name: "A, B" for the artist role
            values["artist"] = ", ".join([self.artist, *self.featuring])
            if self.album_artist:
                values["albumartist"] = self.album_artist
                if self.album_artist != self.artist:
                    values["trackartist"] = self.artist
        elif letter == "l":
            values["album"] = self.album
        elif letter == "C":
            values["compilation"] = 1 if self.album_artist.lower() in ("various artists",) else 0
        elif letter == "d":
            values["duration"] = self.duration
        elif letter == "e":
            values["album_id"] = self.album_id
        elif letter == "f":
            values["filesize"] = self.size
        elif letter == "g":
            values["genre"] = self.genres[0] if self.genres else ""
        elif letter == "G":
            values["genres"] = ", ".join(self.genres)
        elif letter == "n":
            values["modificationTime"] = self.mtime
        elif letter == "O":
            values["playcount"] = self.playcount
        elif letter == "o":
            values["type"] = Path(self.path).suffix.lstrip(".")[:3] or "mp3"
        elif letter == "s":
            values["artist_id"] = self.artist_id
        elif letter == "t":
            values["tracknum"] = self.tracknum or ""
        elif letter == "u":
            values["url"] = self.url
        elif letter == "x":
            values["remote"] = 1 if self.remote_url else 0
        elif letter == "y":
            values["year"] = self.year or ""
        return {k: v for k, v in values.items() if v is not None and v != ""}

    def entry(self, tags: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "title": self.title}
        for letter in dict.fromkeys(tags):
            out.update(self.tag(letter))
        return out


@dataclass
class FakePlaylist:
    id: int
    name: str
    urls: list[str] = field(default_factory=list)


def _tagged(args: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for a in args:
        if ":" in a:
            k, v = a.split(":", 1)
            out[k] = v
    return out


def _window(args: list[str]) -> tuple[int, int, list[str]]:
    """``<start> <itemsPerResponse>`` then tagged parameters."""
    try:
        start, quantity = int(args[0]), int(args[1])
    except (IndexError, ValueError):
        return 0, 0, args
    return max(0, start), max(0, quantity), args[2:]


class FakeLyrion:
    def __init__(self, user: str = "", password: str = "", version: str = "9.0.2") -> None:
        self.user = user
        self.password = password
        self.version = version
        self.blocked = False
        self.tracks: dict[int, FakeTrack] = {}
        self.playlists: dict[int, FakePlaylist] = {}
        self.commands: list[list[str]] = []
        self.auth_headers: list[str | None] = []
        self.downloads: list[int] = []
        self._next_id = 1
        self._runner: web.AppRunner | None = None
        self._port = 0

    # ---- library ---------------------------------------------------------------------

    def add_track(
        self, title: str, artist: str, album: str, path: str, file: Path | None = None,
        **fields: Any,
    ) -> int:
        tid = self._next_id
        self._next_id += 1
        self.tracks[tid] = FakeTrack(tid, title, artist, album, path, file, **fields)
        return tid

    def add_remote_track(self, title: str, artist: str, url: str) -> int:
        return self.add_track(title, artist, "", "", None, remote_url=url)

    # ---- server ----------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("POST", "/jsonrpc.js", self._jsonrpc)
        app.router.add_route("GET", "/jsonrpc.js", self._jsonrpc)
        app.router.add_route("GET", r"/music/{id}/download", self._download)
        return app

    async def start(self) -> str:
        if not self._port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self._port = s.getsockname()[1]
        self._runner = web.AppRunner(self.app())
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self._port).start()
        return f"http://127.0.0.1:{self._port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeLyrion:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _refusal(self, request: web.Request) -> web.Response | None:
        if self.blocked:
            return web.Response(status=403, text="Forbidden")
        header = request.headers.get("Authorization")
        self.auth_headers.append(header)
        if not self.password:
            return None
        scheme, _, token = (header or "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(token).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                user = password = ""
            if user == self.user and password == self.password:
                return None
        return web.Response(status=401, text="Authorization required",
                            headers={"WWW-Authenticate": f'Basic realm="{REALM}"'})

    async def _jsonrpc(self, request: web.Request) -> web.Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        try:
            text = request.query.get("request", "") if request.method == "GET" else await request.text()
            body = json.loads(text)
            player, command = body["params"]
            command = [str(c) for c in command]
        except (ValueError, KeyError, TypeError):
            return web.json_response({})
        self.commands.append(command)
        result = self._run(command)
        if result is None:
            return web.json_response({})
        return web.json_response({"id": body.get("id"), "method": body.get("method"),
                                  "params": [player, command], "result": result})

    async def _download(self, request: web.Request) -> web.StreamResponse:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        try:
            track = self.tracks[int(request.match_info["id"])]
        except (KeyError, ValueError):
            raise web.HTTPNotFound() from None
        if track.file is None or not track.file.exists():
            raise web.HTTPNotFound()
        self.downloads.append(track.id)
        return web.FileResponse(track.file, headers={"Content-Type": "audio/flac"})

    # ---- commands --------------------------------------------------------------------

    def _run(self, command: list[str]) -> dict[str, Any] | None:
        if not command:
            return None
        name, args = command[0], command[1:]
        if name == "version" and args[:1] == ["?"]:
            return {"_version": self.version}
        if name in ("titles", "songs", "tracks"):
            return self._titles(args)
        if name == "songinfo":
            return self._songinfo(args)
        if name == "playlists":
            return self._playlists(args)
        return None

    def _titles(self, args: list[str]) -> dict[str, Any]:
        start, quantity, rest = _window(args)
        p = _tagged(rest)
        tags = p.get("tags", DEFAULT_TAGS)
        tracks = sorted(self.tracks.values(), key=lambda t: (t.title.lower(), t.id))
        if "search" in p:
            tracks = [t for t in tracks if p["search"].lower() in t.title.lower()]
        result: dict[str, Any] = {"count": len(tracks)}
        page = tracks[start:start + quantity]
        if page:
            result["titles_loop"] = [t.entry(tags) for t in page]
        return result

    def _songinfo(self, args: list[str]) -> dict[str, Any]:
        _start, _quantity, rest = _window(args)
        p = _tagged(rest)
        track = None
        if "track_id" in p and p["track_id"].isdigit():
            track = self.tracks.get(int(p["track_id"]))
        elif "url" in p:
            track = next((t for t in self.tracks.values() if t.url == p["url"]), None)
        if track is None:
            return {}
        tags = p.get("tags", "aAlCdefgGnOostxy")
        fields = track.entry(tags)
        return {"count": len(fields), "songinfo_loop": [{k: v} for k, v in fields.items()]}

    def _playlists(self, args: list[str]) -> dict[str, Any] | None:
        if not args:
            return None
        sub = args[0]
        p = _tagged(args[1:])
        if sub == "new":
            name = p.get("name", "")
            if not name:
                return {}
            for pl in self.playlists.values():
                if pl.name.lower() == name.lower():
                    return {"overwritten_playlist_id": pl.id}
            pid = self._next_id
            self._next_id += 1
            self.playlists[pid] = FakePlaylist(pid, name)
            return {"playlist_id": pid}
        if sub in ("tracks", "edit", "delete"):
            rest = args[1:] if sub != "tracks" else _window(args[1:])[2]
            p = _tagged(rest)
            pl = self.playlists.get(int(p["playlist_id"])) if p.get("playlist_id", "").isdigit() else None
            if pl is None:
                return {}
            if sub == "delete":
                del self.playlists[pl.id]
                return {}
            if sub == "tracks":
                start, quantity, _ = _window(args[1:])
                by_url = {t.url: t for t in self.tracks.values()}
                loop = [
                    {"playlist index": i, **by_url[u].entry(p.get("tags", DEFAULT_TAGS))}
                    for i, u in enumerate(pl.urls) if u in by_url
                ][start:start + quantity]
                result: dict[str, Any] = {"count": len(pl.urls)}
                if loop:
                    result["playlisttracks_loop"] = loop
                return result
            cmd = p.get("cmd")
            if cmd == "add" and p.get("url"):
                pl.urls.append(p["url"])
            elif cmd == "delete" and p.get("index", "").isdigit() and int(p["index"]) < len(pl.urls):
                del pl.urls[int(p["index"])]
            return {}
        start, quantity, rest = _window(args)
        p = _tagged(rest)
        found = [pl for pl in sorted(self.playlists.values(), key=lambda x: x.name.lower())
                 if p.get("search", "").lower() in pl.name.lower()]
        result = {"count": len(found)}
        page = found[start:start + quantity]
        if page:
            result["playlists_loop"] = [{"id": pl.id, "playlist": pl.name} for pl in page]
        return result
