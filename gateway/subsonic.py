"""The Subsonic similarity endpoints musegate answers itself; everything else passes through.

Intercepted (``.view`` or bare, GET or POST form):

* ``getSimilarSongs`` / ``getSimilarSongs2`` — song, album or artist id (album
  and artist seeds are resolved through the upstream *with the caller's
  credentials*, so a seed the caller cannot browse resolves to nothing);
* ``getSonicSimilarTracks`` / ``findSonicPath`` — the OpenSubsonic
  ``sonicSimilarity`` extension, ``sonicMatch`` entries ``{entry, similarity}``;
* ``getOpenSubsonicExtensions`` — answered without authentication (as the spec
  requires), the upstream's own list with ``sonicSimilarity`` merged in.

Observed, not answered: ``star``, ``unstar``, ``setRating``, ``scrobble``,
``createBookmark`` and ``deleteBookmark`` are relayed unchanged; the song ids
they name are dropped from the per-user song cache around the relay. ``ping`` is
relayed unchanged too; a caller not seen lately gets their songs warmed in the
background (``gateway.subsonic_warm``), as does one seen on any intercepted call.

Who may see what (``subsonic_visibility``):

* ``hydrate`` (default): every song in an answer is the Child the upstream
  returns to the caller for ``getSong`` — asked as the caller, dropped when the
  upstream refuses it. It asks the server the exact question ("may this caller
  see this song, and what does it look like to them?"), per-user fields
  (``starred``, ``userRating``, ``playCount``…) included; servers whose rules
  are not music folders (Navidrome libraries, LMS users) are handled exactly.
  Answers are reused per caller (``gateway.subsonic_songs.UserSongCache``,
  ``subsonic_song_cache_seconds``): a song the upstream already showed this
  caller costs no call, and the calls relayed here that change a Child (star,
  setRating, scrobble…) drop it first, so only changes made elsewhere wait for
  the TTL.
  With ``subsonic_song_fetch = "album"``, songs not cached are asked one
  ``getAlbum`` per album as the caller once that upstream's album entries
  proved equal to its getSong answers (``gateway.subsonic_songs.fetch_songs``).
* ``folders`` (opt-in, fast): one ``getMusicFolders`` as the caller (cached
  under the credential hash for ``auth_cache_seconds``), then the candidates
  are kept when the music folder the scan recorded for them
  (``adapters.subsonic.FOLDER_KEY``) is among the caller's; a song with no
  recorded folder is dropped. Answers carry the stored song objects, which
  the adapter stripped of the service account's per-user fields, so the
  caller's own stars and ratings are absent, and metadata is as fresh as the
  last scan. When the upstream refuses ``getMusicFolders`` the answer is
  hydrated instead.

Costs of both are measured in bench/gateway.py and documented in docs/subsonic.md.

When musegate cannot answer — the seed is not analysed, the index is empty,
the id is unknown — the request goes to the upstream unchanged
(``gateway.proxy.forward``) and the caller gets the upstream's own answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import numpy as np
from aiohttp import web
from multidict import MultiDict

from adapters.subsonic import FOLDER_KEY, shared_song
from analysis.store import LibraryStore
from gateway import fast_relay, keys, metrics, proxy, upstream_errors
from gateway.subsonic_auth import (
    AuthChecker,
    CredentialCache,
    Credentials,
    FolderCache,
    UpstreamCaller,
    UpstreamDown,
    UpstreamError,
)
from gateway.subsonic_format import (
    ENVELOPE,
    GENERIC,
    MISSING_PARAMETER,
    NOT_FOUND,
    PARAMS,
    EnvelopeCache,
    error_response,
    ok_response,
    params_of,
    response_format,
    valid_callback,
)
from gateway.subsonic_songs import MUTATIONS, AlbumTrust, UserSongCache, fetch_songs, scope_of
from gateway.subsonic_warm import (
    NEIGHBOURS,
    PAGE,
    RECENT_SEEDS,
    Foreground,
    Warmer,
    interleave,
    recent_songs,
)
from index.path import song_path
from index.similar import similar_tracks
from musegate.config import Config
from musegate.services import LibrarySnapshot, unique_ids

log = logging.getLogger(__name__)

MAX_COUNT = 500
EXTENSION = {"name": "sonicSimilarity", "versions": [1]}
# Songs missing from an answer for which one search3 page of a small library is asked instead
# of one getSong each (``_from_page``): on supysonic a page of 80 songs costs about what 10–15
# getSong calls do (bench/gateway_first_answer.py).
PAGE_ANSWER_MIN = 16
# How deep a getSimilarSongs folder id is walked (artist folder -> album folders -> songs).
DIRECTORY_DEPTH = 2

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SubsonicGateway:
    """Per-app state: the upstream caller, the credential cache and the envelope cache."""

    def __init__(self, config: Config, session: aiohttp.ClientSession, envelope: EnvelopeCache,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.upstream_url = config.upstream_url.rstrip("/")
        self.envelope = envelope
        self.upstream = UpstreamCaller(self.upstream_url, session, envelope)
        self.cache = CredentialCache(config.auth_cache_seconds, clock)
        self.auth = AuthChecker(self.upstream, self.cache)
        self.visibility = config.subsonic_visibility
        self.folder_cache = FolderCache(config.auth_cache_seconds, clock)
        self.songs = UserSongCache(config.subsonic_song_cache_seconds,
                                   config.subsonic_song_cache_entries)
        # What getAlbum's entries are worth on this upstream (None: ask song by song).
        self.album_trust = AlbumTrust() if config.subsonic_song_fetch == "album" else None
        self.service: Any = None  # the LibraryService, once the app's lifetime has it
        # Intercepted requests in progress (warm calls wait for them) and the background
        # warm of a new caller's songs (gateway.subsonic_warm).
        self.foreground = Foreground()
        self.warm = Warmer(self.songs, self.upstream, self.auth, self.foreground,
                           self.warm_plan,
                           # only hydrated answers read the song cache
                           config.subsonic_warm_songs if self.visibility == "hydrate" else 0,
                           config.subsonic_warm_concurrency, self._library_signature,
                           clock=clock,
                           pages=AlbumTrust(call="search3") if config.subsonic_warm_pages
                           else None,
                           in_library=self._in_library)

    # ------------------------------------------------------------------ seeds

    async def songs_of(
        self, item_id: str, creds: Credentials, client: Mapping[str, str], folders: bool
    ) -> list[str]:
        """Upstream song ids of an album, artist (or, for folder-based calls, a directory).

        Asked with the caller's credentials: what the caller cannot browse yields nothing.
        """
        try:
            body = await self.upstream.call("getAlbum", creds, client, id=item_id)
            return [s["id"] for s in _as_list(body.get("album", {}).get("song")) if "id" in s]
        except UpstreamError:
            pass
        try:
            body = await self.upstream.call("getArtist", creds, client, id=item_id)
            albums = [a["id"] for a in _as_list(body.get("artist", {}).get("album")) if "id" in a]
            found = await asyncio.gather(*(self._album_songs(a, creds, client) for a in albums))
            return [s for songs in found for s in songs]
        except UpstreamError:
            pass
        if folders:
            return await self._directory_songs(item_id, creds, client, DIRECTORY_DEPTH)
        return []

    async def _album_songs(
        self, album_id: str, creds: Credentials, client: Mapping[str, str]
    ) -> list[str]:
        try:
            body = await self.upstream.call("getAlbum", creds, client, id=album_id)
        except UpstreamError:
            return []
        return [s["id"] for s in _as_list(body.get("album", {}).get("song")) if "id" in s]

    async def _directory_songs(
        self, dir_id: str, creds: Credentials, client: Mapping[str, str], depth: int
    ) -> list[str]:
        try:
            body = await self.upstream.call("getMusicDirectory", creds, client, id=dir_id)
        except UpstreamError:
            return []
        children = _as_list(body.get("directory", {}).get("child"))
        songs = [c["id"] for c in children if not c.get("isDir") and "id" in c]
        if depth > 0:
            subdirs = [c["id"] for c in children if c.get("isDir") and "id" in c]
            found = await asyncio.gather(
                *(self._directory_songs(d, creds, client, depth - 1) for d in subdirs)
            )
            songs.extend(s for group in found for s in group)
        return songs

    async def seeds(
        self,
        snap: LibrarySnapshot,
        item_id: str,
        creds: Credentials,
        client: Mapping[str, str],
        folders: bool = False,
    ) -> list[int]:
        """musegate track ids for a song, album or artist id; [] when none is analysed."""
        if item_id in snap.by_upstream:
            return [snap.by_upstream[item_id]]
        songs = await self.songs_of(item_id, creds, client, folders)
        return unique_ids([snap.by_upstream[s] for s in songs if s in snap.by_upstream])

    # -------------------------------------------------------------- hydration

    async def hydrate(
        self,
        upstream_ids: Sequence[str],
        creds: Credentials,
        client: Mapping[str, str],
        limit: int | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """(id, the caller's Child) for the first ``limit`` ids the upstream lets the caller see.

        Songs the upstream already answered for the caller's scope (``UserSongCache``)
        are taken from the cache; the rest are asked as the caller with ``getSong``, or one
        ``getAlbum`` per album where that is chosen and known to equal it (``fetch_songs``).
        Ids are settled in rounds of exactly as many as are still missing, so the common
        case (nothing refused) asks about each returned song once and no more.
        UpstreamDown propagates: an unreachable server is an error, not an empty list.
        """
        limit = len(upstream_ids) if limit is None else limit
        scope = scope_of(creds, client) if self.songs.enabled else None
        if scope is not None:
            self.songs.library(self._library_signature())

        def ask(endpoint: str, **params: Any) -> Awaitable[dict[str, Any]]:
            return self.upstream.call(endpoint, creds, client, **params)

        out: list[tuple[str, dict[str, Any]]] = []
        pos = 0
        while len(out) < limit and pos < len(upstream_ids):
            batch = list(upstream_ids[pos : pos + (limit - len(out))])
            pos += len(batch)
            with self.songs.filling() as token:
                found: dict[str, dict[str, Any] | None] = {}
                if scope is not None:
                    for uid in batch:
                        known, child = self.songs.get(scope, uid)
                        if known:
                            found[uid] = child
                missing = [u for u in batch if u not in found]
                if missing:
                    def keep(uid: str, child: dict[str, Any] | None, token: int = token) -> None:
                        if scope is not None:
                            self.songs.put(scope, uid, child, token)

                    paged = await self._from_page(ask, scope, missing, token)
                    found.update(paged)
                    missing = [u for u in missing if u not in paged]
                if missing:
                    trust = self.album_trust
                    album_of = (await self._album_ids(missing)
                                if trust is not None and not trust.differs else {})
                    found.update(await fetch_songs(ask, missing, album_of, self.album_trust,
                                                   keep))
            out.extend((uid, child) for uid in batch if (child := found.get(uid)) is not None)
        return out

    async def _from_page(
        self,
        ask: Callable[..., Awaitable[dict[str, Any]]],
        scope: Any,
        missing: Sequence[str],
        token: int,
    ) -> dict[str, dict[str, Any]]:
        """The caller's Children of ``missing`` from one ``search3`` page, where that is exact.

        Only with ``subsonic_warm_pages`` once its trust learnt that search3 entries equal
        getSong's, only for a library that fits in one page (so the page holds every song
        the caller may list), and only when enough songs are missing to be worth a call
        that builds the whole page. The answer's songs are cached like getSong answers,
        the page's other songs only into free room (``UserSongCache.offer``: they are
        not what was asked for, so they evict nothing); what the page does not settle is
        asked with getSong as before. When this
        caller's warm is asking its first page right now (they just logged in), that page
        is awaited instead of asked again, and its entries are stored under the token the
        warm took before asking it.
        """
        trust = self.warm.pages
        if (trust is None or trust.differs or trust.matched < trust.checks
                or len(missing) < PAGE_ANSWER_MIN or not 0 < self._library_size() <= PAGE):
            return {}
        body: dict[str, Any] | None = None
        flight = self.warm.inflight.get((scope, 0)) if scope is not None else None
        if flight is not None:
            shared = await asyncio.shield(flight)
            if shared is not None:
                listed = (shared.body.get("searchResult3") or {}).get("song") or []
                if isinstance(listed, list) and len(listed) < shared.size:  # the whole library
                    body, token = shared.body, shared.token
        if body is None:
            try:
                body = await ask("search3", query="", artistCount=0, albumCount=0,
                                 songCount=PAGE, songOffset=0)
            except UpstreamError:
                return {}
        found = (body.get("searchResult3") or {}).get("song") or []
        wanted = set(missing)
        out: dict[str, dict[str, Any]] = {}
        for entry in found if isinstance(found, list) else [found]:
            if not isinstance(entry, dict) or entry.get("id") is None or not trust.usable(entry):
                continue
            uid = str(entry["id"])
            if uid in wanted:
                out[uid] = entry
                if scope is not None:
                    self.songs.put(scope, uid, entry, token)
            elif scope is not None:
                self.songs.offer(scope, uid, entry, token)
        return out

    def _library_size(self) -> int:
        service = self.service
        if service is None:
            return 0
        try:
            return len(service.snapshot.catalogue)
        except RuntimeError:
            return 0

    async def _album_ids(self, upstream_ids: Sequence[str]) -> dict[str, str]:
        """Upstream album id of each song, as the last scan stored it ({} before a scan)."""
        service = self.service
        if service is None:
            return {}
        try:
            by_upstream = service.snapshot.by_upstream
        except RuntimeError:
            return {}
        tids = [by_upstream[u] for u in upstream_ids if u in by_upstream]
        records = await service.store.tracks_by_ids(tids)
        return {rec.upstream_id: str(rec.raw["albumId"]) for rec in records.values()
                if rec.raw and rec.raw.get("albumId") is not None}

    def _in_library(self, upstream_id: str) -> bool:
        """Whether the loaded library holds this song (only those are worth warming)."""
        service = self.service
        if service is None:
            return False
        try:
            return upstream_id in service.snapshot.by_upstream
        except RuntimeError:
            return False

    def _library_signature(self) -> Any:
        """The loaded library's signature (moves on a rescan's changes); None before it loads."""
        service = self.service
        if service is None:
            return None
        try:
            return service.snapshot.signature
        except RuntimeError:
            return None

    async def warm_plan(
        self, scope: Any, ask: Callable[..., Awaitable[dict[str, Any]]]
    ) -> tuple[list[str], list[str]]:
        """Upstream song ids a new caller's first answers most likely hold, likeliest first.

        The songs of the caller's recently played albums and their neighbours (the index's
        own candidates for a count=50 answer, ``2 × 50``), interleaved by rank; then the
        library in scan order (used when the warm does not list it by search3 pages).
        ``Warmer`` asks for as many as its budget allows.
        """
        service = self.service
        if service is None:
            return [], []
        try:
            if len(service.snapshot.catalogue) == 0:
                return [], []
        except RuntimeError:
            return [], []
        recent = await recent_songs(ask)
        config = self.config
        budget = max(0, self.warm.budget)
        async with service.reading() as snap:
            seeds = [snap.by_upstream[u] for u in dict.fromkeys(recent) if u in snap.by_upstream]
            seeds = seeds[:RECENT_SEEDS]
            cat, index = snap.catalogue, snap.index

            def neighbours() -> list[list[int]]:
                return [[t] + [m.track_id for m in similar_tracks(
                    cat, index, [t], n=min(NEIGHBOURS, len(cat)),
                    max_per_artist=config.max_per_artist,
                    hide_duplicates=config.hide_duplicates)] for t in seeds]

            groups = await asyncio.to_thread(neighbours) if seeds else []
            first = interleave([[snap.upstream_ids[t] for t in g if t in snap.upstream_ids]
                                for g in groups])
            rest = [snap.upstream_ids[int(t)] for t in cat.ids[: budget + len(first)]
                    if int(t) in snap.upstream_ids]
        planned = set(first)
        return first, [u for u in rest if u not in planned]

    # ------------------------------------------------------------ folder mode

    async def visible_folders(
        self, creds: Credentials, client: Mapping[str, str]
    ) -> frozenset[str] | None:
        """The music folder ids the caller's own ``getMusicFolders`` lists (cached by hash).

        None when the upstream refuses the call: the caller then gets a hydrated
        answer rather than an empty one. UpstreamDown propagates.
        """
        key = creds.cache_key()
        cached = self.folder_cache.get(key)
        if cached is not None:
            return cached
        try:
            body = await self.upstream.call("getMusicFolders", creds, client)
        except UpstreamError:
            return None
        folders = frozenset(
            str(f["id"]) for f in _as_list(body.get("musicFolders", {}).get("musicFolder"))
            if f.get("id") is not None
        )
        self.folder_cache.put(key, folders)
        return folders

    @staticmethod
    async def stored(
        store: LibraryStore,
        candidates: Sequence[tuple[int, str]],
        folders: frozenset[str],
        limit: int | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """(id, stored song object) for the first ``limit`` candidates in the caller's folders.

        One SQLite query, no upstream call. Songs whose scan recorded no folder are
        dropped: musegate cannot tell who may see them. The folder key is internal
        and per-user fields are stripped again in case a store holds older objects.
        """
        limit = len(candidates) if limit is None else limit
        records = await store.tracks_by_ids([int(tid) for tid, _ in candidates])
        out: list[tuple[str, dict[str, Any]]] = []
        for tid, uid in candidates:
            if len(out) >= limit:
                break
            rec = records.get(tid)
            if rec is None or not rec.raw:
                continue
            folder = rec.raw.get(FOLDER_KEY)
            if folder is None or str(folder) not in folders:
                continue
            child = shared_song(rec.raw)
            child.pop(FOLDER_KEY, None)
            out.append((uid, child))
        return out

    async def visible(
        self,
        store: LibraryStore,
        candidates: Sequence[tuple[int, str]],
        creds: Credentials,
        client: Mapping[str, str],
        limit: int | None = None,
    ) -> list[tuple[str, dict[str, Any]]]:
        """(upstream id, Child) for the first ``limit`` candidates the caller may see, by mode."""
        if self.visibility == "folders":
            folders = await self.visible_folders(creds, client)
            if folders is not None:
                return await self.stored(store, candidates, folders, limit)
        return await self.hydrate([u for _, u in candidates], creds, client, limit=limit)


GATEWAY = web.AppKey("subsonic_gateway", SubsonicGateway)


# ---------------------------------------------------------------------------- helpers


def _as_list(value: Any) -> list[dict[str, Any]]:
    """Subsonic JSON lists may arrive as a single object when they hold one element."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    return [v for v in items if isinstance(v, dict)]


