"""The HTTP API of LMS's "Music Similarity" plugin, answered by musegate.

The plugin (CDrummond's lms-musicsimilarity) registers "Don't Stop The Music"
mixers in Lyrion Music Server and asks a similarity server for the songs to
append to a player's queue. It is configured with a host and a port and always
calls ``http://HOST:PORT/api/...`` at the root; pointing it at musegate makes
its mixes follow musegate's analysis with the plugin unchanged. The contract,
read from the plugin's and the original server's (music-similarity) public
sources:

* ``/api/similar`` (GET query or POST JSON; the plugin POSTs): ``track`` (one
  or more, repeated in a query) and ``previous`` (the queue, most recent
  first) are LMS track URLs (``file:///music/a%20b.flac``) or plain paths;
  ``count`` (1..50, default 5), ``filtergenre``, ``genregroups`` (lists of
  genres), ``nogenrematchadj``/``genregroupadj`` (percent), ``filterxmas``,
  ``min``/``max`` (seconds), ``norepart``/``norepalb`` (0..200), ``maxsim``
  (0..100, default 75), ``maxbpmdiff``, ``filterkey``, ``shuffle`` (default 1),
  ``mpath`` (LMS's music folder, for relative paths), ``format``. The answer is
  the songs, one per line with ``format=text`` (else a JSON list), as file URLs
  when the seeds came as file URLs, else as paths. Nothing usable (no seed
  known or analysed) is an empty answer: the plugin then falls back to LMS's
  other mixers.
* ``/api/dump``: one ``track``; its ``count`` (default 1000) nearest songs,
  ``filterartist=1`` for the same artist only; ``format=text`` gives
  ``path<TAB>distance`` lines, ``text-url`` URLs, else JSON objects.
* ``/api/features``: which optional analyses exist (Essentia ``e``/``E``,
  Bliss ``b``); musegate has neither, so the answer is empty and the plugin
  hides its Essentia-only settings and attribute mixes. ``filterattrib`` is
  accepted and ignored for the same reason.

The plugin sends no credentials, so who may call is decided by address
(``lms_clients``) or musegate's ``api_key``; see :func:`check_caller`.
Distances are 1 − cosine. Bad parameters get a 400 with a one-line reason.
"""

from __future__ import annotations

import datetime
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from adapters.lyrion import path_from_url, url_from_path
from analysis.store import TrackRecord
from gateway import access, forwarding, keys
from index.mixer import MixRules, TrackMeta, mix
from index.results import select_neighbours
from musegate.config import Config, parse_networks

log = logging.getLogger(__name__)

MIN_COUNT, MAX_COUNT, DEFAULT_COUNT = 1, 50, 5
DUMP_DEFAULT_COUNT = 1000
#: norepart/norepalb outside 0..200 fall back to these (the plugin's defaults).
DEFAULT_NO_REPEAT_ARTIST, DEFAULT_NO_REPEAT_ALBUM = 15, 25

@dataclass
class PathCache:
    """Holds the current path table; set up with the routes (an app is frozen once it runs)."""

    table: TrackPaths | None = None


PATHS = web.AppKey("lms_paths", PathCache)


class BadRequest(Exception):
    """A parameter the caller must fix; the message names it."""


class CallerRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_caller(request: web.Request, config: Config) -> None:
    """Admit musegate's ``api_key``, an address in ``lms_clients``, or a direct local caller
    while musegate listens on loopback. The plugin cannot send credentials, so LMS's
    address is what identifies it; it sees the whole library, as LMS itself does."""
    key = access.presented_key(request)
    if key is not None:
        if access.key_matches(key, config):
            return
        raise CallerRefused(401, "wrong API key")
    allowed = parse_networks(config.lms_clients)
    if allowed and forwarding.is_trusted(request.remote, allowed):
        return
    if access.loopback_only(config) and forwarding.is_direct_local(request):
        return
    raise CallerRefused(403, "this address may not use the similarity API: add the LMS server's "
                             "address to lms_clients")


# ---------------------------------------------------------------------------- parameters


