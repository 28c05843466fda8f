"""Web UI users see only the songs their music server shows them.

The JSON API answers from musegate's own store, which holds every song the
service account scanned. When a request comes from a UI session of an
upstream user (not the operator), every track in the answer — any list of
objects with an ``upstream_id`` — is kept only when the upstream lets that
user see it, asked the same way the protocol gateways ask:

* Subsonic: ``SubsonicGateway.visible`` with the session's credentials, i.e.
  ``subsonic_visibility`` decides: ``hydrate`` (the user's own ``getSong``
  answers, reused from the gateway's per-user song cache, client ``musegate-web``)
  or ``folders`` (the user's ``getMusicFolders`` against the folder the scan
  recorded);
* Jellyfin: ``GET /Items?Ids=…`` with the user's access token, in chunks;
  what Jellyfin leaves out of its answer is not visible.

Verdicts are remembered in the session for ``auth_cache_seconds`` so that a
page that shows the same songs again costs no upstream call.

Before any API request of such a session is answered, the upstream is asked
whether it still accepts the session's password or token (``ui_login.confirm_login``,
cached for ``auth_cache_seconds`` like an app's credentials): a password changed
or a token revoked at the server ends the session within that bound, and when
the server cannot be asked the page gets 502/504 rather than an unconfirmed answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway import keys
from gateway.params import error_response
from gateway.ui_login import confirm_login
from gateway.ui_session import JELLYFIN, SESSIONS, SUBSONIC, UiSession, session_of

# A handler that filtered its own answer for the session sets this on the response
# (api/map: its songs are parallel arrays, not a list of track objects).
FILTERED_BY_HANDLER = web.ResponseKey("musegate_filtered", bool)
VERDICTS = "visible"


def _cache(session: UiSession) -> dict[str, tuple[float, bool]]:
    return session.cache.setdefault(VERDICTS, {})


async def visible_ids(
    request: web.Request, session: UiSession, tracks: Sequence[tuple[int, str]]
) -> set[str]:
    """The upstream ids among ``tracks`` ((musegate id, upstream id) pairs) the user may see."""
    if session.sees_everything:
        return {u for _, u in tracks}
    ttl = float(request.app[keys.CONFIG].auth_cache_seconds)
    now = (request.app.get(keys.CLOCK) or time.monotonic)()
    cache = _cache(session)
    known: set[str] = set()
    ask: list[tuple[int, str]] = []
    for tid, uid in dict.fromkeys(tracks):
        verdict = cache.get(uid)
        if verdict is not None and verdict[0] > now:
            if verdict[1]:
                known.add(uid)
        else:
            ask.append((tid, uid))
    if ask:
        if session.kind == SUBSONIC:
            seen = await _subsonic_visible(request, session, ask)
        elif session.kind == JELLYFIN:
            seen = await _jellyfin_visible(request, session, [u for _, u in ask])
        else:
            seen = set()
        if ttl > 0:
            if len(cache) > 200_000:
                cache.clear()
            for _, uid in ask:
                cache[uid] = (now + ttl, uid in seen)
        known |= seen
    return known


async def _subsonic_visible(
    request: web.Request, session: UiSession, tracks: list[tuple[int, str]]
) -> set[str]:
    from gateway.subsonic import GATEWAY
    from gateway.subsonic_auth import Credentials

    gw = request.app[GATEWAY]
    found = await gw.visible(request.app[keys.STORE], tracks,
                             Credentials(session.subsonic_params), {"c": "musegate-web"})
    return {uid for uid, _ in found}


async def _jellyfin_visible(request: web.Request, session: UiSession, ids: list[str]) -> set[str]:
    """The gateway's own ``GET /Items?Ids=…`` (chunked, as the caller) with the session's token."""
    from gateway.jellyfin import GATEWAY, Call, normalise_id
    from gateway.jellyfin_auth import JellyfinCredentials

    gw = request.app[GATEWAY]
    call = Call(request, gw.upstream_url,
                JellyfinCredentials.of({"X-Emby-Token": session.jellyfin_token or ""}, {}),
                CIMultiDict(), {})
    params = {"Fields": "", "EnableImages": "false", "EnableUserData": "false"}
    if session.jellyfin_user_id:
        params["UserId"] = session.jellyfin_user_id
    # UpstreamDown propagates: an outage is an error for the page, not "sees nothing" (which
    # would also be remembered as the verdict for auth_cache_seconds).
    found = await gw.items(call, ids, params)
    return {u for u in ids if normalise_id(u) in found}


def _track_lists(node: Any, out: list[list[Any]]) -> None:
    """Every list in a JSON answer whose items are track objects (they carry ``upstream_id``)."""
    if isinstance(node, dict):
        for value in node.values():
            _track_lists(value, out)
    elif isinstance(node, list):
        if node and all(isinstance(i, dict) and "upstream_id" in i for i in node):
            out.append(node)
        else:
            for value in node:
                _track_lists(value, out)


async def filter_answer(request: web.Request, session: UiSession, body: Any) -> Any:
    lists: list[list[Any]] = []
    _track_lists(body, lists)
    pairs = [(int(t.get("id") or 0), str(t["upstream_id"])) for lst in lists for t in lst
             if t.get("upstream_id")]
    seen = await visible_ids(request, session, pairs)
    kept: set[int] = set()
    for lst in lists:
        lst[:] = [t for t in lst if str(t.get("upstream_id")) in seen]
        kept.update(int(t.get("id") or 0) for t in lst)
    projection = body.get("projection") if isinstance(body, dict) else None
    if isinstance(projection, list):  # alchemy's scatter names its result songs too
        body["projection"] = [p for p in projection if not isinstance(p, dict)
                              or p.get("role") != "result" or p.get("track_id") in kept]
    return body


def visibility_middleware(base: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Filter the JSON API's answers for UI sessions of upstream users."""
    api = f"{base}/api/"

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path.startswith(api):
            session = session_of(request)
            if session is not None and not session.sees_everything and not await confirm_login(
                    request, session.kind, session.subsonic_params, session.jellyfin_token):
                # The server no longer accepts this user's password or token: the session
                # ends here rather than living on until it idles out.
                request.app[SESSIONS].drop(session.id)
                return error_response(401, "the music server no longer accepts this login; "
                                           "log in again")
        response = await handler(request)
        if not request.path.startswith(api):
            return response
        session = session_of(request)
        if (session is None or session.sees_everything or not isinstance(response, web.Response)
                or response.get(FILTERED_BY_HANDLER) or response.content_type != "application/json" or response.status >= 300
                or response.body is None):
            return response
        body = json.loads(response.body)  # type: ignore[arg-type]
        body = await filter_answer(request, session, body)
        return web.json_response(body, status=response.status)

    return middleware
