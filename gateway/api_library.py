"""The library's own state over the JSON API: progress, failures, scan now, the music map.

What the web UI's Status and Music map pages read, usable by any API client:

* ``GET  /api/progress`` — counts, the scheduled scan/analysis run with its rate
  (tracks/s) and ETA, and the background jobs; ``GET /api/events`` sends the
  same object as a Server-Sent Event whenever it changes;
* ``GET  /api/failures`` — the tracks whose analysis failed, with the reason;
* ``POST /api/failures/retry`` — forget those failures (all, or ``ids``) and start a run;
* ``POST /api/scan`` — scan and analyse now;
* ``GET  /api/map`` — every analysed track's 2-D position (cached per index version),
  top tag and, when a clustering has finished, its playlist: parallel arrays, one
  entry per song (compact: the map of a 20,000-song library is one answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from typing import Any

from aiohttp import web

from analysis.labels import MSD_LABELS
from gateway import keys
from gateway.api import track_json
from gateway.jobs import DONE
from gateway.params import ApiError, Params
from gateway.ui_session import session_of
from gateway.ui_visibility import FILTERED_BY_HANDLER, visible_ids
from index.catalogue import KEYS
from musegate.library import analyzer_settings

# How often the event stream looks for a change, and sends a keep-alive comment when idle.
EVENT_POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# Between scheduler announcements the store is counted this often (a retry, a removal).
COUNT_SECONDS = 10.0


def _run_json(scheduler: Any, state: dict[str, Any] | None = None) -> dict[str, Any] | None:
    if scheduler is None:
        return None
    state = dict(state) if state is not None else scheduler.state.to_json()
    state.pop("history", None)
    done = int(state.get("analysed") or 0) + int(state.get("failed") or 0)
    total = int(state.get("total") or 0)
    started = state.get("analysis_started")
    rate = eta = None
    if state.get("status") == "analysing" and started and done:
        elapsed = max(time.time() - float(started), 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if total > done else 0.0
    state["rate"] = round(rate, 3) if rate is not None else None
    state["eta_seconds"] = round(eta, 1) if eta is not None else None
    return state


async def _counts(app: web.Application) -> dict[str, Any]:
    """The store's counts: one SQL round (≈23 ms at 100k tracks, bench/store.py)."""
    settings = analyzer_settings(app[keys.CONFIG])
    st = await app[keys.STORE].status(settings.version, settings.max_attempts)
    return {"tracks": st.tracks, "analysed": st.analysed, "failed": st.failed,
            "pending": st.pending, "outdated": st.outdated}


def _live(app: web.Application, run: dict[str, Any] | None) -> dict[str, Any]:
    """What changes without the store: the index size, the library run, background jobs."""
    jobs = [j.to_json() for j in app[keys.JOBS].list()[:10]]
    for job in jobs:
        job.pop("params", None)
    return {"indexed": len(app[keys.SERVICE].snapshot.index),
            "run": _run_json(app.get(keys.SCHEDULER), run), "jobs": jobs}


async def progress(request: web.Request) -> web.Response:
    return web.json_response({**await _counts(request.app), **_live(request.app, None)})


async def events(request: web.Request) -> web.StreamResponse:
    """``progress`` as Server-Sent Events (``event: progress``), sent on every change.

    Every state the scheduler announces is sent (none is skipped, however quickly the
    run moves on), and the store is counted again with it (at most once a second while
    it runs, and always when it ends): analyses are written only by a run. In between, jobs and the run are looked at twice a second from memory,
    and the store only every COUNT_SECONDS, so an open Status page does not keep the
    database thread busy while apps wait for it.
    """
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    })
    await response.prepare(request)
    app = request.app
    last = ""
    idle_since = counted_at = time.monotonic()
    counts = await _counts(app)
    scheduler = app.get(keys.SCHEDULER)
    queue = scheduler.subscribe() if scheduler is not None else None
    run: dict[str, Any] | None = None
    try:
        while True:
            since = time.monotonic() - counted_at
            # A run's end is counted at once; its progress at most once a second.
            ended = run is not None and run.get("status") not in ("scanning", "analysing")
            if ended or (run is not None and since >= 1.0) or since >= COUNT_SECONDS:
                counts, counted_at = await _counts(app), time.monotonic()
            data = json.dumps({**counts, **_live(app, run)}, separators=(",", ":"))
            if data != last:
                await response.write(f"event: progress\ndata: {data}\n\n".encode())
                last, idle_since = data, time.monotonic()
            elif time.monotonic() - idle_since > KEEPALIVE_SECONDS:
                await response.write(b": keep-alive\n\n")
                idle_since = time.monotonic()
            run = None
            if queue is None:
                await asyncio.sleep(EVENT_POLL_SECONDS)
                continue
            with contextlib.suppress(TimeoutError):
                run = await asyncio.wait_for(queue.get(), EVENT_POLL_SECONDS)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        if queue is not None:
            scheduler.unsubscribe(queue)
    return response


async def failures(request: web.Request) -> web.Response:
    found = await request.app[keys.STORE].failures()
    return web.json_response({"failures": [
        {**track_json(track), "reason": reason, "attempts": attempts}
        for track, reason, attempts in found
    ]})


