"""Web UI sessions in front of Jellyfin (the fake of tests/fakes/jellyfin.py), no browser:
the login is Jellyfin's own, and a user sees only songs of the libraries Jellyfin gives them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.ui_session import COOKIE, CSRF_HEADER
from tests.fakes.jellyfin import FakeJellyfin
from tests.test_jellyfin_gateway import _config, _populate, _write_synthetic

module_loop = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Env:
    url: str
    songs: list[Any]
    fake: FakeJellyfin


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("uijf")
    fake = FakeJellyfin()
    songs = _populate(fake)
    fake.add_user("alice", "alicepw")
    fake.add_user("bob", "bobpw", libraries=["Music"])
    url = await fake.start()
    try:
        config = _config(tmp, url)
        await _write_synthetic(config, songs, set())
        async with TestServer(create_app(config, adapter=None, refresh_seconds=None),
                              host="127.0.0.1") as ts:
            yield Env(str(ts.make_url("")).rstrip("/"), songs, fake)
    finally:
        await fake.stop()


async def _login(http: aiohttp.ClientSession, env: Env, user: str, password: str
                 ) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{env.url}/musegate/login",
                         json={"username": user, "password": password}) as resp:
        return resp.status, await resp.json()


@module_loop
async def test_wrong_jellyfin_password_is_refused(env: Env) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        status, body = await _login(http, env, "bob", "wrong")
        assert status == 401 and "error" in body
        assert not any(c.key == COOKIE for c in http.cookie_jar)
        async with http.get(f"{env.url}/musegate/api/status",
                            headers={"X-Forwarded-For": "192.0.2.1"}) as resp:
            assert resp.status == 403  # no session, not local: nothing


@module_loop
async def test_a_user_sees_only_their_libraries(env: Env) -> None:
    seed = next(s for s in env.songs if s.artist == "Artist 0")
    kids = {s.id for s in env.songs if s.library == "Kids"}  # same sound as Artist 0
    seen: dict[str, set[str]] = {}
    for user in ("alice", "bob"):
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            status, body = await _login(http, env, user, f"{user}pw")
            assert status == 200 and body["user"] == user
            # Behind a proxy the session is what admits the caller, not the address.
            proxied = {"X-Forwarded-For": "192.0.2.1"}
            async with http.get(f"{env.url}/musegate/api/similar",
                                params={"ids": seed.id, "n": 30, "max_per_artist": 0},
                                headers=proxied) as resp:
                assert resp.status == 200
                answer = await resp.json()
            seen[user] = {t["upstream_id"] for t in answer["tracks"]}
            kid_track = next(s for s in env.songs if s.library == "Kids")
            async with http.get(f"{env.url}/musegate/api/tracks",
                                params={"q": kid_track.title}, headers=proxied) as resp:
                found = {t["upstream_id"] for t in (await resp.json())["tracks"]}
            assert (kid_track.id in found) == (user == "alice")
            # The music map (parallel arrays, filtered by its own handler) too.
            async with http.get(f"{env.url}/musegate/api/map", headers=proxied) as resp:
                assert resp.status == 200
                mapped = (await resp.json())["points"]
            shown = [s for s in env.songs if user == "alice" or s.library == "Music"]
            assert len(mapped["id"]) == len(mapped["x"]) == len(shown)
            assert sorted(mapped["title"]) == sorted(s.title for s in shown)
            # A state-changing call needs the session's CSRF token.
            async with http.post(f"{env.url}/musegate/logout") as resp:
                assert resp.status == 403
            async with http.post(f"{env.url}/musegate/logout",
                                 headers={CSRF_HEADER: body["csrf"]}) as resp:
                assert resp.status == 200
    assert seen["alice"] & kids, "alice may see the Kids library: its songs sound alike"
    assert not seen["bob"] & kids, "bob's Jellyfin gives him the Music library only"
    assert seen["bob"], "bob still gets his own library's similar songs"
