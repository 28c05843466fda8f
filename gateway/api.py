"""musegate's own JSON API: every playlist feature over HTTP, under ``{base_path}/api``.

Handlers only translate: parameters in (validated, 400 naming the field), a
pure function from ``index/`` run on the current library snapshot in a worker
thread, tracks out with their metadata from the store. The algorithms and the
rules (artist cap, duplicates) live in ``index/`` and are shared with the CLI.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

from adapters.base import HistorySource, NoListeningHistory, PlaylistWriter
from analysis.labels import MSD_LABELS
from analysis.store import TrackRecord
from gateway import forwarding, keys
from gateway.jobs import DONE, Job
from gateway.params import ApiError, Params, bad, not_found
from index.alchemy import Ingredient, alchemy, ingredient_rows
from index.clustering import ALGORITHMS, ClusteringResult, cluster_playlists, min_tracks
from index.duplicates import DuplicatePair
from index.fingerprint import Play, sonic_fingerprint
from index.instant import (
    Interpretation,
    constraints_from_json,
    constraints_to_json,
    instant_playlist,
)
from index.path import song_path
from index.results import Match
from index.similar import similar_tracks
from musegate.duplicates import duplicates_report
from musegate.library import analyzer_settings, read_request
from musegate.services import LibrarySnapshot, unique_ids

MAX_N = 500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# ---------------------------------------------------------------------------- formatting


def track_json(track: TrackRecord) -> dict[str, Any]:
    """What a client needs to show and play a track (no server-side file paths)."""
    return {
        "id": track.id,
        "upstream_id": track.upstream_id,
        "title": track.title,
        "artist": track.artist,
        "album": track.album,
        "duration": track.duration,
    }


async def tracks_json(
    request: web.Request, ids: Sequence[int], extra: Sequence[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Tracks in the given order with per-track extras (similarity, distance...)."""
    store = request.app[keys.STORE]
    records = await store.tracks_by_ids([int(i) for i in ids])
    out = []
    for pos, track_id in enumerate(ids):
        track = records.get(int(track_id))
        if track is None:  # left the library since the snapshot was taken
            continue
        item = track_json(track)
        if extra is not None:
            item.update(extra[pos])
        out.append(item)
    return out


async def matches_json(request: web.Request, matches: Sequence[Match]) -> list[dict[str, Any]]:
    return await tracks_json(
        request,
        [m.track_id for m in matches],
        [{"similarity": round(float(m.similarity), 6)} for m in matches],
    )


# ---------------------------------------------------------------------------- helpers


def _service(request: web.Request) -> Any:
    return request.app[keys.SERVICE]


def _max_per_artist(request: web.Request, p: Params) -> int:
    return p.int("max_per_artist", request.app[keys.CONFIG].max_per_artist, 0, 1000) or 0


def _hide_duplicates(request: web.Request, p: Params) -> bool:
    """Per request ``hide_duplicates``, else the configured default (on)."""
    return p.bool("hide_duplicates", request.app[keys.CONFIG].hide_duplicates)


def _resolve(snap: LibrarySnapshot, value: Any, field: str) -> int:
    track_id = snap.resolve_id(value)
    if track_id is None:
        raise not_found(field, f"track {value!r} is unknown or not analysed yet")
    return track_id


def _seeds(snap: LibrarySnapshot, p: Params) -> list[int]:
    """Track ids from ``ids`` (or ``id``), ``album`` and ``artist``, in that order."""
    seeds: list[int] = []
    for field in ("ids", "id"):
        for value in p.list(field):
            seeds.append(_resolve(snap, value, field))
    album = p.str("album")
    if album:
        found = snap.ids_of_album(album, p.str("album_artist"))
        if not found:
            raise not_found("album", f"no analysed tracks on an album called {album!r}")
        seeds.extend(found)
    artist = p.str("artist")
    if artist:
        found = snap.ids_of_artist(artist)
        if not found:
            raise not_found("artist", f"no analysed tracks by an artist called {artist!r}")
        seeds.extend(found)
    if not seeds:
        raise bad("ids", "give at least one seed: ids, album or artist")
    return unique_ids(seeds)


# ---------------------------------------------------------------------------- features


