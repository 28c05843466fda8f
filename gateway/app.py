"""The aiohttp application: one factory, typed state, resources with a lifetime.

``create_app`` wires the store, the loaded library (catalogue + FAISS index),
the background jobs and the library source into one ``web.Application``. The
store and the library live exactly as long as the app (``cleanup_ctx``), so
tests, ``musegate serve`` and later the proxy all get the same wiring. The
proxy and protocol handlers of later issues add their routes to this same app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from analysis.store import LibraryStore
from gateway import (
    access,
    api,
    api_library,
    compat,
    forwarding,
    health,
    keys,
    metrics,
    ui,
    upstream_errors,
)
from gateway.access_log import RedactingAccessLogger, install_server_log_filter
from gateway.connection_limits import ConnectionGuard, ConnectionLimits, GuardedAppRunner
from gateway.jobs import JobManager
from gateway.params import ApiError, error_response
from gateway.ui_visibility import visibility_middleware
from musegate.config import Config
from musegate.library import adapter_for, close_adapter
from musegate.services import LibraryService

log = logging.getLogger(__name__)

# How often the server looks for new or changed analyses (a cheap query).
REFRESH_SECONDS = 30.0

# How long `musegate serve` waits for requests in flight when it is told to stop.
DRAIN_SECONDS = 5.0

_DEFAULT: Any = object()


def _is_api(request: web.Request, base: str) -> bool:
    path = request.path
    return (path.startswith((f"{base}/api", f"{base}/metrics"))
            or path.lower().startswith("/audiomuseai/"))


def error_middleware(config: Config) -> Callable[..., Awaitable[web.StreamResponse]]:
    """musegate's own routes: the access check, and errors as JSON instead of tracebacks."""
    base = config.base_path

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        api = _is_api(request, base) and metrics.route_class(request, "") == metrics.API
        try:
            if api:
                access.check(request, config)
            return await handler(request)
        except access.AccessDenied as exc:
            return error_response(exc.status, exc.message)
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc).replace(" ", "") or not api:
                raise
            return error_response(409, "this server is a read-only replica: ask the writer")
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.field)
        except upstream_errors.UpstreamDown as exc:
            # A UI session's answer is filtered (and its login confirmed) by asking the
            # upstream: when it cannot be asked, the page gets 502/504, never an unfiltered
            # answer and never a traceback.
            if not api:
                raise
            log.warning("%s %s: upstream failed: %s", request.method, request.path, exc.reason)
            return error_response(exc.status, upstream_errors.message(exc))
        except web.HTTPException as exc:
            if exc.status >= 400 and api:
                return error_response(exc.status, exc.reason)
            raise
        except Exception:
            if not api:
                raise
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error; see the server log")

    return middleware


