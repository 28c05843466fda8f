"""The Jellyfin similarity endpoints musegate answers itself; everything else passes through.

Intercepted (GET; routes and parameter names case-insensitive, as in Jellyfin;
optionally below a path prefix, so a Jellyfin mounted under its own BaseUrl
works whether musegate's ``upstream_url`` includes that BaseUrl or the
clients do):

* ``Items|Songs|Albums|Artists|Playlists/{id}/InstantMix``,
  ``MusicGenres/{name}/InstantMix``, ``MusicGenres/InstantMix?id=``,
  ``Artists/InstantMix?id=`` — with ``userId``, ``limit`` (Jellyfin's own mix
  holds at most 200 songs, so that is the default), ``fields``,
  ``enableImages``, ``enableUserData``, ``imageTypeLimit``,
  ``enableImageTypes``. A song seed comes first, then its sonic neighbours;
  album, artist, playlist, genre (and folder) seeds blend the neighbours of
  their songs round-robin, so a varied playlist yields a varied mix rather
  than the neighbours of one averaged point. When the index cannot fill
  ``limit`` the list is topped up from Jellyfin's own mix.
* ``Items|Albums|Artists/{id}/Similar`` when ``{id}`` is an analysed song
  (``limit`` default 50, ``excludeArtistIds`` honoured); any other item passes
  through.
* ``/AudioMuseAI/similar_tracks``, ``/find_path``, ``/health`` — the AudioMuse-AI
  Jellyfin plugin's routes (which relay AudioMuse-AI's JSON shapes, produced
  here by ``gateway.compat``), with the caller's Jellyfin token checked and the
  results limited to songs the caller may see.

Every answer is made of the upstream's own ``BaseItemDto`` objects as the
*caller* sees them: one ``GET /Items?Ids=…`` with the caller's authorization
and display parameters (and Accept header, so a client asking for
``profile="CamelCase"`` gets camelCase), then ordered by similarity. Jellyfin
drops what the caller may not see, so per-library restrictions, parental
ratings and per-user data all come from Jellyfin itself. The envelope is
Jellyfin's ``BaseItemDtoQueryResult`` (``Items``, ``TotalRecordCount``,
``StartIndex``).

Before anything is answered the caller's token is checked with Jellyfin
(``gateway.jellyfin_auth``); a refusal is Jellyfin's own answer, relayed.
When musegate cannot answer — the index is empty, the seed is unknown or not
analysed, a parameter is malformed — the request goes to Jellyfin unchanged
(``gateway.proxy.forward``) and the caller gets Jellyfin's own answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp
import numpy as np
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

from gateway import compat, keys, metrics, proxy, upstream_errors
from gateway.jellyfin_auth import (
    CredentialCache,
    JellyfinAuthChecker,
    JellyfinCredentials,
    Refused,
    UpstreamDown,
)
from gateway.params import not_found
from index.catalogue import Catalogue
from index.duplicates import duplicate_among
from index.faiss_index import SimilarityIndex
from index.similar import similar_tracks
from musegate.config import Config
from musegate.services import LibrarySnapshot, unique_ids

log = logging.getLogger(__name__)

# Jellyfin's MusicManager caps its own instant mix at 200 songs.
MIX_DEFAULT_LIMIT = 200
SIMILAR_DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
# Ids per ``GET /Items?Ids=`` call: 200 GUIDs (≈6.6 kB) keep the request line under
# Kestrel's default 8 kB limit, so a limit-200 mix costs exactly one call.
IDS_PER_CALL = 200
# Rounds of asking for replacements when Jellyfin withholds some songs from the caller.
HYDRATE_ROUNDS = 3
# A collection seed contributes at most this many songs to the blend (spread evenly).
MAX_BLEND_SEEDS = 24
# Songs of a collection fetched to find its analysed members.
SEED_FETCH_LIMIT = 5000
SERVER_NAME = "The Jellyfin server behind musegate"

_PREFIX = r"(?P<prefix>(?:/[^/]+)*?)"
_MIX_BY_ID = re.compile(
    _PREFIX + r"/(?P<kind>items|songs|albums|artists|playlists)/(?P<id>[^/]+)/instantmix", re.I)
_MIX_BY_GENRE = re.compile(_PREFIX + r"/musicgenres/(?P<name>[^/]+)/instantmix", re.I)
_MIX_BY_QUERY = re.compile(_PREFIX + r"/(?P<kind>musicgenres|artists)/instantmix", re.I)
_SIMILAR = re.compile(_PREFIX + r"/(?P<kind>items|albums|artists)/(?P<id>[^/]+)/similar", re.I)
_PLUGIN = re.compile(_PREFIX + r"/audiomuseai/(?P<op>similar_tracks|find_path|health)", re.I)
# One aiohttp resource for all of them (matched on the decoded path; the handler then
# re-matches the raw path above, so a genre name with an encoded "/" stays one segment).
ROUTE = ("/{jellyfin_path:(?i:(?:[^/]+/)*?(?:"
         "(?:items|songs|albums|artists|playlists)/[^/]+/instantmix"
         "|musicgenres/.+/instantmix|(?:musicgenres|artists)/instantmix"
         "|(?:items|albums|artists)/[^/]+/similar"
         "|audiomuseai/(?:similar_tracks|find_path|health)))}")

# The caller's display parameters, relayed to ``GET /Items?Ids=`` (Jellyfin's spelling).
DISPLAY_PARAMS = ("userId", "fields", "enableImages", "enableUserData", "imageTypeLimit",
                  "enableImageTypes")
_FORWARDED = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "User-Agent")


class _Fallback(Exception):
    """musegate cannot answer this one: Jellyfin's own answer is returned."""