def _scheduler(request: web.Request) -> Any:
    scheduler = request.app.get(keys.SCHEDULER)
    if scheduler is None:
        if request.app[keys.CONFIG].role == "replica":
            raise ApiError(409, "this server is a read-only replica: scans and retries are "
                                "the writer's (role = writer)")
        raise ApiError(409, "this server does not run the library scheduler "
                            "(start it with `musegate serve`)")
    return scheduler


async def retry_failures(request: web.Request) -> web.Response:
    p = await Params.of(request)
    scheduler = _scheduler(request)
    ids = p.ints("ids") if p.has("ids") else None
    cleared = await request.app[keys.STORE].clear_failures(ids)
    started = scheduler.run_soon()
    return web.json_response({"cleared": cleared, "started": started}, status=202)


async def scan(request: web.Request) -> web.Response:
    started = _scheduler(request).run_soon()
    if not started:
        raise ApiError(409, "a scan is already running")
    return web.json_response({"started": True}, status=202)


def _clustering(request: web.Request) -> tuple[str, list[str], dict[int, int]]:
    """The newest finished clustering: its job id, playlist names and track id -> playlist."""
    for job in request.app[keys.JOBS].list("clustering"):
        if job.status == DONE and job.result is not None:
            names = [pl.name for pl in job.result.playlists]
            member = {int(t): i for i, pl in enumerate(job.result.playlists) for t in pl.track_ids}
            return job.id, names, member
    return "", [], {}


# The whole library's answer, encoded once per (index version, clustering): 20,000 songs are
# ~1.4 MB of JSON that took ~200 ms to build as one object per song on every page view.
# Kept per library service (one per app), dropped with it.
_MAP_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, bytes]] = weakref.WeakKeyDictionary()


def _map_body(snap: Any, coords: Any, names: list[str], member: dict[int, int],
              rows: Any = None) -> bytes:
    """Parallel arrays, one entry per song (row i of every array is the same song)."""
    import numpy as np

    cat = snap.catalogue
    idx = np.arange(len(cat)) if rows is None else np.asarray(rows, dtype=np.int64)
    ids = cat.ids[idx] if len(idx) else np.zeros(0, np.int64)
    top = cat.tags[idx].argmax(axis=1) if len(idx) else np.zeros(0, np.int64)
    xy = np.round(coords[idx].astype(np.float64), 5) if len(idx) else np.zeros((0, 2))
    points = {
        "id": ids.tolist(),
        "title": cat.titles.values(idx),
        "artist": cat.artists.values(idx),
        "x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
        "tag": top.tolist(),
        "cluster": [member.get(t, -1) for t in ids.tolist()],
    }
    answer = {"tags": list(MSD_LABELS), "clusters": names, "count": len(idx), "points": points}
    return json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()


async def music_map(request: web.Request) -> web.Response:
    service = request.app[keys.SERVICE]
    snap, coords = await service.projection()
    job_id, names, member = _clustering(request)
    session = session_of(request)
    if session is not None and not session.sees_everything:
        # Only the songs this user's music server shows them (the middleware's rule, asked
        # here because the answer's columns are not lists of track objects).
        cat = snap.catalogue
        pairs = [(int(t), snap.upstream_ids.get(int(t), "")) for t in cat.ids]
        seen = await visible_ids(request, session, [p for p in pairs if p[1]])
        rows = [i for i, (_, u) in enumerate(pairs) if u and u in seen]
        body = await asyncio.to_thread(_map_body, snap, coords, names, member, rows)
    else:
        key = (snap.signature, job_id)
        cached = _MAP_CACHE.get(service)
        if cached is None or cached[0] != key:
            cached = (key, await asyncio.to_thread(_map_body, snap, coords, names, member))
            _MAP_CACHE[service] = cached
        body = cached[1]
    response = web.Response(body=body, content_type="application/json", charset="utf-8")
    response[FILTERED_BY_HANDLER] = True
    return response


async def features(request: web.Request) -> web.Response:
    """Tempo, key, energy and top tags of analysed tracks (for showing lists)."""
    p = await Params.of(request)
    ids = p.ints("ids", max_items=1000)
    snap = request.app[keys.SERVICE].snapshot
    cat = snap.catalogue
    out = []
    for tid in ids:
        if not cat.has(tid):
            continue
        row = cat.row(tid)
        order = cat.tags[row].argsort()[::-1][:3]
        out.append({
            "id": tid, "upstream_id": snap.upstream_ids.get(tid, ""),
            "tempo": round(float(cat.tempo[row]), 1),
            "key": KEYS[int(cat.key[row])] if int(cat.key[row]) >= 0 else None,
            "scale": "minor" if bool(cat.minor[row]) else "major",
            "energy": round(float(cat.energy[row]), 4),
            "tags": [{"tag": MSD_LABELS[int(t)], "score": round(float(cat.tags[row, t]), 4)}
                     for t in order],
        })
    return web.json_response({"tracks": out})


def routes(base: str) -> list[tuple[str, str, Any]]:
    api = f"{base}/api"
    return [
        ("GET", f"{api}/progress", progress),
        ("GET", f"{api}/events", events),
        ("GET", f"{api}/failures", failures),
        ("POST", f"{api}/failures/retry", retry_failures),
        ("POST", f"{api}/scan", scan),
        ("GET", f"{api}/map", music_map),
        ("GET", f"{api}/features", features),
    ]
