"""AudioMuse-AI-compatible endpoints, so existing integrations work against musegate unchanged.

Parameter names and response shapes follow AudioMuse-AI's Flask API
(``/api/similar_tracks``, ``/api/find_path``, ``/api/search_tracks``,
``/api/alchemy``) and its Jellyfin plugin's controller (``/AudioMuseAI/...``,
which Symfonium and Finamp call). The facts were read from those projects'
public sources; see docs/api.md for the field-by-field mapping. Differences a
client could notice are deliberate and documented there:

* ``item_id`` is the media server's own id (the source's upstream id); a
  musegate numeric id is accepted on input too.
* ``distance`` is the cosine distance (1 − cosine similarity): smaller is closer.
* ``mood_similarity``/``radius_similarity``/``path_fix_size`` are accepted and
  ignored; the artist cap (``eliminate_duplicates``) and duplicate removal
  always follow musegate's rules.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from analysis.store import TrackRecord
from gateway import keys
from gateway.api import alchemy_with, parse_ingredients
from gateway.params import ApiError, Params, bad, not_found
from index.alchemy import alchemy
from index.path import song_path
from index.similar import similar_tracks
from musegate.services import LibrarySnapshot

# AudioMuse-AI's defaults (n=10 for similar_tracks, 25 steps for find_path, 10 alchemy results).
SIMILAR_DEFAULT_N = 10
PATH_DEFAULT_STEPS = 25
ALCHEMY_DEFAULT_N = 10


def _item(track: TrackRecord, snap: LibrarySnapshot | None = None) -> dict[str, Any]:
    raw = track.raw or {}
    album_artist = raw.get("albumartist") or raw.get("album_artist") or raw.get("AlbumArtist")
    return {
        "item_id": track.upstream_id,
        "title": track.title,
        "author": track.artist,
        "album": track.album or "unknown",
        "album_artist": album_artist or track.artist or "unknown",
    }


async def _items(request: web.Request, ids: list[int], extras: list[dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    records = await request.app[keys.STORE].tracks_by_ids(ids)
    return [
        {**_item(records[i]), **extra} for i, extra in zip(ids, extras, strict=True) if i in records
    ]


def _lookup(snap: LibrarySnapshot, value: str | None, field: str) -> int:
    track_id = snap.resolve_id(value) if value else None
    if track_id is None:
        raise not_found(field, f"Track '{value}' not found in the database.")
    return track_id


def _cap(request: web.Request, p: Params) -> int:
    """eliminate_duplicates=true → the configured artist cap; false → no cap."""
    default = request.app[keys.CONFIG].max_per_artist
    return default if p.bool("eliminate_duplicates", True) else 0


async def similar_tracks_compat(request: web.Request) -> web.Response:
    p = Params(request.query, True)
    service = request.app[keys.SERVICE]
    snap = service.snapshot
    item_id = p.str("item_id")
    title, artist = p.str("title"), p.str("artist")
    if item_id:
        seed = _lookup(snap, item_id, "item_id")
    elif title and artist:
        found = [
            t for t in await request.app[keys.STORE].find_tracks(f"{title} {artist}", limit=50)
            if (t.title or "").lower() == title.lower() and (t.artist or "").lower() == artist.lower()
            and t.id is not None and snap.catalogue.has(t.id)
        ]
        if not found:
            raise not_found("title", f"Track '{title}' by '{artist}' not found in the database.")
        seed = int(found[0].id or 0)
    else:
        raise bad("item_id", "Request must include either 'item_id' or both 'title' and 'artist'.")
    n = p.int("n", SIMILAR_DEFAULT_N, 1, 500) or SIMILAR_DEFAULT_N
    matches = await service.run(similar_tracks, [seed], n=n, max_per_artist=_cap(request, p),
                                hide_duplicates=request.app[keys.CONFIG].hide_duplicates)
    return web.json_response(await _items(
        request,
        [m.track_id for m in matches],
        [{"distance": round(1.0 - float(m.similarity), 6)} for m in matches],
    ))


async def find_path_compat(request: web.Request) -> web.Response:
    p = Params(request.query, True)
    service = request.app[keys.SERVICE]
    snap = service.snapshot
    start_raw, end_raw = p.str("start_song_id"), p.str("end_song_id")
    if not start_raw:
        raise bad("start_song_id", "Both a start and end song must be provided.")
    if not end_raw:
        raise bad("end_song_id", "Both a start and end song must be provided.")
    start = _lookup(snap, start_raw, "start_song_id")
    end = _lookup(snap, end_raw, "end_song_id")
    if start == end:
        raise bad("end_song_id", "Start and end songs cannot be the same.")
    steps = p.int("max_steps", PATH_DEFAULT_STEPS, 2, 500) or PATH_DEFAULT_STEPS
    result = await service.run(
        song_path, start, end, length=steps,
        max_per_artist=request.app[keys.CONFIG].max_per_artist,
        hide_duplicates=request.app[keys.CONFIG].hide_duplicates,
    )
    path = await _items(
        request,
        [s.track_id for s in result.steps],
        [{"distance": round(float(s.distance), 6)} for s in result.steps],
    )
    return web.json_response({
        "path": path,
        "total_distance": round(float(sum(s.distance for s in result.steps)), 6),
    })


async def search_tracks_compat(request: web.Request) -> web.Response:
    p = Params(request.query, True)
    query = p.str("search_query") or " ".join(
        x for x in (p.str("artist"), p.str("title")) if x
    )
    if not query or len(query) < 3:
        return web.json_response([])  # AudioMuse-AI answers short queries with an empty list
    start = max(p.int("start", 0) or 0, 0)
    end = p.int("end", None)
    if end is not None and end <= start:
        return web.json_response([])
    limit = (end - start) if end is not None else 20
    found = await request.app[keys.STORE].find_tracks(query, limit=start + limit)
    return web.json_response([_item(t) for t in found[start : start + limit]])


async def alchemy_compat(request: web.Request, p: Params | None = None) -> web.Response:
    """AudioMuse-AI's ``{"items": [{"id", "op", "type"}]}`` alchemy request."""
    p = p if p is not None else await Params.of(request)
    service = request.app[keys.SERVICE]
    snap = service.snapshot
    items = p.list("items")
    add: list[dict[str, Any]] = []
    sub: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("id"):
            raise bad(f"items[{i}]", "each item needs an 'id' and an 'op' (ADD or SUBTRACT)")
        op = str(item.get("op", "")).upper()
        kind = str(item.get("type", "song")).lower()
        if kind not in ("song", "artist"):
            raise bad(f"items[{i}].type", f"type {kind!r} is not supported; use song or artist")
        if op not in ("ADD", "SUBTRACT"):
            raise bad(f"items[{i}].op", "op must be ADD or SUBTRACT")
        (add if op == "ADD" else sub).append({"kind": kind, "value": item["id"]})
    if not add:
        raise bad("items", "At least one item must be in the ADD set")
    ingredients = Params({"add": add, "subtract": sub}, False)
    add_ing = parse_ingredients(snap, ingredients, "add")
    sub_ing = parse_ingredients(snap, ingredients, "subtract")
    n = p.int("n", ALCHEMY_DEFAULT_N, 1, 500) or ALCHEMY_DEFAULT_N
    temperature = p.float("temperature", 0.0, 0.0, 100.0) or 0.0
    distance = p.float("subtract_distance", 0.2, 0.0, 2.0)
    try:
        result = await service.run(
            alchemy, add_ing, sub_ing, n=n, min_subtract_distance=distance,
            temperature=temperature, max_per_artist=request.app[keys.CONFIG].max_per_artist,
            hide_duplicates=request.app[keys.CONFIG].hide_duplicates,
        )
    except ValueError as exc:
        raise bad("items", str(exc)) from None
    coords = {
        pt["track_id"]: [pt["x"], pt["y"]] for pt in result.projection
        if pt.get("role") == "result" and "track_id" in pt
    }
    results = await _items(
        request,
        [m.track_id for m in result.matches],
        [{"distance": round(1.0 - float(m.similarity), 6),
          "embedding_2d": coords.get(m.track_id)} for m in result.matches],
    )

    def points(role: str) -> list[dict[str, Any]]:
        return [
            {"item_id": snap.upstream_ids.get(pt["track_id"], str(pt["track_id"]))
             if "track_id" in pt else pt["label"],
             "title": pt["label"], "embedding_2d": [pt["x"], pt["y"]]}
            for pt in result.projection if pt.get("role") == role
        ]

    def centroid(role: str) -> list[float] | None:
        for pt in result.projection:
            if pt.get("role") == role:
                return [pt["x"], pt["y"]]
        return None

    return web.json_response({
        "results": results,
        "filtered_out": [],
        "centroid_2d": centroid("add_centroid"),
        "add_centroid_2d": centroid("add_centroid"),
        "subtract_centroid_2d": centroid("subtract_centroid"),
        "add_points": points("add"),
        "sub_points": points("subtract"),
        "projection": "pca",
    })