def normalise_id(value: str) -> str:
    """Jellyfin ids are GUIDs; clients send them as 32 hex digits or dashed, any case."""
    return value.strip().replace("-", "").lower()


def _item_id(item: dict[str, Any]) -> str | None:
    raw = item.get("Id", item.get("id"))
    return normalise_id(str(raw)) if raw else None


@dataclass
class Call:
    """One intercepted request: where to ask Jellyfin (base + prefix) and as whom."""

    request: web.Request
    base: str
    creds: JellyfinCredentials
    query: CIMultiDict[str]
    forwarded: dict[str, str]

    @property
    def camel(self) -> bool:
        """Jellyfin answers camelCase when the client asks with ``profile="CamelCase"``."""
        return 'profile="camelcase"' in self.request.headers.get("Accept", "").lower()

    def headers(self, accept: str | None = None) -> dict[str, str]:
        return {**self.forwarded, **self.creds.upstream_headers(),
                "Accept": accept or "application/json"}

    def display(self) -> dict[str, str]:
        """The caller's own display/user parameters, under Jellyfin's names."""
        return {name: self.query[name] for name in DISPLAY_PARAMS if self.query.get(name)}

    def int_param(self, name: str, default: int) -> int:
        raw = self.query.get(name)
        if raw is None or raw == "":
            return default
        try:
            value = int(raw)
        except ValueError:
            raise _Fallback() from None  # Jellyfin's own 400
        return max(0, min(value, MAX_LIMIT))


