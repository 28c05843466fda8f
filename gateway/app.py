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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from analysis.store import LibraryStore
from gateway import api, api_library, compat, keys, ui
from gateway.jobs import JobManager
from gateway.params import ApiError, error_response
from gateway.ui_visibility import visibility_middleware
from musegate.config import Config
from musegate.library import adapter_for, close_adapter
from musegate.services import LibraryService

log = logging.getLogger(__name__)

# How often the server looks for new or changed analyses (a cheap query).
REFRESH_SECONDS = 30.0

_DEFAULT: Any = object()


def _is_api(request: web.Request, base: str) -> bool:
    path = request.path
    return path.startswith(f"{base}/api") or path.lower().startswith("/audiomuseai/")


def error_middleware(base: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.field)
        except web.HTTPException as exc:
            if exc.status >= 400 and _is_api(request, base):
                return error_response(exc.status, exc.reason)
            raise
        except Exception:
            if not _is_api(request, base):
                raise
            log.exception("%s %s failed", request.method, request.path)
            return error_response(500, "internal error; see the server log")

    return middleware


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
    base = config.base_path
    app = web.Application(middlewares=[
        error_middleware(base), ui.session_middleware(base), visibility_middleware(base),
    ])
    app[keys.CONFIG] = config
    app[keys.ADAPTER] = adapter_for(config) if adapter is _DEFAULT else adapter
    owns_adapter = adapter is _DEFAULT

    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        store = await LibraryStore.open(config.db_path)
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
            if schedule and app[keys.ADAPTER] is not None:
                from musegate.scheduler import LibraryScheduler

                scheduler = LibraryScheduler(
                    store, config, app[keys.ADAPTER],
                    on_analysed=lambda: service.refresh(force=True),
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
    own = api.routes(base) + api_library.routes(base) + compat.routes(base, plugin=not jellyfin)
    for method, path, handler in own:
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
    if config.upstream_url:
        # Keep this last: the pass-through is the catch-all for whatever no route above answers.
        from gateway.proxy import add_proxy

        add_proxy(app, config.upstream_url, exclude_prefix=base)
    return app


async def serve(config: Config) -> None:
    """Run until Ctrl-C or SIGTERM: what ``musegate serve`` does.

    SIGTERM (systemd, podman stop) ends the server the same clean way as Ctrl-C:
    the scheduler stops, analyses already finished are in the database, and the
    next start resumes what was pending.
    """
    runner = web.AppRunner(create_app(config, schedule=True))
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    print(f"musegate listening on http://{config.host}:{config.port}{config.base_path}/api "
          f"(OpenAPI at {config.base_path}/api/openapi.json); web UI at "
          f"http://{config.host}:{config.port}{config.base_path}/", flush=True)
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