async def health(request: web.Request) -> web.Response:
    """The Jellyfin plugin answers an empty 200 when AudioMuse-AI is reachable."""
    try:
        request.app[keys.SERVICE].snapshot  # noqa: B018 - raises when the library is not loaded
    except RuntimeError as exc:
        raise ApiError(503, str(exc)) from None
    return web.Response(status=200)


async def alchemy_any_shape(request: web.Request) -> web.Response:
    """``POST /api/alchemy`` in either shape: AudioMuse-AI's ``items`` or musegate's ``add``."""
    p = await Params.of(request)
    if p.has("items") and not p.has("add"):
        return await alchemy_compat(request, p)
    return await alchemy_with(request, p)


def routes(base: str, plugin: bool = True) -> list[tuple[str, str, Any]]:
    """AudioMuse-AI's read routes; its ``POST /api/alchemy`` is :func:`alchemy_any_shape`,
    which the composition root puts on musegate's own alchemy route.

    ``plugin=False`` leaves out the Jellyfin plugin's ``/AudioMuseAI/*`` routes: in front
    of Jellyfin, gateway.jellyfin answers them (in any letter case, as ASP.NET Core
    routes match) with the caller's token checked.
    """
    api = f"{base}/api"
    own = [
        ("GET", f"{api}/similar_tracks", similar_tracks_compat),
        ("GET", f"{api}/find_path", find_path_compat),
        ("GET", f"{api}/search_tracks", search_tracks_compat),
    ]
    if not plugin:
        return own
    return [
        *own,
        ("GET", "/AudioMuseAI/similar_tracks", similar_tracks_compat),
        ("GET", "/AudioMuseAI/find_path", find_path_compat),
        ("GET", "/AudioMuseAI/health", health),
    ]