async def similar(request: web.Request) -> web.Response:
    p = await Params.of(request)
    service = _service(request)
    snap = service.snapshot
    seeds = _seeds(snap, p)
    n = p.int("n", 20, 1, MAX_N)
    mpa = _max_per_artist(request, p)
    mood = p.scores("mood")
    tolerance = p.float("mood_tolerance", 0.25, 0.0, 1.0)
    exclude = [snap.resolve_id(v) for v in p.list("exclude")]
    try:
        matches = await service.run(
            similar_tracks, seeds, n=n, max_per_artist=mpa, mood=mood,
            mood_tolerance=tolerance, exclude=[e for e in exclude if e is not None],
            hide_duplicates=_hide_duplicates(request, p),
        )
    except KeyError as exc:
        raise not_found("ids", str(exc.args[0] if exc.args else exc)) from None
    except ValueError as exc:
        raise bad("mood", str(exc)) from None
    return web.json_response({
        "seeds": await tracks_json(request, seeds),
        "tracks": await matches_json(request, matches),
    })


async def path(request: web.Request) -> web.Response:
    p = await Params.of(request)
    service = _service(request)
    snap = service.snapshot
    if not p.has("start"):
        raise bad("start", "start is required (a track id)")
    if not p.has("end"):
        raise bad("end", "end is required (a track id)")
    start = _resolve(snap, p.raw("start"), "start")
    end = _resolve(snap, p.raw("end"), "end")
    if start == end:
        raise bad("end", "start and end must be different tracks")
    via = [_resolve(snap, v, "via") for v in p.list("via")]
    length = p.int("length", 25, 2, MAX_N)
    if length < len(via) + 2:
        raise bad("length", f"length must be at least {len(via) + 2} to pass every waypoint")
    try:
        result = await service.run(
            song_path, start, end, length=length, waypoints=via,
            max_per_artist=_max_per_artist(request, p),
            hide_duplicates=_hide_duplicates(request, p),
        )
    except ValueError as exc:
        raise bad("via", str(exc)) from None
    steps = result.steps
    return web.json_response({
        "tracks": await tracks_json(
            request,
            [s.track_id for s in steps],
            [{"distance": round(float(s.distance), 6)} for s in steps],
        ),
        "max_jump": round(float(result.max_jump), 6),
        "mean_jump": round(float(result.mean_jump), 6),
    })


_KINDS = ("song", "artist", "tag")


def parse_ingredients(snap: LibrarySnapshot, p: Params, field: str) -> list[Ingredient]:
    """``[{"kind": "song", "value": 12}, {"artist": "Nina Simone"}, {"tag": "jazz"}, ...]``."""
    out: list[Ingredient] = []
    for i, item in enumerate(p.list(field)):
        where = f"{field}[{i}]"
        if isinstance(item, dict) and "kind" in item:
            kind, value = item.get("kind"), item.get("value")
        elif isinstance(item, dict) and len(item) == 1:
            kind, value = next(iter(item.items()))
        elif isinstance(item, str) and ":" in item:
            kind, _, value = item.partition(":")
        else:
            raise bad(where, 'an ingredient looks like {"kind": "song"|"artist"|"tag", "value": ...}')
        if kind not in _KINDS:
            raise bad(where, f"kind must be one of {', '.join(_KINDS)}, not {kind!r}")
        if value is None or str(value).strip() == "":
            raise bad(where, "the ingredient has no value")
        if kind == "song":
            value = _resolve(snap, value, where)
        elif kind == "tag":
            lookup = {t.lower(): t for t in MSD_LABELS}
            if str(value).lower() not in lookup:
                raise bad(where, f"unknown tag {value!r}: use one of the 50 MSD tag names")
            value = lookup[str(value).lower()]
        ing = Ingredient(kind, value if kind == "song" else str(value))
        try:
            ingredient_rows(snap.catalogue, ing)
        except ValueError as exc:
            raise bad(where, str(exc)) from None
        out.append(ing)
    return out


async def alchemy_handler(request: web.Request) -> web.Response:
    return await alchemy_with(request, await Params.of(request))


