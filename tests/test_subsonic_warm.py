"""A new caller's songs are warmed in the background: their first answer needs no getSong.

Against the same real supysonic and per-folder relay as tests/test_subsonic_song_cache.py
(``WestHidden``: bob may not see the west folder). Every warm here is started by what a
client does at login (``ping`` through musegate) and waited for on the warmer itself;
costs are counted at the relay (getSong / getAlbum per user), never timed. A new caller
is a new client name (``c``): the cache is kept per user *and* client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.metrics import METRICS
from gateway.subsonic import GATEWAY
from gateway.subsonic_auth import Credentials, UpstreamDown, UpstreamError
from gateway.subsonic_songs import AlbumTrust, UserSongCache, scope_of
from gateway.subsonic_warm import Foreground, Warmer, interleave
from tests.secret_watch import watch_secret
from tests.test_subsonic_song_cache import USERS, Env, _as_server_says, auth, env

__all__ = ["env"]  # the song cache tests' fixture: supysonic, the relay, musegate

module_loop = pytest.mark.asyncio(loop_scope="module")

BUDGET = 100  # more than the 24 songs of the library: a warm covers all of it


async def login(env: Env, user: str, client: str, password: str | None = None) -> dict[str, Any]:
    """A client connecting (``ping`` through musegate), then the warm it started, finished."""
    env.app[GATEWAY].warm.budget = BUDGET  # the fixture's musegate starts with warming off
    params = auth(user, c=client)
    if password is not None:
        params["p"] = password
    body = await env.json("ping", **params)
    await env.app[GATEWAY].warm.wait()
    return body


async def similar(env: Env, user: str, client: str, seed: str,
                  count: int = 50) -> list[dict[str, Any]]:
    body = await env.json("getSimilarSongs2", id=seed, count=count, **auth(user, c=client))
    assert body["status"] == "ok", body
    return list(body["similarSongs2"]["song"])


def scope(user: str, client: str) -> Any:
    return scope_of(Credentials.of({"u": user, "p": USERS[user]}, {}), {"c": client,
                                                                        "v": "1.16.1"})


def held(env: Env, user: str, client: str) -> dict[str, Any]:
    """song id -> the Child (or None: refused) the cache holds for this caller."""
    cache = env.app[GATEWAY].songs
    want = scope(user, client)
    return {sid: entry[1] for (sc, sid), entry in cache._entries.items() if sc == want}


@module_loop
async def test_a_warmed_caller_s_first_answer_asks_the_server_nothing(env: Env) -> None:
    gw = env.app[GATEWAY]
    done = gw.warm.finished["done"]
    assert (await login(env, "alice", "warm-first"))["status"] == "ok"
    assert gw.warm.finished["done"] == done + 1
    assert len(held(env, "alice", "warm-first")) == len(env.records)  # the whole library
    calls = env.relay.asked("alice")
    songs = await similar(env, "alice", "warm-first", env.of_artist("Artist 1")[0])
    assert len(songs) == 23 and env.relay.asked("alice") == calls  # no getSong, no getAlbum
    await _as_server_says(env, "alice", songs)
    # a second login within the TTL warms nothing again
    await login(env, "alice", "warm-first")
    assert env.relay.asked("alice") == calls and gw.warm.finished["done"] == done + 1
    text = env.app[METRICS].render().decode()
    assert 'musegate_subsonic_warm_runs_total{result="done"}' in text
    assert "musegate_subsonic_warm_songs_total" in text and "alicepw" not in text


@module_loop
async def test_warmed_answers_carry_the_caller_s_own_stars_and_ratings(env: Env) -> None:
    east0 = env.of_artist("Artist 0")
    starred, rated = east0[1], east0[2]
    await env.json("star", id=starred, **auth())  # refused when starred already: fine
    assert (await env.json("setRating", id=rated, rating=3, **auth()))["status"] == "ok"
    await login(env, "alice", "warm-stars")
    calls = env.relay.asked("alice")
    by_id = {s["id"]: s for s in await similar(env, "alice", "warm-stars", east0[0])}
    assert env.relay.asked("alice") == calls
    assert "starred" in by_id[starred] and by_id[rated]["userRating"] == 3
    await _as_server_says(env, "alice", list(by_id.values()))
    # changes through musegate still drop the warmed entries: only they are asked again
    assert (await env.json("unstar", id=starred, **auth()))["status"] == "ok"
    assert (await env.json("setRating", id=rated, rating=5, **auth()))["status"] == "ok"
    after = {s["id"]: s for s in await similar(env, "alice", "warm-stars", east0[0])}
    assert env.relay.asked("alice") == calls + 2
    assert "starred" not in after[starred] and after[rated]["userRating"] == 5
    await _as_server_says(env, "alice", list(after.values()))


@module_loop
async def test_a_user_who_may_not_see_a_folder_gets_none_of_its_songs(env: Env) -> None:
    await login(env, "bob", "warm-folders")
    west = env.relay.west
    mine = held(env, "bob", "warm-folders")
    assert len(mine) == len(env.records)
    assert all(mine[s] is None for s in west)  # refusals, as the server answered them
    assert all(mine[s] is not None for s in mine if s not in west)
    for seed in (env.of_artist("Artist 2")[0], env.of_artist("Artist 0")[0]):
        calls = env.relay.asked("bob")
        songs = await similar(env, "bob", "warm-folders", seed)
        assert env.relay.asked("bob") == calls  # all from the warmed cache
        assert len(songs) == 12 - (seed not in west) and not {s["id"] for s in songs} & west
        await _as_server_says(env, "bob", songs)  # (asks the relay: counted for bob)


@module_loop
async def test_wrong_credentials_warm_nothing(env: Env) -> None:
    gw = env.app[GATEWAY]
    failed = gw.warm.finished["auth_failed"]
    calls = env.relay.asked("alice")
    watch_secret("nope-not-alicepw")
    body = await login(env, "alice", "warm-wrong", password="nope-not-alicepw")
    assert body["status"] == "failed" and body["error"]["code"] == 40  # the server's answer
    assert gw.warm.finished["auth_failed"] == failed + 1
    assert held(env, "alice", "warm-wrong") == {} and env.relay.asked("alice") == calls
    # the real alice on that client is warmed when she connects (not blocked by the failure)
    await login(env, "alice", "warm-wrong")
    assert len(held(env, "alice", "warm-wrong")) == len(env.records)


@module_loop
async def test_the_warm_stops_when_the_upstream_dies_and_musegate_keeps_serving(
        env: Env) -> None:
    gw = env.app[GATEWAY]
    real = gw.warm.upstream
    asked: list[str] = []

    class DiesAfterFive:
        """The relay as the warm sees it; supysonic stops after the warm's fifth getSong."""

        async def call(self, endpoint: str, *args: Any, **params: Any) -> dict[str, Any]:
            if endpoint == "getSong":
                asked.append(params["id"])
                if len(asked) == 5:
                    await env.server.stop()
            return await real.call(endpoint, *args, **params)

    down = gw.warm.finished["upstream_down"]
    gw.warm.upstream = DiesAfterFive()  # type: ignore[assignment]
    try:
        await login(env, "alice", "warm-dies")
    finally:
        gw.warm.upstream = real
        await env.server.start()
    assert gw.warm.finished["upstream_down"] == down + 1
    assert 5 <= len(asked) < len(env.records)  # stopped, did not try every song
    assert len(held(env, "alice", "warm-dies")) <= 4  # what it had before the server died
    # musegate kept serving: the same caller's answer is exact, the missing songs asked now
    songs = await similar(env, "alice", "warm-dies", env.of_artist("Artist 3")[0])
    assert len(songs) == 23
    await _as_server_says(env, "alice", songs)