class Query:
    """The parameters of one call, from a query string (repeatable keys) or a JSON object."""

    def __init__(self, data: Mapping[str, Any], lists: Mapping[str, list[Any]]) -> None:
        self._data = data
        self._lists = lists

    @classmethod
    async def of(cls, request: web.Request) -> Query:
        if request.method == "GET":
            q = request.query
            return cls({k: q.get(k) for k in q}, {k: q.getall(k) for k in q})
        try:
            body = json.loads(await request.text() or "null")
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        lists = {k: (v if isinstance(v, list) else [v]) for k, v in body.items() if v is not None}
        return cls(body, lists)

    def items(self, name: str) -> list[str]:
        values = self._lists.get(name) or []
        return [str(v) for v in values if isinstance(v, (str, int)) and str(v).strip()]

    def integer(self, name: str, default: int) -> int:
        value = self._data.get(name)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return int(value)
        try:
            return int(float(str(value).strip()))
        except ValueError:
            raise BadRequest(f"{name} must be a number, not {str(value)[:40]!r}") from None

    def flag(self, name: str, default: bool) -> bool:
        return self.integer(name, int(default)) == 1

    def text(self, name: str, default: str = "") -> str:
        value = self._data.get(name)
        return default if value is None else str(value)

    def groups(self) -> tuple[frozenset[str], ...]:
        value = self._data.get("genregroups")
        if isinstance(value, str):  # a query string: JSON, as the plugin would encode it
            try:
                value = json.loads(value)
            except ValueError:
                raise BadRequest("genregroups must be a JSON list of lists of genres") from None
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(g, list) for g in value):
            raise BadRequest("genregroups must be a list of lists of genres")
        return tuple(frozenset(str(x) for x in g if str(x).strip()) for g in value if g)


def mix_rules(q: Query) -> MixRules:
    count = min(MAX_COUNT, max(MIN_COUNT, q.integer("count", DEFAULT_COUNT)))
    no_artist = q.integer("norepart", 0)
    no_album = q.integer("norepalb", 0)
    if not 0 <= no_artist <= 200:
        no_artist = DEFAULT_NO_REPEAT_ARTIST
    if not 0 <= no_album <= 200:
        no_album = DEFAULT_NO_REPEAT_ALBUM
    return MixRules(
        count=count,
        shuffle=q.flag("shuffle", True),
        min_duration=float(max(0, q.integer("min", 0))),
        max_duration=float(max(0, q.integer("max", 0))),
        no_repeat_artist=no_artist,
        no_repeat_album=no_album,
        filter_genre=q.flag("filtergenre", False),
        genre_groups=q.groups(),
        no_genre_adjust=q.integer("nogenrematchadj", 15) / 100.0,
        group_adjust=q.integer("genregroupadj", 7) / 100.0,
        exclude_xmas=q.flag("filterxmas", False),
        max_distance=min(100, max(0, q.integer("maxsim", 75))) / 100.0,
        max_bpm_diff=float(max(0, q.integer("maxbpmdiff", 0))),
        filter_key=q.flag("filterkey", False),
    )


# ---------------------------------------------------------------------------- paths <-> tracks


def _record_meta(track: TrackRecord) -> TrackMeta:
    raw = track.raw or {}
    genres = str(raw.get("genres") or track.genre or "")
    return TrackMeta(
        artist=track.artist or "",
        album=track.album or "",
        album_artist=str(raw.get("albumartist") or ""),
        title=track.title or "",
        genres=frozenset(g.strip() for g in genres.split(",") if g.strip()),
        duration=track.duration,
    )


@dataclass
class TrackPaths:
    """The source's tracks by LMS URL, by server path and by mapped local path."""

    signature: tuple[Any, ...]
    by_url: dict[str, int]
    by_path: dict[str, int]
    records: dict[int, TrackRecord]
    meta: dict[int, TrackMeta]

    @classmethod
    def build(cls, signature: tuple[Any, ...], tracks: Mapping[str, TrackRecord],
              local_path: Any = None) -> TrackPaths:
        by_url: dict[str, int] = {}
        by_path: dict[str, int] = {}
        records: dict[int, TrackRecord] = {}
        for rec in tracks.values():
            if rec.id is None:
                continue
            records[rec.id] = rec
            url = str((rec.raw or {}).get("url") or "")
            if url:
                by_url[url] = rec.id
            if rec.path:
                by_path.setdefault(rec.path, rec.id)
                if local_path is not None:
                    local = local_path(rec)
                    if local is not None:
                        by_path.setdefault(str(local), rec.id)
        meta = {i: _record_meta(r) for i, r in records.items()}
        return cls(signature, by_url, by_path, records, meta)

    def find(self, value: str, root: str) -> int | None:
        """The track a plugin names: its LMS URL, a file URL or path (relative to ``root``)."""
        if value in self.by_url:
            return self.by_url[value]
        path = path_from_url(value) if value.lower().startswith("file://") else value
        if path is None:
            return None
        if path in self.by_path:
            return self.by_path[path]
        if root and not path.startswith("/") and ":" not in path[:3]:
            return self.by_path.get(root.rstrip("/\\") + "/" + path)
        return None

    def name(self, track_id: int, as_url: bool) -> str:
        rec = self.records[track_id]
        if as_url:
            return str((rec.raw or {}).get("url") or "") or url_from_path(rec.path or "")
        return rec.path or path_from_url(str((rec.raw or {}).get("url") or "")) or ""