async def alchemy_with(request: web.Request, p: Params) -> web.Response:
    """musegate's alchemy on parameters already read (a body reads once), for compat's
    dispatcher, which shares this URL with AudioMuse-AI's request shape."""
    service = _service(request)
    snap = service.snapshot
    add = parse_ingredients(snap, p, "add")
    if not add:
        raise bad("add", "alchemy needs at least one ADD ingredient")
    subtract = parse_ingredients(snap, p, "subtract")
    try:
        result = await service.run(
            alchemy, add, subtract,
            n=p.int("n", 20, 1, MAX_N),
            min_subtract_distance=p.float("min_subtract_distance", 0.2, 0.0, 2.0),
            temperature=p.float("temperature", 0.0, 0.0, 100.0),
            seed=p.int("seed", 0, 0, 2**31 - 1),
            max_per_artist=_max_per_artist(request, p),
            hide_duplicates=_hide_duplicates(request, p),
        )
    except ValueError as exc:
        raise bad("add", str(exc)) from None
    return web.json_response({
        "tracks": await matches_json(request, result.matches),
        "projection": result.projection,
    })


def clustering_json_shell(result: ClusteringResult) -> dict[str, Any]:
    return {
        "algorithm": result.algorithm,
        "params": result.params,
        "silhouette": round(float(result.silhouette), 6),
        "score": round(float(result.score), 6),
        "trials": len(result.trials),
    }


async def clustering_json(request: web.Request, result: ClusteringResult) -> dict[str, Any]:
    out = clustering_json_shell(result)
    out["playlists"] = [
        {
            "name": pl.name,
            "tags": [{"tag": t, "score": round(float(s), 4)} for t, s in pl.tags],
            "tempo": round(float(pl.tempo), 2),
            "energy": round(float(pl.energy), 4),
            "tracks": await tracks_json(request, pl.track_ids),
        }
        for pl in result.playlists
    ]
    return out


async def clusters_start(request: web.Request) -> web.Response:
    p = await Params.of(request)
    snap = _service(request).snapshot
    n_playlists = p.int("n_playlists", 10, 1, 100) or 10
    algorithms = [str(a) for a in p.list("algorithms")] or list(ALGORITHMS)
    for a in algorithms:
        if a not in ALGORITHMS:
            raise bad("algorithms", f"unknown algorithm {a!r}; use {', '.join(ALGORITHMS)}")
    pca = p.int("pca_components", 16, 0, 200)
    options = {
        "n_playlists": n_playlists,
        "algorithms": algorithms,
        "pca_components": pca or None,
        "trials": p.int("trials", 16, 1, 200),
        "max_per_artist": _max_per_artist(request, p),
        "max_songs": p.int("max_songs", 100, 1, 1000),
        "seed": p.int("seed", 0, 0, 2**31 - 1),
    }
    need = min_tracks(n_playlists)
    if len(snap.catalogue) < need:
        raise bad(
            "n_playlists",
            f"clustering into {n_playlists} playlists needs at least {need} analysed tracks; "
            f"the library has {len(snap.catalogue)}",
        )
    cat = snap.catalogue  # the job keeps this snapshot even if the library reloads meanwhile

    def work(progress: Any) -> ClusteringResult:
        return cluster_playlists(cat, progress=progress, **options)

    job = request.app[keys.JOBS].submit("clustering", work, options)
    base = request.app[keys.CONFIG].base_path
    return web.json_response(
        {
            "job": job.to_json(),
            "poll": f"{base}/api/clusters/{job.id}",
            "status": f"{base}/api/jobs/{job.id}",
        },
        status=202,
    )


async def _job_with_result(request: web.Request, job: Job) -> dict[str, Any]:
    return {
        "job": job.to_json(),
        "result": await clustering_json(request, job.result) if job.status == DONE else None,
    }


async def clusters_get(request: web.Request) -> web.Response:
    job = request.app[keys.JOBS].get(request.match_info["job_id"])
    if job is None or job.kind != "clustering":
        raise not_found("job_id", f"no clustering job {request.match_info['job_id']!r}")
    return web.json_response(await _job_with_result(request, job))


async def clusters_latest(request: web.Request) -> web.Response:
    for job in request.app[keys.JOBS].list("clustering"):
        if job.status == DONE:
            return web.json_response(await _job_with_result(request, job))
    raise not_found(None, "no clustering has finished yet; POST to this URL to start one")


