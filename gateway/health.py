"""Liveness and readiness, for container healthchecks, systemd and load balancers.

``/health`` answers as long as the event loop does: a supervisor restarts the
process when it stops answering, so it must not depend on anything a restart
would not fix (a music server that is down is not musegate's fault). ``/ready``
says whether musegate can do its job right now — store open, index loaded,
music server reachable — and names what is missing, so a load balancer can hold
traffic back and a user reading ``podman healthcheck`` output knows why.
"""

from __future__ import annotations

import hashlib
import time

import aiohttp
from aiohttp import web

from gateway import keys, proxy
from musegate.library import analyzer_settings

READY_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
STARTED = web.AppKey("started", float)


async def health(request: web.Request) -> web.Response:
    started = request.app.get(STARTED)
    uptime = round(time.monotonic() - started, 3) if started is not None else None
    return web.json_response({"status": "ok", "uptime_seconds": uptime})


async def _upstream_reason(app: web.Application) -> str | None:
    config = app[keys.CONFIG]
    if not config.upstream_url:
        return None
    session = app.get(proxy.SESSION)
    own = session is None
    if own:
        session = proxy.new_session()
    try:
        async with session.get(config.upstream_url, allow_redirects=False,
                               timeout=READY_TIMEOUT) as resp:
            if resp.status >= 500:
                return f"music server answers {resp.status}"
            return None
    except TimeoutError:
        return "music server did not answer within 5 s"
    except (aiohttp.ClientError, OSError) as exc:
        return f"music server unreachable ({type(exc).__name__})"
    finally:
        if own:
            await session.close()


def library_version(signature: tuple[object, ...]) -> str:
    """A short stable name for the store state a snapshot was loaded from."""
    return hashlib.sha256(repr(signature).encode()).hexdigest()[:12]


async def ready(request: web.Request) -> web.Response:
    app = request.app
    reasons: list[str] = []
    details: dict[str, object] = {}
    store = app.get(keys.STORE)
    if store is None:
        reasons.append("store not open")
    else:
        settings = analyzer_settings(app[keys.CONFIG])
        try:
            st = await store.status(settings.version, settings.max_attempts)
            details["tracks"], details["analysed"] = st.tracks, st.analysed
        except Exception as exc:  # noqa: BLE001 - any store failure means not ready
            reasons.append(f"store unusable ({type(exc).__name__})")
    service = app.get(keys.SERVICE)
    if service is None:
        reasons.append("index not loaded")
    else:
        details["index_tracks"] = len(service.snapshot.index)
        # Replicas behind one load balancer agree when this agrees (it moves with the store).
        details["library_version"] = library_version(service.snapshot.signature)
        details["role"] = app[keys.CONFIG].role
    upstream = await _upstream_reason(app)
    if upstream:
        reasons.append(upstream)
    if reasons:
        return web.json_response({"status": "not ready", "reasons": reasons, **details},
                                 status=503)
    return web.json_response({"status": "ready", **details})


def routes(base: str) -> list[tuple[str, str, object]]:
    return [("GET", f"{base}/health", health), ("GET", f"{base}/ready", ready)]