@module_loop
async def test_search3_pages_are_used_once_they_matched_getsong(env: Env) -> None:
    gw = env.app[GATEWAY]
    gw.warm.pages = AlbumTrust(call="search3")  # subsonic_warm_pages = true, nothing learnt
    rated = env.of_artist("Artist 1")[3:6]  # (at least) three songs with per-user fields
    for song in rated:
        assert (await env.json("setRating", id=song, rating=2, **auth()))["status"] == "ok"
    try:
        songs, pages = env.relay.get_song["alice"], env.relay.search3["alice"]
        await login(env, "alice", "warm-pages-1")
        # learning: 20 entries asked with getSong and compared, and entries carrying per-user
        # fields until 3 of them matched; the rest came from the page
        assert 20 <= env.relay.get_song["alice"] - songs < len(env.records)
        assert env.relay.search3["alice"] - pages == 1
        assert len(held(env, "alice", "warm-pages-1")) == len(env.records)
        assert not gw.warm.pages.checking and not gw.warm.pages.differs
        # trusted: a new caller's warm is one search3 call, no getSong
        songs = env.relay.get_song["alice"]
        await login(env, "alice", "warm-pages-2")
        assert env.relay.get_song["alice"] == songs
        mine = held(env, "alice", "warm-pages-2")
        assert len(mine) == len(env.records)
        assert all(mine[song]["userRating"] == 2 for song in rated)
        answer = await similar(env, "alice", "warm-pages-2", env.of_artist("Artist 1")[0])
        assert env.relay.get_song["alice"] == songs and len(answer) == 23
        await _as_server_says(env, "alice", answer)
        # a caller nobody warmed (warm off): a cold answer is one search3 page, exact
        gw.warm.budget = 0
        songs, pages = env.relay.get_song["alice"], env.relay.search3["alice"]
        answer = await similar(env, "alice", "warm-pages-cold", env.of_artist("Artist 2")[0])
        assert env.relay.get_song["alice"] == songs and env.relay.search3["alice"] == pages + 1
        assert len(answer) == 23
        await _as_server_says(env, "alice", answer)
        songs = env.relay.get_song["bob"]
        answer = await similar(env, "bob", "warm-pages-cold", env.of_artist("Artist 0")[0])
        assert len(answer) == 11 and not {s["id"] for s in answer} & env.relay.west
        assert env.relay.get_song["bob"] - songs == 12  # west songs: not listed, getSong says 70
        await _as_server_says(env, "bob", answer)
        gw.warm.budget = BUDGET
        # right after login: the answer waits for the warm's page instead of asking again
        env.relay.search3_hold, env.relay.search3_arrived = asyncio.Event(), asyncio.Event()
        try:
            songs, pages = env.relay.get_song["alice"], env.relay.search3["alice"]
            await env.json("ping", **auth("alice", c="warm-pages-now"))
            await env.relay.search3_arrived.wait()  # the warm's page is at the server
            entered = asyncio.Event()
            original = gw._from_page

            async def spy(*args: Any) -> Any:
                entered.set()  # the original runs on to its first await: the warm's page
                return await original(*args)

            gw._from_page = spy  # type: ignore[method-assign]
            asking = asyncio.create_task(
                similar(env, "alice", "warm-pages-now", env.of_artist("Artist 3")[0]))
            await entered.wait()
            env.relay.search3_hold.set()
            answer = await asking
        finally:
            env.relay.search3_hold.set()
            env.relay.search3_hold = None
            del gw._from_page
        await gw.warm.wait()
        assert env.relay.search3["alice"] == pages + 1 and env.relay.get_song["alice"] == songs
        assert len(answer) == 23
        await _as_server_says(env, "alice", answer)
        # bob's search3 lists no west song: none is warmed (not even as a refusal)
        await login(env, "bob", "warm-pages-3")
        bobs = held(env, "bob", "warm-pages-3")
        assert set(bobs) == {r.upstream_id for r in env.records} - env.relay.west
        assert all(child is not None for child in bobs.values())
        answer = await similar(env, "bob", "warm-pages-3", env.of_artist("Artist 0")[0])
        assert len(answer) == 11 and not {s["id"] for s in answer} & env.relay.west
        await _as_server_says(env, "bob", answer)
    finally:
        gw.warm.pages = None