class JellyfinGateway:
    """Per-app state: the session for calls made as the caller, and the token cache."""

    def __init__(self, config: Config, session: aiohttp.ClientSession,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.upstream_url = config.upstream_url.rstrip("/")
        self.session = session
        self.cache = CredentialCache(config.auth_cache_seconds, clock)
        self.auth = JellyfinAuthChecker(session, self.cache)

    def call(self, request: web.Request, prefix: str) -> Call:
        fwd = proxy.request_headers(request)
        forwarded = {k: fwd[k] for k in _FORWARDED if k in fwd}
        return Call(request, self.upstream_url + prefix,
                    JellyfinCredentials.of(request.headers, request.query),
                    CIMultiDict(request.query), forwarded)

    # ------------------------------------------------------------------ upstream

    async def get_json(self, call: Call, path: str, params: dict[str, str],
                       accept: str | None = None) -> Any:
        """GET a JSON answer as the caller; None when Jellyfin says no (404, 400, 403…).

        UpstreamDown for a 5xx, a transport failure or a success that is not JSON: an
        outage must not read as "the caller may see none of these songs".
        """
        url = URL(call.base + path)
        try:
            async with self.session.get(url, params=params, headers=call.headers(accept),
                                        allow_redirects=False) as resp:
                if resp.status >= 500:
                    raise upstream_errors.from_status(path, resp.status)
                if resp.status >= 300:
                    return None
                raw = await resp.read()
        except upstream_errors.TRANSPORT_ERRORS as exc:
            raise upstream_errors.from_exception(path, exc) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise UpstreamDown(f"{path}: not a Jellyfin answer") from None

    async def items(self, call: Call, ids: Sequence[str], params: dict[str, str],
                    accept: str | None = None) -> dict[str, dict[str, Any]]:
        """``GET /Items?Ids=…`` as the caller (in chunks of IDS_PER_CALL): id -> BaseItemDto."""
        chunks = [ids[i : i + IDS_PER_CALL] for i in range(0, len(ids), IDS_PER_CALL)]
        answers = await asyncio.gather(*(
            self.get_json(call, "/Items", {**params, "Ids": ",".join(c)}, accept) for c in chunks
        ))
        found: dict[str, dict[str, Any]] = {}
        for body in answers:
            for item in _items_of(body):
                iid = _item_id(item)
                if iid:
                    found[iid] = item
        return found

    async def hydrate(self, call: Call, ranked: Sequence[str], limit: int
                      ) -> list[dict[str, Any]]:
        """The caller's BaseItemDtos for the first ``limit`` of ``ranked`` Jellyfin lets them see.

        The first round asks for exactly ``limit`` ids (one call up to 200); only when
        Jellyfin withholds some are the next candidates asked for, as many as are missing.
        """
        params = call.display()
        accept = call.request.headers.get("Accept") or None
        found: dict[str, dict[str, Any]] = {}
        pos = 0
        for _ in range(HYDRATE_ROUNDS):
            visible = sum(1 for u in ranked[:pos] if u in found)
            need = limit - visible
            if need <= 0 or pos >= len(ranked):
                break
            batch = list(ranked[pos : pos + need])
            pos += len(batch)
            found.update(await self.items(call, batch, params, accept))
        return [found[u] for u in ranked[:pos] if u in found][:limit]

    async def own_answer(self, call: Call) -> list[dict[str, Any]]:
        """Jellyfin's own answer to the caller's request (for topping up); [] when it fails."""
        request = call.request
        url = URL(self.upstream_url + request.raw_path, encoded=True)
        accept = request.headers.get("Accept") or None
        try:
            async with self.session.get(url, headers=call.headers(accept),
                                        allow_redirects=False) as resp:
                if resp.status != 200:
                    return []
                body = json.loads(await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError):
            return []
        return _items_of(body)

    # --------------------------------------------------------------------- seeds

    async def seed_songs(self, call: Call, item_id: str, playlist_only: bool = False
                         ) -> list[str]:
        """Jellyfin ids of the songs of an album, artist, playlist, genre or folder.

        Asked as the caller: a seed the caller cannot see resolves to nothing (and
        the request then falls back to Jellyfin, which answers 404).
        """
        body = await self.get_json(call, "/Items", {
            "Ids": item_id, "EnableImages": "false", "EnableUserData": "false",
            **_user(call)})
        found = _items_of(body)
        if not found:
            return []
        item = found[0]
        kind = str(item.get("Type", ""))
        if playlist_only and kind != "Playlist":
            return []
        base = {"IncludeItemTypes": "Audio", "Recursive": "true", "EnableImages": "false",
                "EnableUserData": "false", "Limit": str(SEED_FETCH_LIMIT), **_user(call)}
        if kind == "Playlist":
            body = await self.get_json(call, f"/Playlists/{item_id}/Items", {
                "EnableImages": "false", "EnableUserData": "false", **_user(call)})
        elif kind == "MusicArtist":
            body = await self.get_json(call, "/Items", {**base, "ArtistIds": item_id})
        elif kind in ("MusicGenre", "Genre"):
            return await self.genre_songs(call, str(item.get("Name", "")))
        elif kind == "MusicAlbum" or item.get("IsFolder"):
            body = await self.get_json(call, "/Items", {**base, "ParentId": item_id})
        else:
            return []
        return [i for i in (_item_id(x) for x in _items_of(body)
                            if x.get("Type", "Audio") == "Audio") if i]

    async def genre_songs(self, call: Call, name: str) -> list[str]:
        if not name:
            return []
        body = await self.get_json(call, "/Items", {
            "Genres": name, "IncludeItemTypes": "Audio", "Recursive": "true",
            "EnableImages": "false", "EnableUserData": "false",
            "Limit": str(SEED_FETCH_LIMIT), **_user(call)})
        return [i for i in (_item_id(x) for x in _items_of(body)) if i]


GATEWAY = web.AppKey("jellyfin_gateway", JellyfinGateway)


# ---------------------------------------------------------------------------- helpers


def _items_of(body: Any) -> list[dict[str, Any]]:
    """The items of a QueryResult in either casing (or a bare list)."""
    if isinstance(body, dict):
        body = body.get("Items", body.get("items"))
    return [x for x in body if isinstance(x, dict)] if isinstance(body, list) else []


def _user(call: Call) -> dict[str, str]:
    user = call.query.get("userId")
    return {"userId": user} if user else {}


def _query_result(call: Call, items: list[dict[str, Any]]) -> web.Response:
    keys_ = ("items", "totalRecordCount", "startIndex") if call.camel else \
        ("Items", "TotalRecordCount", "StartIndex")
    return web.json_response(dict(zip(keys_, (items, len(items), 0), strict=True)))


def _snapshot(request: web.Request) -> LibrarySnapshot:
    try:
        snap = request.app[keys.SERVICE].snapshot
    except (RuntimeError, KeyError):
        raise _Fallback() from None
    if len(snap.catalogue) == 0:
        raise _Fallback()
    return snap


def _lookup(snap: LibrarySnapshot, upstream_id: str) -> int | None:
    found = snap.by_upstream.get(upstream_id)
    return found if found is not None else snap.by_upstream.get(normalise_id(upstream_id))


def blend(cat: Catalogue, index: SimilarityIndex, seeds: Sequence[int], n: int,
          max_per_artist: int, hide_duplicates: bool = True) -> list[int]:
    """Round-robin over the neighbour lists of (up to MAX_BLEND_SEEDS evenly spread) seeds.

    Averaging a varied playlist or a whole genre into one vector lands between its
    songs, near none of them; interleaving each song's own neighbours keeps the mix
    as varied as its seed. Seed songs may appear as another seed's neighbour.
    """
    seeds = spread_seeds(cat, [int(s) for s in seeds if cat.has(int(s))], MAX_BLEND_SEEDS)
    if not seeds or n <= 0:
        return []
    per = min(len(cat), max(8, -(-2 * n // len(seeds))))
    lists = [[m.track_id for m in similar_tracks(cat, index, [s], n=per,
                                                 max_per_artist=max_per_artist,
                                                 hide_duplicates=hide_duplicates)]
             for s in seeds]
    out: list[int] = []
    seen: set[int] = set()
    for rank in range(per):
        for ranked in lists:
            if rank < len(ranked) and ranked[rank] not in seen:
                seen.add(ranked[rank])
                row = cat.row(ranked[rank])
                # two seeds' lists may each hold one copy of a recording
                if hide_duplicates and duplicate_among(cat, row, cat.rows(out)):
                    continue
                out.append(ranked[rank])
    return out[:n]


def spread_seeds(cat: Catalogue, seeds: Sequence[int], k: int) -> list[int]:
    """Up to ``k`` seeds, most representative first, each next one the least like those before.

    Farthest-point order: the round-robin in ``blend`` then alternates between the
    different sounds of a collection from the first songs on, instead of exhausting
    the neighbours of one album (or artist) before reaching the next.
    """
    seeds = unique_ids(list(seeds))
    if len(seeds) <= 1:
        return seeds
    vectors = cat.vectors[cat.rows(np.asarray(seeds, np.int64))]
    centre = vectors.mean(axis=0)
    first = int(np.argmax(vectors @ centre))
    picked = [first]
    closest = vectors @ vectors[first]  # each seed's similarity to its nearest pick
    closest[first] = np.inf
    while len(picked) < min(k, len(seeds)):
        nxt = int(np.argmin(closest))
        picked.append(nxt)
        closest = np.maximum(closest, vectors @ vectors[nxt])
        closest[picked] = np.inf
    return [seeds[i] for i in picked]


async def _ranked(request: web.Request, seeds: list[int], song_seed: bool, n: int
                  ) -> list[str]:
    """Jellyfin ids, best first: the song seed itself first, or the blended neighbours."""
    service = request.app[keys.SERVICE]
    cap = request.app[keys.CONFIG].max_per_artist
    hide = request.app[keys.CONFIG].hide_duplicates
    async with service.reading() as snap:
        cat, index = snap.catalogue, snap.index
        if song_seed:
            matches = await asyncio.to_thread(similar_tracks, cat, index, seeds,
                                              n=min(n, len(cat)), max_per_artist=cap,
                                              hide_duplicates=hide)
            ids = [seeds[0], *(m.track_id for m in matches)]
        else:
            ids = await asyncio.to_thread(blend, cat, index, seeds, n, cap, hide)
        return [snap.upstream_ids[t] for t in ids if t in snap.upstream_ids]


async def _answer(gw: JellyfinGateway, call: Call, seeds: list[int], song_seed: bool,
                  limit: int, exclude_seed: bool = False,
                  keep: Callable[[dict[str, Any]], bool] | None = None) -> web.Response:
    """Rank, hydrate as the caller, filter, top up from Jellyfin's own answer."""
    if limit == 0:
        return _query_result(call, [])
    # Twice as many candidates as asked: Jellyfin may withhold some, and FAISS is cheap.
    ranked = await _ranked(call.request, seeds, song_seed, 2 * limit + 1)
    items = await gw.hydrate(call, ranked, limit + (1 if exclude_seed else 0))
    if song_seed:
        first = ranked[0] if ranked else None
        if not items or _item_id(items[0]) != first:
            raise _Fallback()  # the caller may not see the seed: Jellyfin's own 404
        if exclude_seed:
            items = items[1:]
    if keep is not None:
        items = [i for i in items if keep(i)]
    items = items[:limit]
    if len(items) < limit:
        have = {_item_id(i) for i in items}
        if exclude_seed and ranked:
            have.add(ranked[0])
        for extra in await gw.own_answer(call):
            eid = _item_id(extra)
            if eid and eid not in have and (keep is None or keep(extra)):
                have.add(eid)
                items.append(extra)
                if len(items) >= limit:
                    break
    return _query_result(call, items)


# ---------------------------------------------------------------------------- handlers


async def _instant_mix(gw: JellyfinGateway, call: Call, kind: str, value: str,
                       by_name: bool = False) -> web.Response:
    limit = call.int_param("limit", MIX_DEFAULT_LIMIT)
    snap = _snapshot(call.request)
    if by_name:
        songs = await gw.genre_songs(call, value)
        song_seed = False
    else:
        track = _lookup(snap, value) if kind != "playlists" else None
        if track is not None:
            return await _answer(gw, call, [track], True, limit)
        songs = await gw.seed_songs(call, normalise_id(value), playlist_only=kind == "playlists")
        song_seed = False
    seeds = unique_ids([t for t in (_lookup(snap, s) for s in songs) if t is not None])
    if not seeds:
        raise _Fallback()
    return await _answer(gw, call, seeds, song_seed, limit)


async def _similar(gw: JellyfinGateway, call: Call, item_id: str) -> web.Response:
    snap = _snapshot(call.request)
    track = _lookup(snap, item_id)
    if track is None:
        raise _Fallback()
    limit = call.int_param("limit", SIMILAR_DEFAULT_LIMIT)
    excluded = {normalise_id(a) for v in call.query.getall("excludeArtistIds", [])
                for a in v.split(",") if a.strip()}

    def keep(item: dict[str, Any]) -> bool:
        artists = item.get("ArtistItems", item.get("artistItems")) or []
        return not any(normalise_id(str(a.get("Id", a.get("id", "")))) in excluded
                       for a in artists if isinstance(a, dict))

    return await _answer(gw, call, [track], True, limit, exclude_seed=True,
                         keep=keep if excluded else None)


# The AudioMuse-AI plugin's parameter names (matched case-insensitively).
_PLUGIN_PARAMS = ("item_id", "title", "artist", "n", "eliminate_duplicates", "start_song_id",
                  "end_song_id", "max_steps", "mood_similarity", "radius_similarity",
                  "path_fix_size")


def _plugin_request(call: Call, **override: str) -> web.Request:
    """The request with the plugin's parameter names in their canonical spelling."""
    canonical = {p.lower(): p for p in _PLUGIN_PARAMS}
    query: MultiDict[str] = MultiDict()
    for k, v in call.request.query.items():
        query.add(canonical.get(k.lower(), k), v)
    for k, v in override.items():
        query[k] = v
    return call.request.clone(rel_url=call.request.rel_url.with_query(query))


async def _visible(gw: JellyfinGateway, call: Call, ids: Sequence[str]) -> set[str]:
    found = await gw.items(call, unique_ids_str(ids), {
        "EnableImages": "false", "EnableUserData": "false", **_user(call)})
    return set(found)


def unique_ids_str(values: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def _json_of(resp: web.StreamResponse) -> Any:
    body = getattr(resp, "body", None) or getattr(resp, "text", None)
    return json.loads(body)


async def _plugin(gw: JellyfinGateway, call: Call, op: str) -> web.StreamResponse:
    if op == "health":
        return await compat.health(call.request)
    p = CIMultiDict(call.request.query)
    if op == "similar_tracks":
        try:
            n = max(1, min(int(p.get("n") or compat.SIMILAR_DEFAULT_N), 500))
        except ValueError:
            n = compat.SIMILAR_DEFAULT_N
        seed = p.get("item_id")
        resp = await compat.similar_tracks_compat(_plugin_request(call, n=str(min(2 * n, 500))))
        found = _json_of(resp)
        ids = [normalise_id(str(t["item_id"])) for t in found]
        visible = await _visible(gw, call, ids + ([normalise_id(seed)] if seed else []))
        if seed and normalise_id(seed) not in visible:
            raise not_found("item_id", f"Track '{seed}' not found in the database.")
        kept = [t for t, i in zip(found, ids, strict=True) if i in visible][:n]
        return web.json_response(kept)
    resp = await compat.find_path_compat(_plugin_request(call))
    found = _json_of(resp)
    ids = [normalise_id(str(t["item_id"])) for t in found["path"]]
    ends = {"start_song_id": p.get("start_song_id", ""), "end_song_id": p.get("end_song_id", "")}
    visible = await _visible(gw, call, ids + [normalise_id(v) for v in ends.values()])
    for field, value in ends.items():
        if normalise_id(value) not in visible:
            raise not_found(field, f"Track '{value}' not found in the database.")
    path = [t for t, i in zip(found["path"], ids, strict=True) if i in visible]
    return web.json_response({
        "path": path,
        "total_distance": round(float(sum(t.get("distance", 0.0) for t in path)), 6),
    })


async def _dispatch(gw: JellyfinGateway, request: web.Request
                    ) -> tuple[Call, Callable[[], Awaitable[web.StreamResponse]]] | None:
    path = request.raw_path.split("?", 1)[0]
    for regex, make in _ROUTES:
        m = regex.fullmatch(path)
        if m:
            call = gw.call(request, m.group("prefix"))
            return call, make(gw, call, m)
    return None


def _mix_by_id(gw: JellyfinGateway, call: Call, m: re.Match[str]
               ) -> Callable[[], Awaitable[web.StreamResponse]]:
    return lambda: _instant_mix(gw, call, m.group("kind").lower(), unquote(m.group("id")))


def _mix_by_genre(gw: JellyfinGateway, call: Call, m: re.Match[str]
                  ) -> Callable[[], Awaitable[web.StreamResponse]]:
    return lambda: _instant_mix(gw, call, "musicgenres", unquote(m.group("name")), by_name=True)


def _mix_by_query(gw: JellyfinGateway, call: Call, m: re.Match[str]
                  ) -> Callable[[], Awaitable[web.StreamResponse]]:
    async def run() -> web.StreamResponse:
        item_id = call.query.get("id")
        if not item_id:
            raise _Fallback()  # Jellyfin's own 400 for the missing required id
        return await _instant_mix(gw, call, m.group("kind").lower(), item_id)
    return run


def _similar_route(gw: JellyfinGateway, call: Call, m: re.Match[str]
                   ) -> Callable[[], Awaitable[web.StreamResponse]]:
    return lambda: _similar(gw, call, unquote(m.group("id")))


def _plugin_route(gw: JellyfinGateway, call: Call, m: re.Match[str]
                  ) -> Callable[[], Awaitable[web.StreamResponse]]:
    return lambda: _plugin(gw, call, m.group("op").lower())


_ROUTES: tuple[tuple[re.Pattern[str], Any], ...] = (
    (_MIX_BY_ID, _mix_by_id),
    (_MIX_BY_GENRE, _mix_by_genre),
    (_MIX_BY_QUERY, _mix_by_query),
    (_SIMILAR, _similar_route),
    (_PLUGIN, _plugin_route),
)


async def handler(request: web.Request) -> web.StreamResponse:
    """Check the caller with Jellyfin, then answer, fall back, or relay Jellyfin's refusal."""
    gw = request.app[GATEWAY]
    if request.method != "GET":
        return await proxy.forward(request, gw.upstream_url)
    found = await _dispatch(gw, request)
    if found is None:
        return await proxy.forward(request, gw.upstream_url)
    call, run = found
    metrics.mark(request, metrics.INTERCEPTED)
    try:
        await gw.auth.check(call.base, call.creds, call.forwarded)
        return await run()
    except Refused as exc:
        return web.Response(status=exc.status, body=exc.body, headers=exc.headers)
    except UpstreamDown as exc:
        log.warning("jellyfin upstream failed for %s: %s", request.path, exc.reason)
        return proxy.upstream_error(request, upstream_errors.message(exc, SERVER_NAME),
                                    status=exc.status)
    except _Fallback:
        metrics.mark(request, metrics.PASSTHROUGH)
        return await proxy.forward(request, gw.upstream_url)


def add_jellyfin(app: web.Application, config: Config) -> None:
    """Register the intercepted endpoints (call before the proxy's catch-all)."""

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            timeout=upstream_errors.client_timeout(config), cookie_jar=aiohttp.DummyCookieJar()
        ) as session:
            app[GATEWAY] = JellyfinGateway(config, session, app.get(keys.CLOCK) or time.monotonic)
            yield

    app.cleanup_ctx.append(lifetime)
    app.router.add_route("*", ROUTE, handler, name="jellyfin-intercept")
