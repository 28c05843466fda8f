"""The web UI: one page, its static files, login/logout and the audio preview.

Routes (under the public base path, e.g. ``/musegate``):

* ``GET  /``            the single-page app (only the login form until a session exists);
* ``GET  /static/{path}`` its scripts, styles and vendored libraries (``gateway/static``);
* ``GET  /session``     who is logged in and the CSRF token, or the login modes if nobody;
* ``POST /login``       JSON ``{username, password}`` or ``{api_key}`` or ``{mode: "local"}``;
* ``POST /logout``      ends the session (CSRF token required);
* ``GET  /stream/{track_id}`` the song's audio for the preview player, fetched from the
  upstream *server-side* with the session user's own credentials (so no credential
  ever appears in the page) or, for a folder library, the file itself.

The page's every other call goes to the JSON API under ``./api/`` with the
session cookie; the page's URLs are relative to a ``<base href>`` the server
computes from the public prefix, so it works behind a reverse proxy sub-path.
"""

from __future__ import annotations

import contextlib
import html
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway import forwarding, keys, proxy, upstream_errors
from gateway.ui_login import (
    LoginRefused,
    LoginUnavailable,
    check_login,
    jellyfin_logout,
    login_modes,
)
from gateway.ui_session import (
    ADMIN,
    JELLYFIN,
    LOCAL,
    SESSIONS,
    SUBSONIC,
    SessionTable,
    UiSession,
    clear_cookie,
    csrf_ok,
    session_of,
    set_cookie,
)
from gateway.ui_visibility import visible_ids

STATIC_ROOT = Path(__file__).parent / "static"
PAGE = STATIC_ROOT / "index.html"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
          ".png": "image/png", ".txt": "text/plain", ".html": "text/html"}
# The shared session does not decompress, so Content-Encoding must travel with the bytes.
_RELAYED = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Last-Modified",
            "ETag", "Content-Encoding")
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=60)


def public_prefix(request: web.Request) -> str:
    """The public path musegate's own routes live under (proxy prefix + mount path + base path)."""
    return forwarding.public_prefix(request) + request.app[keys.CONFIG].base_path


def _json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status,
                             headers={"Cache-Control": "no-store"})