@module_loop
async def test_search3_entries_that_differ_send_the_warm_song_by_song(env: Env) -> None:
    gw = env.app[GATEWAY]
    gw.warm.pages = AlbumTrust(call="search3")
    env.relay.search3_drops = {"size"}  # this server's search3 leaves a field out
    try:
        songs = env.relay.get_song["alice"]
        await login(env, "alice", "warm-pages-differ")
        assert gw.warm.pages.differs
        assert env.relay.get_song["alice"] - songs == len(env.records)  # all by getSong
        mine = held(env, "alice", "warm-pages-differ")
        assert len(mine) == len(env.records) and all("size" in c for c in mine.values())
        answer = await similar(env, "alice", "warm-pages-differ", env.of_artist("Artist 2")[0])
        await _as_server_says(env, "alice", answer)
    finally:
        env.relay.search3_drops = set()
        gw.warm.pages = None


# ---------------------------------------------------------------------------- unit


class FakeUpstream:
    """getSong answers by id; each call recorded; ``gate`` holds calls until set."""

    def __init__(self, songs: dict[str, Any]) -> None:
        self.songs = songs
        self.calls: list[str] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def call(self, endpoint: str, creds: Any, client: Any, **params: Any) -> dict[str, Any]:
        self.calls.append(f"{endpoint}:{params.get('id', '')}")
        await self.gate.wait()
        if endpoint != "getSong":
            raise UpstreamError(70, "no")
        answer = self.songs.get(params["id"], 70)
        if answer == "down":
            raise UpstreamDown("gone")
        if isinstance(answer, int):
            raise UpstreamError(answer, "refused")
        return {"song": answer}