class _Request:
    """The merged parameters and raw body of one intercepted request."""

    def __init__(self, request: web.Request, params: dict[str, str], body: bytes | None):
        self.request = request
        self.params = params
        self.body = body
        self.creds = Credentials.of(params, request.headers)


async def _read(request: web.Request) -> _Request:
    body: bytes | None = None
    form: MultiDict[str] = MultiDict()
    if request.method == "POST" and request.body_exists:
        body = await request.read()
        if request.content_type == "application/x-www-form-urlencoded":
            charset = request.charset or "utf-8"
            form = MultiDict(parse_qsl(body.decode(charset, errors="replace"),
                                       keep_blank_values=True))
    params = params_of(request, form)
    request[PARAMS] = params
    return _Request(request, params, body)


def _count(params: Mapping[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Fail(GENERIC, f"Invalid value for parameter {name}: {raw!r}") from None
    return max(0, min(value, MAX_COUNT))


def _similarity(value: float) -> float:
    """Cosine similarity clamped to the 0..1 the extension promises."""
    return round(float(np.clip(value, 0.0, 1.0)), 6)


class _Fail(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name)
    if not value:
        raise _Fail(MISSING_PARAMETER, f"Required parameter is missing: {name}")
    return value


class _Fallback(Exception):
    """musegate cannot answer this one: the upstream's own answer is returned."""


def _authenticated(
    inner: Callable[[web.Request, SubsonicGateway, _Request], Awaitable[web.StreamResponse]],
) -> Handler:
    """Parse, check the caller with the upstream, then answer (or fall back, or fail cleanly)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gw = request.app[GATEWAY]
        req = await _read(request)
        fmt, callback = response_format(req.params)
        if fmt == "jsonp" and not valid_callback(callback):
            # Checked before anything else: a fallback would hand a script-carrying callback
            # to the upstream, and some servers (supysonic) echo whatever they are given.
            return error_response(request, MISSING_PARAMETER, "Required parameter is missing "
                                  "or invalid: callback", gw.envelope.get())
        try:
            with gw.foreground.busy():  # background warming waits while a caller does
                await gw.auth.check(req.creds, req.params)
                gw.warm.notice(req.creds, req.params)
                return await inner(request, gw, req)
        except UpstreamError as exc:
            return error_response(request, exc.code, exc.message, gw.envelope.get())
        except _Fail as exc:
            return error_response(request, exc.code, exc.message, gw.envelope.get())
        except UpstreamDown as exc:
            # Never an answer (nor a refusal) the upstream did not give: the caller's app
            # shows "server unreachable" in its own format and retries.
            return error_response(request, GENERIC, upstream_errors.message(exc),
                                  gw.envelope.get(), status=exc.status)
        except _Fallback:
            return await proxy.forward(request, gw.upstream_url, body=req.body)

    return handler


def _snapshot(request: web.Request) -> LibrarySnapshot:
    snap = request.app[keys.SERVICE].snapshot
    if len(snap.catalogue) == 0:
        raise _Fallback()
    return snap


# ---------------------------------------------------------------------------- handlers


def _similar_songs(key: str, folders: bool) -> Handler:
    async def inner(request: web.Request, gw: SubsonicGateway, req: _Request) -> web.Response:
        item_id = _required(req.params, "id")
        count = _count(req.params, "count", 50)
        service = request.app[keys.SERVICE]
        snap = _snapshot(request)
        seeds = await gw.seeds(snap, item_id, req.creds, req.params, folders=folders)
        if not seeds:
            raise _Fallback()
        songs = await _similar_children(request, gw, req, seeds, count, service)
        return ok_response(request, {key: {"song": [child for child, _ in songs]}},
                           gw.envelope.get())

    return _authenticated(inner)


async def _similar_children(
    request: web.Request,
    gw: SubsonicGateway,
    req: _Request,
    seeds: list[int],
    count: int,
    service: Any,
) -> list[tuple[dict[str, Any], float]]:
    """The caller-visible neighbours of ``seeds`` as (Child, similarity), best first."""
    if count == 0:
        return []
    config = request.app[keys.CONFIG]
    folders = (await gw.visible_folders(req.creds, req.params)
               if gw.visibility == "folders" else None)
    # Twice as many candidates as asked: the caller may not see some, and asking FAISS for
    # more costs next to nothing. Filtering by folder is cheap, so in that mode the pool
    # grows until enough are visible (a caller who sees one folder of many still gets
    # ``count`` songs); hydration pays a getSong per candidate and keeps the first pool.
    n = 2 * count
    while True:
        async with service.reading() as snap:
            total = len(snap.catalogue)
            n = min(n, total)
            matches = await asyncio.to_thread(
                similar_tracks, snap.catalogue, snap.index, seeds,
                n=n, max_per_artist=config.max_per_artist,
                hide_duplicates=config.hide_duplicates,
            )
            candidates = [(m.track_id, snap.upstream_ids.get(m.track_id), float(m.similarity))
                          for m in matches]
        sims = {u: sim for _, u, sim in candidates if u}
        pairs = [(t, u) for t, u, _ in candidates if u]
        if folders is None:
            found = await gw.hydrate([u for _, u in pairs], req.creds, req.params, limit=count)
            break
        found = await gw.stored(service.store, pairs, folders, limit=count)
        if len(found) >= count or n >= total:
            break
        n *= 4
    return [(child, sims[uid]) for uid, child in found]


async def _sonic_similar(request: web.Request, gw: SubsonicGateway, req: _Request) -> web.Response:
    item_id = _required(req.params, "id")
    count = _count(req.params, "count", 10)
    service = request.app[keys.SERVICE]
    snap = _snapshot(request)
    seeds = await gw.seeds(snap, item_id, req.creds, req.params)
    if not seeds:
        raise _Fallback()
    songs = await _similar_children(request, gw, req, seeds, count, service)
    matches = [{"entry": child, "similarity": _similarity(sim)} for child, sim in songs]
    return ok_response(request, {"sonicMatch": matches}, gw.envelope.get())


async def _sonic_path(request: web.Request, gw: SubsonicGateway, req: _Request) -> web.Response:
    start_id = _required(req.params, "startSongId")
    end_id = _required(req.params, "endSongId")
    count = max(2, _count(req.params, "count", 25))
    service = request.app[keys.SERVICE]
    snap = _snapshot(request)
    start, end = snap.by_upstream.get(start_id), snap.by_upstream.get(end_id)
    if start is None or end is None or start == end:
        raise _Fallback()
    config = request.app[keys.CONFIG]
    async with service.reading() as snap:
        path = await asyncio.to_thread(
            song_path, snap.catalogue, snap.index, start, end,
            length=count, max_per_artist=config.max_per_artist,
            hide_duplicates=config.hide_duplicates,
        )
        ids = path.track_ids
    hydrated = dict(await gw.visible(service.store, _with_upstream(snap, ids),
                                     req.creds, req.params))
    if start_id not in hydrated or end_id not in hydrated:
        raise _Fail(NOT_FOUND, "Song not found")
    ids = await _repair_path(service, gw, req, ids, hydrated)
    async with service.reading() as snap:
        vectors = snap.catalogue.vectors[snap.catalogue.rows(ids)]
        sims = (vectors @ vectors[0]).astype(float)
        upstream = [snap.upstream_ids[t] for t in ids]
    matches = [
        {"entry": hydrated[u], "similarity": _similarity(s)}
        for u, s in zip(upstream, sims, strict=True)
        if u in hydrated
    ]
    return ok_response(request, {"sonicMatch": matches}, gw.envelope.get())


def _with_upstream(snap: Any, ids: list[int]) -> list[tuple[int, str]]:
    return [(t, snap.upstream_ids[t]) for t in ids]


async def _repair_path(
    service: Any, gw: SubsonicGateway, req: _Request, ids: list[int], hydrated: dict[str, Any],
    rounds: int = 3,
) -> list[int]:
    """Replace path songs the caller may not see with visible ones, so the path keeps its length.

    Each hidden song is swapped for the nearest unused song to the midpoint of its two
    neighbours (the same great-circle idea the path is built on); replacements are
    checked with the upstream like every other song. ``hydrated`` gains what they bring.
    """
    ids = list(ids)
    refused: set[int] = set()
    for _ in range(rounds):
        async with service.reading() as snap:
            hidden = [i for i, t in enumerate(ids) if snap.upstream_ids[t] not in hydrated]
            if not hidden:
                return ids
            refused.update(ids[i] for i in hidden)
            cat = snap.catalogue
            for i in hidden:
                mid = cat.vectors[cat.row(ids[i - 1])] + cat.vectors[cat.row(ids[i + 1])]
                _, found = snap.index.search(mid, len(ids) + len(refused) + 5)
                taken = set(ids) | refused
                pick = next((int(t) for t in found[0] if t >= 0 and int(t) not in taken), None)
                if pick is not None:
                    ids[i] = pick
            candidates = _with_upstream(snap, [
                t for t in ids if t not in refused and snap.upstream_ids[t] not in hydrated])
        hydrated.update(await gw.visible(service.store, candidates, req.creds, req.params))
    async with service.reading() as snap:
        return [t for t in ids if snap.upstream_ids[t] in hydrated]


async def open_subsonic_extensions(request: web.Request) -> web.Response:
    """The upstream's extensions plus ``sonicSimilarity``; no authentication, as the spec says."""
    gw = request.app[GATEWAY]
    req = await _read(request)
    # Clients ask this at login: a good moment to warm the caller's songs (the warm checks
    # the credentials with the upstream first; this answer does not depend on them).
    gw.warm.notice(req.creds, req.params)
    theirs: list[dict[str, Any]] = []
    try:
        body = await gw.upstream.call(
            "getOpenSubsonicExtensions", req.creds if req.creds.present else None, req.params
        )
        theirs = _as_list(body.get("openSubsonicExtensions"))
    except (UpstreamError, UpstreamDown):
        pass  # an older server without the endpoint, or down: musegate's own extension still holds
    merged = [e for e in theirs if e.get("name") != EXTENSION["name"]] + [dict(EXTENSION)]
    return ok_response(request, {"openSubsonicExtensions": merged}, gw.envelope.get())


async def _observed_mutation(request: web.Request) -> web.StreamResponse:
    """Relay a call that changes songs' Child objects unchanged, dropping them from the cache.

    Passed through like any other request (the upstream authenticates it and answers);
    musegate only reads the song ids it names (every ``id``, from the query and a POSTed
    form) so that no cached Child predating the change is served afterwards.
    """
    metrics.mark(request, metrics.PASSTHROUGH)
    gw = request.app[GATEWAY]
    body: bytes | None = None
    ids = list(request.query.getall("id", ()))
    if request.method == "POST" and request.body_exists:
        body = await request.read()
        if request.content_type == "application/x-www-form-urlencoded":
            text = body.decode(request.charset or "utf-8", errors="replace")
            ids += [v for k, v in parse_qsl(text, keep_blank_values=True) if k == "id"]
    with gw.songs.changing(i for i in ids if i):
        return await proxy.forward(request, gw.upstream_url, body=body)


async def _observed_login(request: web.Request) -> web.StreamResponse:
    """Relay ``ping`` unchanged; a caller not seen lately gets their songs warmed meanwhile.

    Clients ping when they connect, before they ask for a mix. Only the query string and
    headers are read (a POSTed form is relayed unread); the warm checks the credentials
    with the upstream before asking anything else.
    """
    metrics.mark(request, metrics.PASSTHROUGH)
    _notice_login(request.app, request.query, request.headers)
    return await proxy.forward(request, request.app[GATEWAY].upstream_url)


def _notice_login(app: web.Application, query: Any, headers: Any) -> None:
    """Note a ``ping``'s caller for the warm; also run by gateway.fast_relay's fast path."""
    gw = app.get(GATEWAY)
    if gw is not None and gw.warm.enabled:
        gw.warm.notice(Credentials.of(query, headers), query)


# ---------------------------------------------------------------------------- wiring


ENDPOINTS: dict[str, Handler] = {
    "getSimilarSongs": _similar_songs("similarSongs", folders=True),
    "getSimilarSongs2": _similar_songs("similarSongs2", folders=False),
    "getSonicSimilarTracks": _authenticated(_sonic_similar),
    "findSonicPath": _authenticated(_sonic_path),
    "getOpenSubsonicExtensions": open_subsonic_extensions,
}


def add_subsonic(app: web.Application, config: Config) -> None:
    """Register the intercepted endpoints (call before the proxy's catch-all)."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        envelope = EnvelopeCache()
        async with aiohttp.ClientSession(
            timeout=upstream_errors.client_timeout(config), cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            app[ENVELOPE] = envelope
            gateway = SubsonicGateway(config, session, envelope,
                                      app.get(keys.CLOCK) or time.monotonic)
            gateway.service = app.get(keys.SERVICE)
            gateway.warm.metrics = app.get(metrics.METRICS)
            app[GATEWAY] = gateway
            try:
                yield
            finally:
                await gateway.warm.close()

    app.cleanup_ctx.append(lifetime)
    routes = {**ENDPOINTS, **dict.fromkeys(MUTATIONS, _observed_mutation),
              "ping": _observed_login}
    for name, handler in routes.items():
        for path in (f"/rest/{name}", f"/rest/{name}.view"):
            app.router.add_route("GET", path, handler)
            app.router.add_route("POST", path, handler)
    # A GET ``ping`` keeps the pass-through's fast path (gateway.fast_relay), noted there too.
    app.setdefault(fast_relay.OBSERVED, {})[_observed_login] = _notice_login
