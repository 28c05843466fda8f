"""Prometheus metrics: what a self-hoster graphs and alerts on.

Request counts are split by route class, because the three behave nothing
alike: ``passthrough`` is the music server's own traffic relayed (streams,
browsing), ``intercepted`` is the similarity calls musegate answers itself
(their latency is musegate's own), ``api`` is musegate's JSON API. Library
figures are read from the store at scrape time, so they are never stale and cost
nothing between scrapes. Each app has its own registry: two apps in one process
(tests, a metrics-only listener) never mix their counts.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from gateway import keys
from musegate.library import analyzer_settings

ROUTE_CLASS = web.RequestKey("route_class", str)
PASSTHROUGH, INTERCEPTED, API, OWN = "passthrough", "intercepted", "api", "own"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# What a caller gets when the music server failed it: unreachable/broken, unavailable, too slow.
UPSTREAM_STATUSES = frozenset({502, 503, 504})

class Metrics:
    """The app's collectors (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "musegate_requests", "HTTP requests answered, by route class and status",
            ["route", "status"], registry=r)
        self.intercepted_seconds = Histogram(
            "musegate_intercepted_request_seconds",
            "Time to answer an intercepted similarity call (Subsonic or Jellyfin)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=r)
        self.upstream_errors = Counter(
            "musegate_upstream_errors", "Requests the music server did not answer (502/503/504 given)",
            registry=r)
        self.tracks = Gauge("musegate_tracks", "Tracks in the library, by analysis state",
                            ["state"], registry=r)
        self.index_tracks = Gauge("musegate_index_tracks", "Tracks in the similarity index",
                                  registry=r)
        self.index_bytes = Gauge("musegate_index_memory_bytes", "Memory held by the index",
                                 registry=r)
        self.analysed = Gauge(
            "musegate_analysis_tracks_total",
            "Tracks analysed (or failed) by the scheduler's finished runs since start",
            ["result"], registry=r)
        self.analysis_seconds = Gauge(
            "musegate_analysis_seconds_total",
            "Wall-clock seconds the scheduler's finished runs spent analysing since start",
            registry=r)
        self.runs = Gauge("musegate_analysis_runs_total", "Library scan runs started since start",
                          registry=r)
        # Background warming of new Subsonic callers' song caches (gateway.subsonic_warm).
        self.warm_runs = Counter(
            "musegate_subsonic_warm_runs",
            "Background warms of a new caller's song cache finished, by result",
            ["result"], registry=r)
        self.warm_songs = Counter(
            "musegate_subsonic_warm_songs",
            "Songs (or refusals) the background warm stored in callers' song caches", registry=r)
        self.warm_seconds = Counter(
            "musegate_subsonic_warm_seconds",
            "Wall-clock seconds the finished background warms took", registry=r)
        self.warm_running = Gauge(
            "musegate_subsonic_warm_running", "Background warms in progress", registry=r)
        # (route class, status) -> its labelled counter: prometheus_client's labels() checks
        # and joins its arguments under a lock on every call, a measurable part of a ping.
        self._request_counters: dict[tuple[str, int], Any] = {}

    def count_request(self, kind: str, status: int) -> None:
        """One answered request; a 502/503/504 also counts as an upstream error."""
        counter = self._request_counters.get((kind, status))
        if counter is None:
            counter = self._request_counters[(kind, status)] = self.requests.labels(
                kind, str(status))
        counter.inc()
        if status in UPSTREAM_STATUSES:
            self.upstream_errors.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


def route_class(request: web.BaseRequest, default: str) -> str:
    return request.get(ROUTE_CLASS, default)


def mark(request: web.BaseRequest, kind: str) -> None:
    """Handlers that decide late what they did (answered or passed on) say so here."""
    request[ROUTE_CLASS] = kind


def middleware(classify: Callable[[web.Request], str]
               ) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        metrics = request.app.get(METRICS)
        if metrics is None:
            return await handler(request)
        request[ROUTE_CLASS] = classify(request)
        return await counted(metrics, request, handler)

    return count


async def counted(metrics: Metrics | None, request: web.Request,
                  handler: Handler) -> web.StreamResponse:
    """``handler(request)``, its status counted under the request's route class.

    Shared by the metrics middleware and the pass-through's short chain (gateway.app),
    so both count (and time intercepted answers) alike.
    """
    if metrics is None:
        return await handler(request)
    start = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        kind = route_class(request, PASSTHROUGH)
        metrics.count_request(kind, status)
        if kind == INTERCEPTED:
            metrics.intercepted_seconds.observe(time.perf_counter() - start)


async def update_library(metrics: Metrics, app: web.Application) -> None:
    """Read the library figures now (called at scrape time)."""
    config, store = app[keys.CONFIG], app[keys.STORE]
    settings = analyzer_settings(config)
    st = await store.status(settings.version, settings.max_attempts)
    for state, value in (("all", st.tracks), ("analysed", st.analysed), ("failed", st.failed),
                         ("pending", st.pending), ("outdated", st.outdated)):
        metrics.tracks.labels(state).set(value)
    snap = app[keys.SERVICE].snapshot
    metrics.index_tracks.set(len(snap.index))
    metrics.index_bytes.set(snap.index.memory_bytes())
    scheduler = app.get(keys.SCHEDULER)
    if scheduler is not None:
        state = scheduler.state
        metrics.analysed.labels("analysed").set(state.analysed_total)
        metrics.analysed.labels("failed").set(state.failed_total)
        metrics.analysis_seconds.set(state.analysis_seconds_total)
        metrics.runs.set(state.runs)


def metrics_handler(app_of: Callable[[web.Request], web.Application]) -> Handler:
    """The scrape endpoint; ``app_of`` finds the main app (a metrics-only listener has its own)."""

    async def handler(request: web.Request) -> web.Response:
        app = app_of(request)
        metrics = app[METRICS]
        await update_library(metrics, app)
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    return handler