def passthrough_middleware(config: Config) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The pass-through's fast path: a request for the upstream skips the other middlewares.

    Every request no route of musegate answers goes to the catch-all ``upstream-proxy``
    route. For those (outside musegate's own path prefix and API, in an app that is not
    mounted below a path) the metrics, error and UI-visibility middlewares decide nothing:
    the class is ``passthrough``, no access check applies, no JSON answer is filtered. So
    the request is rewritten by gateway.forwarding (the same function the forwarding
    middleware calls), counted, and handed to the route's handler directly, without the
    four coroutine layers the chain costs per request. Everything else takes the chain.
    """
    rewrite = forwarding.rewriter(config)
    base = config.base_path
    prefix = base.rstrip("/")

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        match_info = request.match_info
        path = request.path
        if (match_info.route.name != "upstream-proxy" or len(match_info.apps) != 1
                or (prefix and (path == prefix or path.startswith(prefix + "/")))
                or _is_api(request, base)):
            return await handler(request)
        request = rewrite(request)
        request[metrics.ROUTE_CLASS] = metrics.PASSTHROUGH
        return await metrics.counted(request.app.get(metrics.METRICS), request,
                                     match_info.handler)

    return middleware


def _classifier(config: Config) -> Callable[[web.Request], str]:
    base = config.base_path
    own = {f"{base}/health", f"{base}/ready"}

    def classify(request: web.Request) -> str:
        route = request.match_info.route
        if route.name == "jellyfin-intercept":
            return metrics.PASSTHROUGH  # the handler marks what it answers itself
        if (route.name or "").startswith("lms-"):
            return metrics.INTERCEPTED  # LMS's Music Similarity plugin, answered by sound
        if request.path in own:
            return metrics.OWN
        if _is_api(request, base):
            return metrics.API
        if route.name == "upstream-proxy":
            return metrics.PASSTHROUGH
        if "/rest/" in request.path:
            return metrics.INTERCEPTED
        return metrics.OWN

    return classify


def create_app(
    config: Config,
    *,
    adapter: Any = _DEFAULT,
    refresh_seconds: float | None = REFRESH_SECONDS,
    schedule: bool = False,
) -> web.Application:
    """The whole musegate web application for ``config``.

    ``adapter`` overrides the library source (tests pass fakes); ``refresh_seconds``
    None turns the background reload off (tests call ``service.refresh()`` instead).
    """
    install_server_log_filter()
    base = config.base_path
    app = web.Application(middlewares=[
        passthrough_middleware(config),
        forwarding.middleware(config), metrics.middleware(_classifier(config)),
        error_middleware(config),
        visibility_middleware(base),
    ])
    app[keys.CONFIG] = config
    app[keys.ADAPTER] = adapter_for(config) if adapter is _DEFAULT else adapter
    app[metrics.METRICS] = metrics.Metrics()
    app[health.STARTED] = time.monotonic()
    owns_adapter = adapter is _DEFAULT

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        replica = config.role == "replica"
        store = await LibraryStore.open(config.db_path, read_only=replica)
        jobs = JobManager()
        watcher: asyncio.Task[None] | None = None
        try:
            service = LibraryService(store, config)
            await service.refresh(force=True)
            app[keys.STORE] = store
            app[keys.SERVICE] = service
            app[keys.JOBS] = jobs
            if refresh_seconds:
                watcher = asyncio.create_task(service.watch(refresh_seconds))
            if schedule and not replica and app[keys.ADAPTER] is not None:
                from musegate.scheduler import LibraryScheduler

                scheduler = LibraryScheduler(
                    store, config, app[keys.ADAPTER],
                    on_analysed=lambda: service.refresh(),
                )
                app[keys.SCHEDULER] = scheduler
                scheduler.start()
            yield
        finally:
            if keys.SCHEDULER in app:
                await app[keys.SCHEDULER].shutdown()
            if owns_adapter:
                await close_adapter(app[keys.ADAPTER])
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await jobs.close()
            await store.close()

    app.cleanup_ctx.append(lifetime)
    jellyfin = config.source == "jellyfin" and bool(config.upstream_url)
    own_routes = [
        *health.routes(base),
        ("GET", f"{base}/metrics", metrics.metrics_handler(lambda r: r.app)),
        *api.routes(base, alchemy=compat.alchemy_any_shape),
        *api_library.routes(base),
        *compat.routes(base, plugin=not jellyfin),
    ]
    for method, path, handler in own_routes:
        app.router.add_route(method, path, handler)
    ui.add_ui(app)
    if config.source == "subsonic" and config.upstream_url:
        # The intercepted Subsonic similarity endpoints (before the pass-through below).
        from gateway.subsonic import add_subsonic

        add_subsonic(app, config)
    if jellyfin:
        # InstantMix, Similar and /AudioMuseAI/* for Jellyfin apps (before the pass-through).
        from gateway.jellyfin import add_jellyfin

        add_jellyfin(app, config)
    if config.source == "lyrion" and config.upstream_url:
        # The Music Similarity plugin's API; LMS itself is not proxied (its clients talk to it).
        from gateway.lms_similarity import add_lms_similarity

        add_lms_similarity(app)
    elif config.upstream_url:
        # Keep this last: the pass-through is the catch-all for whatever no route above answers.
        from gateway.proxy import add_proxy

        add_proxy(app, config.upstream_url, exclude_prefix=base,
                  connect_timeout=config.upstream_connect_timeout,
                  headers_timeout=config.upstream_timeout)
    if not config.mount_path:
        return app
    # Below a mount path the whole app is a sub-application: aiohttp prefixes every route,
    # and gateway.forwarding strips the prefix again before any handler sees the path.
    outer = web.Application()
    outer.add_subapp(config.mount_path, app)
    outer[keys.MAIN] = app
    return outer


def main_app(app: web.Application) -> web.Application:
    """The application holding musegate's state (the mounted one when mount_path is set)."""
    return app.get(keys.MAIN, app)


def metrics_app(main: web.Application) -> web.Application:
    """The metrics-only listener (``metrics_port``): no auth, nothing but ``/metrics``."""
    app = web.Application()
    app.router.add_route("GET", "/metrics", metrics.metrics_handler(lambda _r: main))
    return app


def server_options(config: Config) -> dict[str, Any]:
    """What ``musegate serve``'s aiohttp runners are given besides the connection guard."""
    return {"shutdown_timeout": DRAIN_SECONDS, "access_log_class": RedactingAccessLogger,
            "keepalive_timeout": float(config.keepalive_seconds)}


async def serve(config: Config) -> None:
    """Run until Ctrl-C or SIGTERM: what ``musegate serve`` does.

    SIGTERM (systemd, podman stop) ends the server the same clean way as Ctrl-C:
    the scheduler stops, analyses already finished are in the database, and the
    next start resumes what was pending.
    """
    app = create_app(config, schedule=True, refresh_seconds=config.refresh_seconds)
    # On stop, requests in flight get this long to finish; endless streams are cut after it.
    # Slow or too many clients are held off per connection (gateway.connection_limits).
    runner = GuardedAppRunner(app, ConnectionGuard(ConnectionLimits.from_config(config)),
                              **server_options(config))
    await runner.setup()
    sites = [web.TCPSite(runner, config.host, config.port)]
    if config.metrics_port:
        metrics_runner = GuardedAppRunner(metrics_app(main_app(app)),
                                          ConnectionGuard(ConnectionLimits.from_config(config)),
                                          **server_options(config))
        await metrics_runner.setup()
        sites.append(web.TCPSite(metrics_runner, config.host, config.metrics_port))
    for site in sites:
        await site.start()
    root = f"http://{config.host}:{config.port}{config.mount_path}{config.base_path}"
    print(f"musegate listening on {root}/api (OpenAPI at {root}/api/openapi.json, "
          f"health at {root}/health); web UI at {root}/", flush=True)
    if not config.api_key and not access.loopback_only(config):
        log.warning("no api_key set: musegate's JSON API and metrics stay closed while listening "
                    "on %s (the Subsonic/Jellyfin gateway works as usual)", config.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        print("musegate stopping", flush=True)
    finally:
        await runner.cleanup()
        if config.metrics_port:
            await metrics_runner.cleanup()
