"""How long a credential musegate once checked is trusted, and what an outage does to that.

The rule (docs/reliability.md, "Upstream faults"): a successful check is reused
for ``auth_cache_seconds`` (60 here) and never renewed without asking the
upstream; refusals are never remembered. So a password changed (or a token
revoked) at the server is refused at most ``auth_cache_seconds`` after the
last successful check, by apps and by a web UI session alike; while the server
is down, a credential checked less than that long ago may still get an answer
made only of what musegate already holds, and anything else gets 502/504 —
never an admission, never an empty "ok". Time is an injected clock
(``gateway.keys.CLOCK``) stepped by the test: nothing waits.

Real parts: supysonic (its own ``changePassword``) and the fake Jellyfin, each
behind the fault proxy (tests/reliability/fault_proxy.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.app import create_app
from tests import test_jellyfin_gateway as jf
from tests import test_subsonic_gateway as ss
from tests.fakes.jellyfin import FakeJellyfin
from tests.reliability.fault_proxy import Fault, FaultProxy
from tests.reliability.test_upstream_faults import Answer, fetch, subsonic_error
from tests.secret_watch import watch_secret
from tests.supysonic_server import Supysonic, generate_library

module_loop = pytest.mark.asyncio(loop_scope="module")

TTL = 60
API_KEY = "bound-api-key-0123456789"
USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw", "dave": "davepw",
         "erin": "erinpw", "frank": "frankpw"}


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SubsonicEnv:
    server: Supysonic
    proxy: FaultProxy
    url: str
    session: aiohttp.ClientSession
    songs: list[dict[str, Any]]
    clock: Clock

    async def similar(self, user: str, password: str, count: int = 3, fmt: str = "json"
                      ) -> Answer:
        return await fetch(self.session, "GET", f"{self.url}/rest/getSimilarSongs2", params={
            "u": user, "p": password, "v": "1.16.1", "c": "bound", "f": fmt,
            "id": self.songs[0]["id"], "count": str(count)})

    async def change_password(self, user: str, old: str, new: str) -> None:
        """At supysonic itself, as the user (its own changePassword endpoint)."""
        async with self.session.get(f"{self.server.url}/rest/changePassword", params={
                "u": user, "p": old, "v": "1.12.0", "c": "bound", "f": "json",
                "username": user, "password": new}) as resp:
            body = (await resp.json())["subsonic-response"]
        assert body["status"] == "ok", body


def ok_songs(answer: Answer) -> list[dict[str, Any]]:
    assert answer.status == 200 and not answer.cut, (answer.status, answer.text[:300])
    body = json.loads(answer.body)["subsonic-response"]
    assert body["status"] == "ok", body
    return list(body["similarSongs2"].get("song", []))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subsonic(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SubsonicEnv]:
    tmp = tmp_path_factory.mktemp("bound-ss")
    music = generate_library(tmp / "music", artists=2, albums=1, tracks=3, seconds=1.0)
    watch_secret(API_KEY, *USERS.values(), "carol-new-pw", "dave-new-pw")
    async with Supysonic.start(tmp, music, users=USERS) as server, \
            FaultProxy(server.port) as proxy, \
            aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        songs = await ss._songs(session, server.url)
        config = ss._config(tmp, proxy.url, auth_cache_seconds=TTL, api_key=API_KEY)
        await ss._write_synthetic(config, songs)
        app = create_app(config, adapter=None, refresh_seconds=None)
        clock = Clock()
        app[keys.CLOCK] = clock
        async with TestServer(app, host="127.0.0.1") as ts:
            yield SubsonicEnv(server, proxy, str(ts.make_url("")).rstrip("/"), session, songs,
                              clock)


@module_loop
async def test_a_changed_password_is_refused_after_auth_cache_seconds(
        subsonic: SubsonicEnv) -> None:
    env = subsonic
    assert ok_songs(await env.similar("carol", "carolpw"))
    await env.change_password("carol", "carolpw", "carol-new-pw")
    # Inside the bound the old password's check is still reused (this is the documented
    # window; without it the test below would prove nothing about the cache).
    env.clock.advance(TTL - 1)
    assert ok_songs(await env.similar("carol", "carolpw"))
    env.clock.advance(1)
    for fmt in ("json", "xml"):
        refused = await env.similar("carol", "carolpw", fmt=fmt)
        assert refused.status == 200 and subsonic_error(refused, fmt)[0] == 40, refused.text
        assert env.songs[1]["id"] not in refused.text
    assert ok_songs(await env.similar("carol", "carol-new-pw"))


@module_loop
async def test_a_ui_session_ends_when_the_server_stops_accepting_its_password(
        subsonic: SubsonicEnv) -> None:
    env = subsonic
    login = await fetch(env.session, "POST", env.url + "/musegate/login",
                        json={"username": "dave", "password": "davepw"})
    assert login.status == 200 and login.cookie
    cookie = {"Cookie": login.cookie}
    tracks = f"{env.url}/musegate/api/tracks"
    first = await fetch(env.session, "GET", tracks, params={"q": "ong"}, headers=cookie)
    assert first.status == 200 and json.loads(first.body)["tracks"]
    await env.change_password("dave", "davepw", "dave-new-pw")
    env.clock.advance(TTL)
    ended = await fetch(env.session, "GET", tracks, params={"q": "ong"}, headers=cookie)
    assert ended.status == 401 and "log in again" in json.loads(ended.body)["error"]
    again = await fetch(env.session, "GET", tracks, params={"q": "ong"}, headers=cookie)
    assert again.status == 401  # the session is gone, not merely refused once


@module_loop
async def test_while_the_upstream_is_down_nothing_is_admitted_that_was_not_checked(
        subsonic: SubsonicEnv) -> None:
    env = subsonic
    songs = ok_songs(await env.similar("bob", "bobpw"))  # bob checked now, his songs seen
    env.proxy.set(Fault.REFUSE)
    try:
        # Never checked, refused before, or wrong: an outage is 502, never an answer.
        for user, password in (("alice", "alicepw"), ("bob", "wrong"), ("mallory", "x")):
            down = await env.similar(user, password)
            assert down.status == 502 and subsonic_error(down, "json")[0] == 0, down.text
            assert env.songs[1]["id"] not in down.text
        # bob was checked less than auth_cache_seconds ago: what musegate holds for him
        # (the songs the server showed him) may answer him; nothing else is asked.
        env.clock.advance(TTL - 1)
        assert ok_songs(await env.similar("bob", "bobpw")) == songs
        # Past the bound his check is not renewed without the server: 502.
        env.clock.advance(1)
        down = await env.similar("bob", "bobpw")
        assert down.status == 502 and subsonic_error(down, "json")[0] == 0, down.text
    finally:
        await env.proxy.restart()
    refused = await env.similar("bob", "wrong")
    assert subsonic_error(refused, "json")[0] == 40
    assert ok_songs(await env.similar("bob", "bobpw")) == songs


@module_loop
async def test_a_server_answering_html_never_yields_an_empty_ok(subsonic: SubsonicEnv) -> None:
    """erin's check is cached but none of her songs are: a 200 HTML page per getSong is an
    outage (502), not "she may see none of them" (an ok with no songs)."""
    env = subsonic
    assert ok_songs(await env.similar("erin", "erinpw", count=0)) == []  # checked, no getSong
    env.proxy.set(Fault.WRONG_BODY)
    try:
        down = await env.similar("erin", "erinpw")
        assert down.status == 502 and subsonic_error(down, "json")[0] == 0, down.text
        fresh = await env.similar("frank", "frankpw")  # never checked: ping answers HTML
        assert fresh.status == 502 and subsonic_error(fresh, "json")[0] == 0, fresh.text
    finally:
        env.proxy.set(Fault.PASS)
    assert ok_songs(await env.similar("erin", "erinpw"))


# ---------------------------------------------------------------------------- Jellyfin


@dataclass
class JellyfinEnv:
    fake: FakeJellyfin
    proxy: FaultProxy
    url: str
    session: aiohttp.ClientSession
    songs: list[jf.Song]
    clock: Clock


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jellyfin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JellyfinEnv]:
    tmp = tmp_path_factory.mktemp("bound-jf")
    fake = FakeJellyfin()
    songs = jf._populate(fake)
    for name in ("alice", "bob"):
        fake.add_user(name, f"{name}pw")
    upstream = await fake.start()
    try:
        async with FaultProxy(int(upstream.rsplit(":", 1)[1])) as proxy, \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            config = jf._config(tmp, proxy.url, auth_cache_seconds=TTL, api_key=API_KEY)
            await jf._write_synthetic(config, songs, set())
            app = create_app(config, adapter=None, refresh_seconds=None)
            clock = Clock()
            app[keys.CLOCK] = clock
            async with TestServer(app, host="127.0.0.1") as ts:
                yield JellyfinEnv(fake, proxy, str(ts.make_url("")).rstrip("/"), session,
                                  songs, clock)
    finally:
        await fake.stop()


@module_loop
async def test_a_revoked_jellyfin_token_is_refused_after_auth_cache_seconds(
        jellyfin: JellyfinEnv) -> None:
    env = jellyfin
    _uid, token = env.fake.add_user("carol", "carolpw")
    watch_secret(token)
    seed = next(s for s in env.songs if s.library == "Music")
    url = f"{env.url}/Items/{seed.id}/InstantMix"
    headers = {"X-Emby-Token": token}
    assert (await fetch(env.session, "GET", url, headers=headers)).status == 200
    del env.fake.tokens[token]  # the session was ended at Jellyfin
    # Inside the bound the cached check lets the request on, but every song of the answer
    # is asked for as the caller (GET /Items with their token): Jellyfin refuses that, so
    # the request falls back to Jellyfin and gets its own 401 at once.
    env.clock.advance(TTL - 1)
    early = await fetch(env.session, "GET", url, headers=headers)
    assert early.status == 401 and seed.id.encode() not in early.body
    env.clock.advance(1)
    refused = await fetch(env.session, "GET", url, headers=headers)
    assert refused.status == 401 and seed.id.encode() not in refused.body


@module_loop
async def test_an_outage_is_not_remembered_as_a_ui_user_seeing_nothing(
        jellyfin: JellyfinEnv) -> None:
    """The UI's per-session visibility verdicts (auth_cache_seconds) must not record
    "not visible" for songs Jellyfin could not be asked about."""
    env = jellyfin
    login = await fetch(env.session, "POST", env.url + "/musegate/login",
                        json={"username": "bob", "password": "bobpw"})
    assert login.status == 200 and login.cookie
    cookie = {"Cookie": login.cookie}
    tracks = f"{env.url}/musegate/api/tracks"
    env.proxy.set(Fault.REFUSE)
    try:
        down = await fetch(env.session, "GET", tracks, params={"q": "song"}, headers=cookie)
        assert down.status == 502 and "not reachable" in json.loads(down.body)["error"]
    finally:
        await env.proxy.restart()
    back = await fetch(env.session, "GET", tracks, params={"q": "song"}, headers=cookie)
    assert back.status == 200 and json.loads(back.body)["tracks"], back.text