async def track_paths(app: web.Application) -> TrackPaths:
    """The path table for the current store, rebuilt only when the tracks changed."""
    service = app[keys.SERVICE]
    signature = await service.signature()
    cache = app[PATHS]
    if cache.table is not None and cache.table.signature == signature:
        return cache.table
    adapter = app[keys.ADAPTER]
    source = getattr(adapter, "source", None) or f"lyrion:{app[keys.CONFIG].upstream_url.rstrip('/')}"
    tracks = await app[keys.STORE].tracks_of_source(source)
    table = TrackPaths.build(signature, tracks, getattr(adapter, "local_path", None))
    cache.table = table
    return table


# ---------------------------------------------------------------------------- handlers


def _text_response(lines: list[str]) -> web.Response:
    return web.Response(text="\n".join(lines), content_type="text/plain", charset="utf-8")


def _guarded(handler: Any) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            check_caller(request, request.app[keys.CONFIG])
            return await handler(request)
        except CallerRefused as exc:
            return web.Response(status=exc.status, text=str(exc) + "\n", content_type="text/plain")
        except BadRequest as exc:
            return web.Response(status=400, text=str(exc) + "\n", content_type="text/plain")
        except web.HTTPException:
            raise
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return web.Response(status=500, text="internal error; see musegate's log\n",
                                content_type="text/plain")

    return wrapped


async def similar(request: web.Request) -> web.Response:
    q = await Query.of(request)
    seeds_given = q.items("track")
    if not seeds_given:
        raise BadRequest("track is required (an LMS track URL or path, repeatable)")
    rules = mix_rules(q)
    as_url = seeds_given[0].lower().startswith("file://")
    root = q.text("mpath")
    paths = await track_paths(request.app)
    seeds = [t for t in (paths.find(v, root) for v in seeds_given) if t is not None]
    previous = [t for t in (paths.find(v, root) for v in q.items("previous")) if t is not None]
    if not seeds:
        log.info("lms similar: none of %d seed(s) is in the library", len(seeds_given))
        return _as_format(q, [])
    service = request.app[keys.SERVICE]
    december = datetime.date.today().month == 12
    rng = random.Random()
    async with service.reading() as snap:
        found = mix(snap.catalogue, snap.index, seeds, previous, paths.meta, rules, rng, december)
    names = [paths.name(t, as_url) for t in found if t in paths.records]
    log.info("lms similar: %d seed(s), %d previous -> %d song(s)", len(seeds), len(previous),
             len(names))
    return _as_format(q, names)


def _as_format(q: Query, names: list[str]) -> web.Response:
    if q.text("format") == "text":
        return _text_response(names)
    return web.json_response(names)


async def dump(request: web.Request) -> web.Response:
    q = await Query.of(request)
    given = q.items("track")
    if len(given) != 1:
        raise BadRequest("track must name exactly one song")
    count = max(1, q.integer("count", DUMP_DEFAULT_COUNT))
    same_artist = q.flag("filterartist", False)
    fmt = q.text("format")
    as_url = given[0].lower().startswith("file://")
    paths = await track_paths(request.app)
    seed = paths.find(given[0], q.text("mpath"))
    service = request.app[keys.SERVICE]
    async with service.reading() as snap:
        cat = snap.catalogue
        if seed is None or not cat.has(seed):
            raise web.HTTPNotFound(text="that track is not in the library or not analysed yet\n")
        seed_row = cat.row(seed)
        artist = paths.meta.get(seed, TrackMeta()).artist_key()

        def accept(row: int) -> bool:
            m = paths.meta.get(int(cat.ids[row]))
            return m is not None and (not same_artist or m.artist_key() == artist)

        matches = select_neighbours(cat, snap.index, cat.vectors[seed_row], count,
                                    max_per_artist=0, blockers=[seed_row], accept=accept,
                                    radius=cat.radius)
    rows = [(paths.name(m.track_id, as_url), round(1.0 - m.similarity, 6)) for m in matches
            if m.track_id in paths.records]
    if fmt == "text":
        return _text_response([f"{name}\t{dist:f}" for name, dist in rows])
    if fmt == "text-url":
        return _text_response([paths.name(m.track_id, True) for m in matches
                               if m.track_id in paths.records])
    return web.json_response([{"file": name, "sim": dist} for name, dist in rows])


async def features(request: web.Request) -> web.Response:
    return web.Response(text="", content_type="text/plain")


def add_lms_similarity(app: web.Application) -> None:
    """Mount the plugin's routes at the root of the app (below mount_path, if any)."""
    app[PATHS] = PathCache()
    for path, handler, methods in (
        ("/api/similar", similar, ("GET", "POST")),
        ("/api/dump", dump, ("GET", "POST")),
        ("/api/features", features, ("GET",)),
    ):
        for method in methods:
            app.router.add_route(method, path, _guarded(handler),
                                 name=f"lms-{handler.__name__}-{method.lower()}")