async def fingerprint(request: web.Request) -> web.Response:
    p = await Params.of(request)
    service = _service(request)
    adapter = request.app[keys.ADAPTER]
    user = p.str("user")
    n = p.int("n", 50, 1, MAX_N)
    include_played = p.bool("include_played", False)
    half_life = p.float("half_life_days", 30.0, 0.01, 3650.0)
    if adapter is None or not isinstance(adapter, HistorySource):
        raise ApiError(409, "no library source with listening history is configured; the sonic "
                            "fingerprint needs play counts from a media server")
    try:
        history = await adapter.listening_history(user)
    except NoListeningHistory as exc:
        raise ApiError(409, str(exc)) from None
    snap = service.snapshot
    plays = [
        Play(snap.by_upstream[h.upstream_id], int(h.play_count), h.last_played)
        for h in history
        if h.upstream_id in snap.by_upstream and h.play_count > 0
    ]
    if not plays:
        raise ApiError(409, "none of the songs in the listening history is analysed yet")
    try:
        matches = await service.run(
            sonic_fingerprint, plays, n=n, now=time.time(),
            max_per_artist=_max_per_artist(request, p), include_played=include_played,
            half_life_days=half_life, hide_duplicates=_hide_duplicates(request, p),
        )
    except ValueError as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response({
        "plays_used": len(plays),
        "tracks": await matches_json(request, matches),
    })


async def interpret_text(request: web.Request, text: str, use_llm: bool) -> Interpretation:
    """The LLM when configured and wanted, else (or on any failure) the built-in reader."""
    return await read_request(request.app[keys.CONFIG], text, use_llm)


async def instant(request: web.Request) -> web.Response:
    p = await Params.of(request)
    service = _service(request)
    config = request.app[keys.CONFIG]
    text = p.str("text", max_length=2000)
    n = p.int("n", 30, 1, 1000)
    mpa = _max_per_artist(request, p)
    hide = _hide_duplicates(request, p)
    raw_constraints = p.raw("constraints")
    if raw_constraints is not None and not p.from_query:
        try:
            constraints = constraints_from_json(raw_constraints)
        except ValueError as exc:
            sub = str(exc).split(":", 1)[0].strip()
            raise bad(f"constraints.{sub}" if sub.isidentifier() else "constraints",
                      str(exc)) from None
        reading = Interpretation(constraints, ["constraints given directly"], "builtin")
    elif text:
        reading = await interpret_text(request, text, p.bool("llm", bool(config.llm_provider)))
    else:
        raise bad("text", "text is required (a sentence such as 'sad piano around 70 bpm')")
    c = reading.constraints

    def run(cat: Any, index: Any) -> list[Match]:
        return instant_playlist(cat, c, n=n, max_per_artist=mpa, hide_duplicates=hide)

    matches = await service.run(run)
    return web.json_response({
        "text": text,
        "interpretation": {
            "source": reading.source,
            "explanation": reading.explanation,
            "constraints": constraints_to_json(c),
        },
        "tracks": await matches_json(request, matches),
    })


# ---------------------------------------------------------------------------- library, jobs


async def tracks(request: web.Request) -> web.Response:
    p = await Params.of(request)
    q = p.str("q", required=True, max_length=200)
    limit = p.int("limit", 20, 1, 200)
    found = await request.app[keys.STORE].find_tracks(q, limit=limit)
    cat = _service(request).snapshot.catalogue
    return web.json_response({
        "tracks": [{**track_json(t), "analysed": cat.has(t.id or 0)} for t in found],
    })


async def duplicates(request: web.Request) -> web.Response:
    p = await Params.of(request)
    service = _service(request)
    snap = service.snapshot
    track_id = _resolve(snap, p.raw("id"), "id") if p.has("id") else None
    async with service.reading() as snap:
        report = await duplicates_report(request.app[keys.STORE], snap.catalogue, snap.index,
                                         track_id)
    return web.json_response({
        "groups": [
            {
                "representative": g.representative.id,
                "tracks": [{**track_json(t), "representative": t.id == g.representative.id}
                           for t in g.tracks],
                "pairs": [pair_json(pr) for pr in g.pairs],
            }
            for g in report.groups
        ],
        "analysed": report.analysed,
        "without_fingerprint": report.without_fingerprint,
    })


def pair_json(pair: DuplicatePair) -> dict[str, Any]:
    v = pair.verdict
    return {
        "a": pair.track_a, "b": pair.track_b, "cosine": round(v.cosine, 6), "method": v.method,
        "bit_error_rate": None if v.bit_error_rate is None else round(v.bit_error_rate, 4),
        "offset_s": None if v.offset_s is None else round(v.offset_s, 3),
    }


