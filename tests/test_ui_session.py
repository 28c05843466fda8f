"""UI sessions over plain HTTP (no browser): cookie flags, CSRF, nothing without a session."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.openapi import build_openapi
from gateway.ui_session import COOKIE, CSRF_HEADER, SessionTable
from tests.store_factory import fill_store, make_config


async def _server(tmp_path: Path) -> TestServer:
    config = make_config(tmp_path)
    await fill_store(config)
    return TestServer(create_app(config, refresh_seconds=None))


async def test_page_is_public_but_shows_only_the_login(tmp_path: Path) -> None:
    async with await _server(tmp_path) as server, aiohttp.ClientSession() as http:
        resp = await http.get(server.make_url("/musegate/"))
        text = await resp.text()
        assert resp.status == 200 and '<base href="/musegate/">' in text
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        info = await (await http.get(server.make_url("/musegate/session"))).json()
        assert info["logged_in"] is False and info["modes"] == ["local"]
        assert (await http.get(server.make_url("/musegate/stream/1"))).status == 401
        assert (await http.get(server.make_url("/musegate/static/../app.py"))).status == 404


async def test_local_login_cookie_flags_and_csrf(tmp_path: Path) -> None:
    jar = aiohttp.CookieJar(unsafe=True)  # keep cookies of an IP-address host
    async with await _server(tmp_path) as server, aiohttp.ClientSession(cookie_jar=jar) as http:
        form = await http.post(server.make_url("/musegate/login"), data={"mode": "local"})
        assert form.status == 415  # a cross-site HTML form cannot log in
        resp = await http.post(server.make_url("/musegate/login"), json={"mode": "local"})
        assert resp.status == 200
        body = await resp.json()
        cookie = resp.cookies[COOKIE]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert cookie["path"] == "/musegate" and not cookie["secure"]
        assert cookie.value not in (body["csrf"], "") and body["kind"] == "local"
        assert (await (await http.get(server.make_url("/musegate/session"))).json())["logged_in"]
        assert (await http.post(server.make_url("/musegate/logout"))).status == 403
        ok = await http.post(server.make_url("/musegate/logout"),
                             headers={CSRF_HEADER: body["csrf"]})
        assert ok.status == 200
        assert not (await (await http.get(server.make_url("/musegate/session"))).json())["logged_in"]


async def test_api_key_login_refuses_a_wrong_key(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    await fill_store(config)
    config = config.replace(api_key="s3cret")
    async with TestServer(create_app(config, refresh_seconds=None)) as server, \
            aiohttp.ClientSession() as http:
        bad = await http.post(server.make_url("/musegate/login"), json={"api_key": "nope"})
        assert bad.status == 401 and COOKIE not in bad.cookies
        good = await http.post(server.make_url("/musegate/login"), json={"api_key": "s3cret"})
        assert good.status == 200 and (await good.json())["kind"] == "admin"


def test_sessions_expire_when_idle() -> None:
    now = [1000.0]
    table = SessionTable(idle_seconds=60, clock=lambda: now[0])
    s = table.create("alice", "subsonic")
    assert table.get(s.id) is s
    now[0] += 59
    assert table.get(s.id) is s
    now[0] += 61
    assert table.get(s.id) is None and len(table) == 0


def test_ui_routes_are_documented() -> None:
    paths = build_openapi("/musegate")["paths"]
    for path in ("/musegate/login", "/musegate/logout", "/musegate/session", "/musegate/api/events",
                 "/musegate/api/map", "/musegate/stream/{track_id}"):
        assert path in paths


async def test_api_needs_the_key_or_a_session_with_csrf(tmp_path: Path) -> None:
    config = make_config(tmp_path, api_key="s3cret")
    await fill_store(config)
    jar = aiohttp.CookieJar(unsafe=True)
    async with TestServer(create_app(config, refresh_seconds=None)) as server, \
            aiohttp.ClientSession(cookie_jar=jar) as http:
        status = server.make_url("/musegate/api/status")
        assert (await http.get(status)).status == 401
        info = await (await http.get(server.make_url("/musegate/session"))).json()
        assert info["modes"] == ["api_key"]  # no keyless local login once a key is set
        login = await http.post(server.make_url("/musegate/login"), json={"api_key": "s3cret"})
        csrf = (await login.json())["csrf"]
        assert (await http.get(status)).status == 200
        first = (await (await http.get(server.make_url("/musegate/api/tracks"),
                                       params={"q": "a", "limit": 1})).json())["tracks"][0]
        similar = server.make_url("/musegate/api/similar")
        assert (await http.post(similar, json={"ids": [first["id"]]})).status == 403
        ok = await http.post(similar, json={"ids": [first["id"]]}, headers={CSRF_HEADER: csrf})
        assert ok.status == 200


async def test_cookie_is_secure_and_prefixed_behind_a_trusted_https_proxy(tmp_path: Path) -> None:
    config = make_config(tmp_path, api_key="s3cret", trusted_proxies="127.0.0.1",
                         mount_path="/music")
    await fill_store(config)
    proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.4",
             "X-Forwarded-Prefix": "/outer"}
    async with TestServer(create_app(config, refresh_seconds=None)) as server, \
            aiohttp.ClientSession() as http:
        resp = await http.post(server.make_url("/music/musegate/login"),
                               json={"api_key": "s3cret"}, headers=proxy)
        assert resp.status == 200
        cookie = resp.cookies[COOKIE]
        assert cookie["secure"] and cookie["path"] == "/outer/music/musegate"
    # The same headers from a caller that is no trusted proxy change nothing.
    untrusted = config.replace(trusted_proxies="")
    async with TestServer(create_app(untrusted, refresh_seconds=None)) as server, \
            aiohttp.ClientSession() as http:
        resp = await http.post(server.make_url("/music/musegate/login"),
                               json={"api_key": "s3cret"}, headers=proxy)
        cookie = resp.cookies[COOKIE]
        assert not cookie["secure"] and cookie["path"] == "/music/musegate"
