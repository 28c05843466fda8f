"""Who may log in to the web UI: checked by the upstream server itself, or the admin key.

musegate has no user database. A login is accepted when

* the admin ``api_key`` is given (an operator session that sees the whole library);
* the source is Subsonic and the upstream's ``ping`` accepts the user name and
  password — the same ``AuthChecker`` an intercepted app call goes through;
* the source is Jellyfin and ``POST /Users/AuthenticateByName`` gives an access
  token, which Jellyfin then confirms on ``/System/Info`` like any caller's token;
* the source is Lyrion, LMS has password protection on, and it accepts the user
  name and password (HTTP Basic): LMS has one account and no per-user libraries,
  so that session sees the whole library, like an operator's;
* no ``api_key`` is set and the caller is on this machine (loopback): a local
  operator session, as the JSON API itself answers loopback callers then.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aiohttp import web

from gateway import access, keys, upstream_errors
from gateway.ui_session import ADMIN, JELLYFIN, LOCAL, SUBSONIC
from gateway.upstream_errors import UpstreamDown
from musegate import __version__ as VERSION

CLIENT = "musegate-web"


class LoginRefused(Exception):
    """Wrong credentials (the upstream's or the key); the message is safe to show."""


class LoginUnavailable(Exception):
    """The upstream could not be asked; the message is safe to show, ``status`` is 502/503/504."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message)
        self.status = status


def _unavailable(down: UpstreamDown) -> LoginUnavailable:
    return LoginUnavailable(upstream_errors.message(down, "the music server"), down.status)


@dataclass(frozen=True)
class Login:
    user: str
    kind: str
    subsonic_params: tuple[tuple[str, str], ...] = ()
    jellyfin_token: str | None = None
    jellyfin_user_id: str | None = None


def login_modes(request: web.Request) -> list[str]:
    """What the login form offers this caller: 'password', 'api_key', 'local'."""
    config = request.app[keys.CONFIG]
    modes = []
    if config.source in ("subsonic", "jellyfin") and config.upstream_url:
        modes.append("password")
    elif config.source == "lyrion" and config.upstream_url and config.upstream_user:
        modes.append("password")  # LMS checks passwords only when its protection is on
    if config.api_key:
        modes.append("api_key")
    elif access.local_without_key(request, config):
        modes.append("local")
    return modes


async def check_login(request: web.Request, body: dict[str, object]) -> Login:
    config = request.app[keys.CONFIG]
    modes = login_modes(request)
    mode = str(body.get("mode") or ("api_key" if body.get("api_key") else "password"))
    if mode not in modes:
        raise LoginRefused(f"this server does not accept a {mode.replace('_', ' ')} login here")
    if mode == "api_key":
        if not access.key_matches(str(body.get("api_key") or ""), config):
            raise LoginRefused("wrong API key")
        return Login("admin", ADMIN)
    if mode == "local":
        return Login("local", LOCAL)
    user = str(body.get("username") or "").strip()
    password = str(body.get("password") or "")
    if not user or not password:
        raise LoginRefused("enter a user name and a password")
    if config.source == "subsonic":
        return await _subsonic(request, user, password)
    if config.source == "lyrion":
        return await _lyrion(request, user, password)
    return await _jellyfin(request, user, password)


async def _lyrion(request: web.Request, user: str, password: str) -> Login:
    from adapters.lyrion import LyrionError

    adapter = request.app[keys.ADAPTER]
    try:
        if not await adapter.password_protected():
            raise LoginRefused("LMS has no password protection to check a password against; "
                               "log in with musegate's API key")
        if not await adapter.check_credentials(user, password):
            raise LoginRefused("wrong user name or password")
    except LyrionError as exc:
        # Its own words for why, like the other servers' (the message names LMS, never a
        # credential): 504 when it stayed silent, 503 when it said so, else 502.
        status = 504 if exc.timed_out else 503 if exc.status == 503 else 502
        raise _unavailable(UpstreamDown(exc.message, status)) from None
    return Login(user, ADMIN)


async def _subsonic(request: web.Request, user: str, password: str) -> Login:
    from gateway.subsonic import GATEWAY
    from gateway.subsonic_auth import Credentials, UpstreamError

    params = (("u", user), ("p", "enc:" + password.encode("utf-8").hex()))
    creds = Credentials(params)
    try:
        await request.app[GATEWAY].auth.check(creds, {"c": CLIENT})
    except UpstreamError as exc:
        raise LoginRefused(exc.message or "wrong user name or password") from None
    except UpstreamDown as exc:
        raise _unavailable(exc) from None
    return Login(user, SUBSONIC, subsonic_params=params)


def jellyfin_auth_header(device_id: str, token: str | None = None) -> str:
    parts = [f'Client="{CLIENT}"', 'Device="musegate web UI"', f'DeviceId="{device_id}"',
             f'Version="{VERSION}"']
    if token:
        parts.append(f'Token="{token}"')
    return "MediaBrowser " + ", ".join(parts)


def jellyfin_device_id(user: str) -> str:
    """One device per user in Jellyfin's device list, stable across logins."""
    return hashlib.sha256(f"musegate-web|{user.lower()}".encode()).hexdigest()[:32]


async def _jellyfin(request: web.Request, user: str, password: str) -> Login:
    from gateway.jellyfin import GATEWAY
    from gateway.jellyfin_auth import JellyfinCredentials, Refused

    gw = request.app[GATEWAY]
    device = jellyfin_device_id(user)
    try:
        async with gw.session.post(
            gw.upstream_url + "/Users/AuthenticateByName",
            json={"Username": user, "Pw": password},
            headers={"X-Emby-Authorization": jellyfin_auth_header(device),
                     "Accept": "application/json"},
        ) as resp:
            if resp.status in (400, 401, 403):
                raise LoginRefused("wrong user name or password")
            if resp.status != 200:
                raise _unavailable(upstream_errors.from_status("login", resp.status))
            answer = await resp.json(content_type=None)
    except upstream_errors.TRANSPORT_ERRORS as exc:
        raise _unavailable(upstream_errors.from_exception("login", exc)) from None
    except ValueError:
        answer = None  # not JSON: not Jellyfin's AuthenticationResult
    if not isinstance(answer, dict):
        raise LoginUnavailable("Jellyfin's answer to the login is not an AuthenticationResult")
    token = str(answer.get("AccessToken") or "")
    dto = answer.get("User")
    user_id = str((dto if isinstance(dto, dict) else {}).get("Id") or "")
    if not token:
        raise LoginUnavailable("Jellyfin answered without an access token")
    creds = JellyfinCredentials.of({"X-Emby-Token": token}, {})
    try:
        await gw.auth.check(gw.upstream_url, creds)
    except Refused:
        raise LoginRefused("Jellyfin refused the new access token") from None
    except UpstreamDown as exc:
        raise _unavailable(exc) from None
    return Login(user, JELLYFIN, jellyfin_token=token, jellyfin_user_id=user_id or None)


async def jellyfin_logout(request: web.Request, token: str, user: str) -> None:
    """Revoke the session's Jellyfin token (best effort: a logout never fails)."""
    from gateway.jellyfin import GATEWAY

    gw = request.app.get(GATEWAY)
    if gw is None:
        return
    try:
        async with gw.session.post(
            gw.upstream_url + "/Sessions/Logout",
            headers={"X-Emby-Authorization": jellyfin_auth_header(jellyfin_device_id(user), token)},
        ):
            pass
    except upstream_errors.TRANSPORT_ERRORS:
        pass


async def confirm_login(request: web.Request, kind: str,
                        subsonic_params: tuple[tuple[str, str], ...] = (),
                        jellyfin_token: str | None = None) -> bool:
    """Whether the upstream still accepts a UI session's credentials (False: log it out).

    Asked through the same checkers as an app's call, so the answer is cached for
    ``auth_cache_seconds`` and a password changed (or a token revoked) at the server
    ends the session within that bound. Raises UpstreamDown when the server cannot be
    asked: an outage neither logs the user out nor lets an unconfirmed session through.
    """
    if kind == SUBSONIC:
        from gateway.subsonic import GATEWAY as SUBSONIC_GATEWAY
        from gateway.subsonic_auth import Credentials, UpstreamError

        try:
            await request.app[SUBSONIC_GATEWAY].auth.check(Credentials(subsonic_params),
                                                           {"c": CLIENT})
        except UpstreamError:
            return False
        return True
    if kind == JELLYFIN:
        from gateway.jellyfin import GATEWAY as JELLYFIN_GATEWAY
        from gateway.jellyfin_auth import JellyfinCredentials, Refused

        gw = request.app[JELLYFIN_GATEWAY]
        try:
            await gw.auth.check(gw.upstream_url,
                                JellyfinCredentials.of({"X-Emby-Token": jellyfin_token or ""}, {}))
        except Refused:
            return False
        return True
    return True