async def page(request: web.Request) -> web.Response:
    base_href = html.escape(public_prefix(request) + "/", quote=True)
    text = PAGE.read_text(encoding="utf-8").replace("__BASE_HREF__", base_href)
    return web.Response(text=text, content_type="text/html",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


async def page_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(public_prefix(request) + "/")


async def static(request: web.Request) -> web.StreamResponse:
    rel = request.match_info["path"]
    target = (STATIC_ROOT / rel).resolve()
    if STATIC_ROOT.resolve() not in target.parents or not target.is_file() or target == PAGE:
        raise web.HTTPNotFound()
    return web.FileResponse(target, headers={
        "Content-Type": _TYPES.get(target.suffix, "application/octet-stream"),
        "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
    })


async def session_info(request: web.Request) -> web.Response:
    session = session_of(request)
    if session is None:
        config = request.app[keys.CONFIG]
        return web.json_response({"logged_in": False, "modes": login_modes(request),
                                  "source": config.source}, headers={"Cache-Control": "no-store"})
    return web.json_response({"logged_in": True, **session.to_json(),
                              "source": request.app[keys.CONFIG].source},
                             headers={"Cache-Control": "no-store"})


async def login(request: web.Request) -> web.Response:
    if request.content_type != "application/json":
        # A cross-site HTML form cannot send JSON without a CORS preflight musegate never allows.
        return _json_error(415, "send the login as JSON")
    try:
        body = await request.json()
    except ValueError:
        return _json_error(400, "the login is not valid JSON")
    if not isinstance(body, dict):
        return _json_error(400, "the login must be a JSON object")
    try:
        found = await check_login(request, body)
    except LoginRefused as exc:
        return _json_error(401, str(exc), modes=login_modes(request))
    except LoginUnavailable as exc:
        return _json_error(exc.status, str(exc))
    old = session_of(request)
    table = request.app[SESSIONS]
    if old is not None:
        table.drop(old.id)
    session = table.create(found.user, found.kind, subsonic_params=found.subsonic_params,
                           jellyfin_token=found.jellyfin_token,
                           jellyfin_user_id=found.jellyfin_user_id)
    response = web.json_response({"logged_in": True, **session.to_json(),
                                  "source": request.app[keys.CONFIG].source},
                                 headers={"Cache-Control": "no-store"})
    set_cookie(response, session, public_prefix(request), request.secure)
    return response


async def logout(request: web.Request) -> web.Response:
    session = session_of(request)
    if session is not None:
        if not csrf_ok(request, session):
            return _json_error(403, "missing or wrong CSRF token")
        request.app[SESSIONS].drop(session.id)
        if session.kind == JELLYFIN and session.jellyfin_token:
            await jellyfin_logout(request, session.jellyfin_token, session.user)
    response = web.json_response({"logged_out": True})
    clear_cookie(response, public_prefix(request), request.secure)
    return response


# ---------------------------------------------------------------------------- audio preview


def _upstream_request(request: web.Request, session: UiSession, upstream_id: str
                      ) -> tuple[str, dict[str, str], dict[str, str]]:
    """(url, query, headers) to fetch a song's audio from the upstream as the session's user."""
    config = request.app[keys.CONFIG]
    base = config.upstream_url.rstrip("/")
    if session.kind == SUBSONIC:
        query = {**dict(session.subsonic_params), "id": upstream_id, "v": "1.12.0",
                 "c": "musegate-web"}
        return f"{base}/rest/stream", query, {}
    if session.kind == JELLYFIN:
        return (f"{base}/Audio/{upstream_id}/stream", {"static": "true"},
                {"X-Emby-Token": session.jellyfin_token or ""})
    raise web.HTTPNotFound()


async def stream(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    if session is None:
        return _json_error(401, "not logged in")
    try:
        track_id = int(request.match_info["track_id"])
    except ValueError:
        return _json_error(404, "unknown track")
    track = (await request.app[keys.STORE].tracks_by_ids([track_id])).get(track_id)
    if track is None:
        return _json_error(404, "unknown track")
    if session.kind in (ADMIN, LOCAL):
        adapter = request.app[keys.ADAPTER]
        locate = getattr(adapter, "audio_location", None)
        where = locate(track) if locate is not None else track.path
        if where and not str(where).startswith(("http://", "https://")):
            path = Path(str(where))
            if path.is_file():
                return web.FileResponse(path, headers={"Cache-Control": "private, no-store"})
            return _json_error(404, "the file is not readable here")
        if not where:
            return _json_error(404, "no audio location for this track")
        return await _relay(request, str(where), {}, {})
    try:
        visible = await visible_ids(request, session, [(track_id, track.upstream_id)])
    except upstream_errors.UpstreamDown as exc:
        return _json_error(exc.status, upstream_errors.message(exc))
    if track.upstream_id not in visible:
        return _json_error(404, "unknown track")
    url, query, headers = _upstream_request(request, session, track.upstream_id)
    return await _relay(request, url, query, headers)


async def _relay(request: web.Request, url: str, query: dict[str, str],
                 headers: dict[str, str]) -> web.StreamResponse:
    if "Range" in request.headers:
        headers = {**headers, "Range": request.headers["Range"]}
    shared = request.app.get(proxy.SESSION)
    async with contextlib.AsyncExitStack() as stack:
        # The pass-through's pooled session when there is one (no new pool per preview).
        client = shared or await stack.enter_async_context(proxy.new_session())
        try:
            upstream = await client.get(url, params=query, headers=headers,
                                        timeout=STREAM_TIMEOUT)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return _json_error(502, "the music server is not reachable")
        async with upstream:
            kind = upstream.headers.get("Content-Type", "")
            if upstream.status >= 400 or kind.startswith(("application/json", "text/xml")):
                return _json_error(502 if upstream.status >= 500 else 404,
                                   "the music server did not give this song's audio")
            response = web.StreamResponse(status=upstream.status, headers={
                **{k: upstream.headers[k] for k in _RELAYED if k in upstream.headers},
                "Cache-Control": "private, no-store",
            })
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    await response.write(chunk)
            except (TimeoutError, aiohttp.ClientError):
                # The upstream failed mid-song: the status is sent, so a cut connection is
                # the only honest signal left (as in gateway.proxy).
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response


def routes(base: str) -> list[tuple[str, str, Any]]:
    return [
        ("GET", f"{base}/", page),
        ("GET", f"{base}/static/{{path:.+}}", static),
        ("GET", f"{base}/session", session_info),
        ("POST", f"{base}/login", login),
        ("POST", f"{base}/logout", logout),
        ("GET", f"{base}/stream/{{track_id}}", stream),
    ] + ([("GET", base, page_redirect)] if base else [])


def add_ui(app: web.Application) -> None:
    app[SESSIONS] = SessionTable()
    base = app[keys.CONFIG].base_path
    for method, path, handler in routes(base):
        app.router.add_route(method, path, handler)