class FakeAuth:
    def __init__(self, ok: bool = True) -> None:
        self.ok = ok

    async def check(self, creds: Any, client: Any) -> None:
        if not self.ok:
            raise UpstreamError(40, "Wrong username or password")


CREDS = Credentials.of({"u": "ann", "p": "pw"}, {})
SCOPE = scope_of(CREDS, {})


def warmer(cache: UserSongCache, upstream: FakeUpstream, plan: list[str], budget: int = 100,
           foreground: Foreground | None = None, auth: FakeAuth | None = None) -> Warmer:
    async def planner(_scope: Any, _ask: Any) -> tuple[list[str], list[str]]:
        return plan, []
    return Warmer(cache, upstream, auth or FakeAuth(), foreground or Foreground(),  # type: ignore[arg-type]
                  planner, budget=budget, concurrency=2)


@pytest.mark.asyncio
async def test_warm_waits_for_requests_and_respects_the_budget() -> None:
    cache = UserSongCache(60, 100)
    up = FakeUpstream({str(i): {"id": str(i)} for i in range(10)})
    fg = Foreground()
    w = warmer(cache, up, [str(i) for i in range(10)], budget=4, foreground=fg)
    with fg.busy():
        assert w.notice(CREDS, {}) is not None
        assert w.notice(CREDS, {}) is None  # already running for this caller
        for _ in range(20):  # give the warm every chance to run: it must not ask anything
            await asyncio.sleep(0)
        assert up.calls == []
    await w.wait()
    assert len(up.calls) == 4 and w.finished["budget"] == 1
    assert [cache.get(SCOPE, str(i))[0] for i in range(5)] == [True] * 4 + [False]
    assert w.notice(CREDS, {}) is None  # warmed within the TTL