async def status(request: web.Request) -> web.Response:
    config = request.app[keys.CONFIG]
    store = request.app[keys.STORE]
    settings = analyzer_settings(config)
    st = await store.status(settings.version, settings.max_attempts)
    snap = _service(request).snapshot
    return web.json_response({
        "tracks": st.tracks,
        "analysed": st.analysed,
        "failed": st.failed,
        "pending": st.pending,
        "outdated": st.outdated,
        "analysis_version": settings.version,
        "index": {
            "kind": snap.index.kind,
            "tracks": len(snap.index),
            "memory_bytes": snap.index.memory_bytes(),
            "status": snap.index_status,
            "radii": snap.radius_status,
        },
        "jobs_running": request.app[keys.JOBS].running(),
    })


def _scheduled(request: web.Request) -> list[dict[str, Any]]:
    """The library scan/analysis job, when ``musegate serve`` runs the scheduler."""
    scheduler = request.app.get(keys.SCHEDULER)
    return [scheduler.state.to_json()] if scheduler is not None else []


async def jobs_list(request: web.Request) -> web.Response:
    jobs = _scheduled(request) + [j.to_json() for j in request.app[keys.JOBS].list()]
    return web.json_response({"jobs": jobs})


async def job_get(request: web.Request) -> web.Response:
    for state in _scheduled(request):
        if state["id"] == request.match_info["job_id"]:
            return web.json_response(state)
    job = request.app[keys.JOBS].get(request.match_info["job_id"])
    if job is None:
        raise not_found("job_id", f"no job {request.match_info['job_id']!r}")
    return web.json_response(job.to_json())


async def playlists(request: web.Request) -> web.Response:
    p = await Params.of(request)
    name = p.str("name", required=True, max_length=200)
    assert name is not None
    ids = p.ints("track_ids", max_items=10_000)
    if not ids:
        raise bad("track_ids", "track_ids must list at least one track id")
    adapter = request.app[keys.ADAPTER]
    if adapter is None or not isinstance(adapter, PlaylistWriter):
        raise ApiError(409, "no library source that can store playlists is configured "
                            "(set library_path for M3U8 files)")
    records = await request.app[keys.STORE].tracks_by_ids(unique_ids(ids))
    missing = [i for i in ids if i not in records]
    if missing:
        raise not_found("track_ids", f"unknown track ids: {', '.join(map(str, missing[:20]))}")
    try:
        location = await adapter.write_playlist(name, [records[i] for i in ids])
    except ValueError as exc:
        raise bad("name", str(exc)) from None
    return web.json_response({"name": name, "location": location, "tracks": len(ids)}, status=201)


async def openapi_json(request: web.Request) -> web.Response:
    from gateway.openapi import build_openapi

    server = forwarding.public_prefix(request) or "/"
    return web.json_response(build_openapi(request.app[keys.CONFIG].base_path, server))


def routes(base: str, alchemy: Handler = alchemy_handler) -> list[tuple[str, str, Any]]:
    """(method, path, handler) for every API route; the OpenAPI test walks this same table.

    ``alchemy`` lets the composition root put compat's dispatcher (which also accepts
    AudioMuse-AI's request shape) on the alchemy URL without this module knowing compat.
    """
    api = f"{base}/api"
    return [
        ("GET", f"{api}/similar", similar),
        ("POST", f"{api}/similar", similar),
        ("GET", f"{api}/path", path),
        ("POST", f"{api}/path", path),
        ("POST", f"{api}/alchemy", alchemy),
        ("POST", f"{api}/clusters", clusters_start),
        ("GET", f"{api}/clusters", clusters_latest),
        ("GET", f"{api}/clusters/{{job_id}}", clusters_get),
        ("GET", f"{api}/fingerprint", fingerprint),
        ("POST", f"{api}/fingerprint", fingerprint),
        ("GET", f"{api}/instant", instant),
        ("POST", f"{api}/instant", instant),
        ("GET", f"{api}/tracks", tracks),
        ("GET", f"{api}/duplicates", duplicates),
        ("GET", f"{api}/status", status),
        ("GET", f"{api}/jobs", jobs_list),
        ("GET", f"{api}/jobs/{{job_id}}", job_get),
        ("POST", f"{api}/playlists", playlists),
        ("GET", f"{api}/openapi.json", openapi_json),
    ]