@pytest.mark.asyncio
async def test_warm_never_evicts_nor_replaces_what_requests_cached() -> None:
    cache = UserSongCache(60, 3)
    other = ("u:bob", "", "")
    with cache.filling() as token:
        cache.put(other, "x", {"id": "x"}, token)
        cache.put(SCOPE, "1", {"id": "1", "mine": True}, token)
    up = FakeUpstream({str(i): {"id": str(i)} for i in range(5)})
    w = warmer(cache, up, ["1", "2", "3", "4"])
    w.notice(CREDS, {})
    await w.wait()
    assert w.finished["cache_full"] == 1 and len(cache) == 3
    assert cache.get(other, "x") == (True, {"id": "x"})
    assert cache.get(SCOPE, "1") == (True, {"id": "1", "mine": True})  # not asked again
    assert "getSong:1" not in up.calls
    # an expired entry is renewed by a warm answer, not kept in the way
    now = [0.0]
    aging = UserSongCache(10, 5, clock=lambda: now[0])
    with aging.filling() as token:
        aging.put(SCOPE, "1", {"id": "1", "old": True}, token)
    now[0] = 20.0
    with aging.filling() as token:
        assert aging.offer(SCOPE, "1", {"id": "1"}, token)
    assert aging.get(SCOPE, "1") == (True, {"id": "1"})
    # a request needing room drops the warmed entry first, not the requests' own
    with cache.filling() as token:
        cache.put(other, "y", {"id": "y"}, token)
    assert cache.get(SCOPE, "2") == (False, None) and cache.get(other, "x")[0]


@pytest.mark.asyncio
async def test_a_change_relayed_while_warming_wins() -> None:
    cache = UserSongCache(60, 100)
    up = FakeUpstream({"1": {"id": "1", "old": True}, "2": {"id": "2"}})
    up.gate.clear()
    w = warmer(cache, up, ["1", "2"])
    w.notice(CREDS, {})
    while len(up.calls) < 2:  # both getSong calls are in flight, held by the gate
        await asyncio.sleep(0)
    with cache.changing(["1"]):  # star id=1 relayed meanwhile
        pass
    up.gate.set()
    await w.wait()
    assert cache.get(SCOPE, "1") == (False, None)  # its answer may predate the star
    assert cache.get(SCOPE, "2") == (True, {"id": "2"})


@pytest.mark.asyncio
async def test_auth_failures_and_a_dead_upstream_stop_it() -> None:
    cache = UserSongCache(60, 100)
    w = warmer(cache, FakeUpstream({}), ["1"], auth=FakeAuth(ok=False))
    w.notice(CREDS, {})
    await w.wait()
    assert w.finished["auth_failed"] == 1 and len(cache) == 0
    # not remembered as warmed: the right credentials warm later
    up = FakeUpstream({"1": {"id": "1"}, "2": 40, "3": {"id": "3"}})
    w.auth, w.upstream = FakeAuth(), up  # type: ignore[assignment]
    w.concurrency = 1
    w.planner = lambda *_: _const(["1", "2", "3"])  # type: ignore[assignment]
    w.notice(CREDS, {})
    await w.wait()
    assert w.finished["auth_failed"] == 2 and "getSong:3" not in up.calls
    up = FakeUpstream({"1": "down", "2": {"id": "2"}})
    w2 = warmer(UserSongCache(60, 100), up, ["1", "2"])
    w2.concurrency = 1
    w2.notice(CREDS, {})
    await w2.wait()
    assert w2.finished["upstream_down"] == 1 and up.calls == ["getSong:1"]


async def _const(value: list[str]) -> tuple[list[str], list[str]]:
    return value, []


def test_interleave_takes_each_rank_of_every_group_in_turn() -> None:
    assert interleave([["a", "b", "c"], ["d", "a"], []]) == ["a", "d", "b", "c"]


@pytest.mark.asyncio
async def test_nothing_is_asked_before_a_library_is_loaded() -> None:
    cache = UserSongCache(60, 100)
    up = FakeUpstream({})
    w = warmer(cache, up, [])
    w.pages = AlbumTrust(call="search3")
    w.notice(CREDS, {})
    await w.wait()
    assert w.finished["done"] == 1 and up.calls == [] and len(cache) == 0
