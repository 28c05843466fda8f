"""Default (``hydrate``) answers reuse each caller's songs and stay exactly what the server says.

A real supysonic on loopback serves two music folders ("east": Artist 0 and 1,
"west": Artist 2 and 3) to alice and bob. supysonic lets every user see every
folder, so musegate is pointed at a small aiohttp relay (``WestHidden``, in this
file) that forwards everything to supysonic unchanged, except that it answers
bob's ``getSong`` for a west song the way a server with per-user folders does
(error 70), and counts ``getSong`` calls per user. Every comparison is with
``getSong`` as the same user, straight from the server (supysonic for alice,
the relay for bob), after the user starred and rated songs through musegate.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.subsonic import SubsonicAdapter
from analysis.store import LibraryStore, TrackRecord
from gateway.app import create_app
from gateway.subsonic import GATEWAY
from gateway.subsonic_auth import Credentials
from gateway.subsonic_songs import UserSongCache, scope_of
from musegate.config import Config, load_config
from musegate.library import analyzer_settings
from tests.store_factory import synthetic_analysis
from tests.supysonic_server import Supysonic, generate_library

module_loop = pytest.mark.asyncio(loop_scope="module")

USERS = {"alice": "alicepw", "bob": "bobpw"}
WEST_ARTISTS = {"Artist 2", "Artist 3"}
TTL = 300


def auth(user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"u": user, "p": USERS[user], "v": "1.16.1", "c": "test", "f": "json", **extra}


class WestHidden:
    """Relays /rest/* to supysonic; bob's ``getSong`` of a west song is refused (70)."""

    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.session = session
        self.west: set[str] = set()
        self.get_song: Counter[str] = Counter()

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"].removesuffix(".view")
        body = await request.read()
        params = {**dict(parse_qsl(body.decode())), **request.query} if body else request.query
        user = params.get("u", "")
        if name == "getSong":
            self.get_song[user] += 1
            if user == "bob" and params.get("id") in self.west:
                return web.json_response({"subsonic-response": {
                    "status": "failed", "version": "1.12.0",
                    "error": {"code": 70, "message": "Song not found"}}})
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization")}
        async with self.session.request(
            request.method, f"{self.upstream}/rest/{request.match_info['name']}",
            params=request.query, data=body or None, headers=headers,
        ) as resp:
            data, status = await resp.read(), resp.status
            ctype = resp.headers.get("Content-Type", "application/octet-stream")
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/rest/{name}", self.handle)
        return app


@dataclass
class Env:
    server: Supysonic
    relay: WestHidden
    relay_url: str
    config: Config
    app: web.Application
    url: str
    session: aiohttp.ClientSession
    records: list[TrackRecord]
    now: list[float]

    async def json(self, endpoint: str, base: str | None = None, method: str = "GET",
                   **params: Any) -> dict[str, Any]:
        fields = {k: str(v) for k, v in params.items()}
        url = f"{base or self.url}/rest/{endpoint}"
        if method == "POST":
            async with self.session.post(url, data=fields) as resp:
                return json.loads(await resp.text())["subsonic-response"]
        async with self.session.get(url, params=fields) as resp:
            return json.loads(await resp.text())["subsonic-response"]

    async def similar(self, user: str, seed: str, count: int = 50) -> list[dict[str, Any]]:
        body = await self.json("getSimilarSongs2", id=seed, count=count, **auth(user))
        assert body["status"] == "ok", body
        return list(body["similarSongs2"]["song"])

    def of_artist(self, *artists: str) -> list[str]:
        return [r.upstream_id for r in self.records if r.artist in artists]

    def artist_of(self, song_id: str) -> str:
        return next(r.artist or "" for r in self.records if r.upstream_id == song_id)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("songcache")
    east = generate_library(tmp / "east", artists=4, albums=1, tracks=6, seconds=0.5)
    west = tmp / "west"
    west.mkdir()
    for name in sorted(WEST_ARTISTS):
        shutil.move(str(east / name), str(west / name))
    async with Supysonic.start(tmp, east, users=USERS, folders={"east": east, "west": west}) \
            as server, aiohttp.ClientSession() as session:
        relay = WestHidden(server.url, session)
        async with TestServer(relay.app(), host="127.0.0.1") as relay_server:
            relay_url = str(relay_server.make_url("")).rstrip("/")
            config = load_config(None, env={}, overrides={
                "data_dir": str(tmp / "data"), "source": "subsonic", "upstream_url": relay_url,
                "max_per_artist": 0, "auth_cache_seconds": 3600, "workers": 1,
                "subsonic_song_cache_seconds": TTL,
            })
            adapter = SubsonicAdapter(relay_url, "alice", USERS["alice"], page_size=50)
            try:
                records = await adapter.list_tracks({})
            finally:
                await adapter.close()
            relay.west = {r.upstream_id for r in records if r.artist in WEST_ARTISTS}
            await _store(config, adapter.source, records)
            app = create_app(config, adapter=None, refresh_seconds=None)
            async with TestServer(app, host="127.0.0.1") as ts:
                now = [1000.0]
                app[GATEWAY].songs.clock = lambda: now[0]
                yield Env(server, relay, relay_url, config, app,
                          str(ts.make_url("")).rstrip("/"), session, records, now)


async def _store(config: Config, source: str, records: list[TrackRecord]) -> None:
    """The listed songs with synthetic analyses, one embedding cluster per artist."""
    rng = np.random.default_rng(5)
    version = analyzer_settings(config).version
    centres = {f"Artist {i}": rng.standard_normal(200) for i in range(4)}
    store = await LibraryStore.open(config.db_path)
    try:
        await store.sync_source(source, records)
        tracks = await store.tracks_of_source(source)
        await store.write_results([
            (t.id or 0, synthetic_analysis(
                centres[t.artist or "Artist 0"] + rng.standard_normal(200) * 0.05, version,
                duration=1.0))
            for t in tracks.values()
        ])
    finally:
        await store.close()


async def _as_server_says(env: Env, user: str, songs: list[dict[str, Any]]) -> None:
    """Every song equals, field by field, the server's own getSong for that user."""
    base = env.server.url if user == "alice" else env.relay_url
    for song in songs:
        direct = await env.json("getSong", base=base, id=song["id"], **auth(user))
        assert direct["status"] == "ok", direct
        assert song == direct["song"], song["id"]


# ---------------------------------------------------------------------------- gateway


@module_loop
async def test_answers_stay_exact_after_stars_and_ratings_through_musegate(env: Env) -> None:
    seed = env.of_artist("Artist 1")[0]
    first = await env.similar("alice", seed)
    assert len(first) == 23 and not any("starred" in s or "userRating" in s for s in first)
    calls = env.relay.get_song["alice"]
    again = await env.similar("alice", seed)
    assert again == first
    assert env.relay.get_song["alice"] == calls  # every song came from the cache

    starred, posted, rated = first[0]["id"], first[5]["id"], first[9]["id"]
    ok = await env.json("star", id=starred, **auth())  # relayed: musegate only reads the ids
    assert ok["status"] == "ok"
    ok = await env.json("star", method="POST", id=posted, **auth())  # POST form too
    assert ok["status"] == "ok"
    ok = await env.json("setRating.view", id=rated, rating=4, **auth())
    assert ok["status"] == "ok"

    after = await env.similar("alice", seed)
    assert [s["id"] for s in after] == [s["id"] for s in first]
    by_id = {s["id"]: s for s in after}
    assert "starred" in by_id[starred] and "starred" in by_id[posted]
    assert by_id[rated]["userRating"] == 4
    # only the three changed songs were asked again
    assert env.relay.get_song["alice"] == calls + 3
    await _as_server_says(env, "alice", after)
    # the same through getSonicSimilarTracks (entries are the same Child objects)
    sonic = await env.json("getSonicSimilarTracks", id=seed, count=50, **auth())
    assert {m["entry"]["id"]: m["entry"] for m in sonic["sonicMatch"]} == by_id

    ok = await env.json("unstar", id=starred, **auth())
    assert ok["status"] == "ok"
    unstarred = {s["id"]: s for s in await env.similar("alice", seed)}
    assert "starred" not in unstarred[starred] and "starred" in unstarred[posted]
    await _as_server_says(env, "alice", list(unstarred.values()))


@module_loop
async def test_a_user_with_fewer_folders_sees_only_their_songs(env: Env) -> None:
    east = env.of_artist("Artist 0", "Artist 1")
    for seed in (env.of_artist("Artist 2")[0], east[0]):
        await env.similar("alice", seed)  # alice's cache holds the west songs too
        songs = await env.similar("bob", seed)
        assert songs and {env.artist_of(s["id"]) for s in songs} <= {"Artist 0", "Artist 1"}
        assert len(songs) == (12 if seed not in east else 11)
        await _as_server_says(env, "bob", songs)
    # refusals are remembered as well: asking again costs bob no getSong at all
    calls = env.relay.get_song["bob"]
    again = await env.similar("bob", east[0])
    assert len(again) == 11 and env.relay.get_song["bob"] == calls
    # bob's stars are his: alice's answer for the same song does not show them
    alice_before = {s["id"]: s for s in await env.similar("alice", east[0])}
    song = next(s["id"] for s in again if "starred" not in alice_before[s["id"]])
    assert (await env.json("star", id=song, **auth("bob")))["status"] == "ok"
    bobs = {s["id"]: s for s in await env.similar("bob", east[0])}
    assert "starred" in bobs[song]
    alices = {s["id"]: s for s in await env.similar("alice", east[0])}
    assert "starred" not in alices[song]
    await _as_server_says(env, "bob", list(bobs.values()))
    await _as_server_says(env, "alice", list(alices.values()))


@module_loop
async def test_a_change_made_past_musegate_shows_after_the_ttl(env: Env) -> None:
    seed = env.of_artist("Artist 3")[0]
    before = await env.similar("alice", seed, count=5)
    target = next(s["id"] for s in before if "starred" not in s)
    # alice stars it with another client, talking to supysonic directly
    assert (await env.json("star", base=env.server.url, id=target, **auth()))["status"] == "ok"
    stale = await env.similar("alice", seed, count=5)
    assert stale == before  # documented: changes musegate cannot see wait for the TTL
    env.now[0] += TTL - 1
    assert await env.similar("alice", seed, count=5) == before
    env.now[0] += 2
    fresh = await env.similar("alice", seed, count=5)
    assert "starred" in next(s for s in fresh if s["id"] == target)
    await _as_server_says(env, "alice", fresh)


@module_loop
async def test_credentials_are_still_checked_and_the_library_moving_empties_it(env: Env) -> None:
    seed = env.of_artist("Artist 0")[1]
    await env.similar("alice", seed, count=5)
    wrong = await env.json("getSimilarSongs2", id=seed, count=5, u="alice", p="nope", f="json")
    assert wrong["status"] == "failed" and wrong["error"]["code"] == 40
    gw = env.app[GATEWAY]
    assert len(gw.songs) > 0
    gw.songs.library(("a rescan changed something",))
    assert len(gw.songs) == 0
    calls = env.relay.get_song["alice"]
    songs = await env.similar("alice", seed, count=5)  # the loaded signature differs again
    assert env.relay.get_song["alice"] == calls + 5
    await _as_server_says(env, "alice", songs)


@module_loop
async def test_cache_off_asks_every_song(env: Env) -> None:
    gw = env.app[GATEWAY]
    seed = env.of_artist("Artist 1")[2]
    ttl = gw.songs.ttl
    gw.songs.ttl = 0
    try:
        for _ in range(2):
            calls = env.relay.get_song["alice"]
            songs = await env.similar("alice", seed, count=7)
            assert len(songs) == 7 and env.relay.get_song["alice"] == calls + 7
    finally:
        gw.songs.ttl = ttl


# ---------------------------------------------------------------------------- unit


def test_scope_is_the_verified_user_client_and_version() -> None:
    client = {"c": "app", "v": "1.16.1"}
    plain = scope_of(Credentials.of({"u": "ann", "p": "pw"}, {}), client)
    token = scope_of(Credentials.of({"u": "ann", "t": "abc", "s": "salt"}, {}), client)
    assert plain == token == ("u:ann", "app", "1.16.1")
    basic = "Basic " + base64.b64encode(b"ann:pw").decode()
    assert scope_of(Credentials.of({}, {"Authorization": basic}), client) == plain
    key = scope_of(Credentials.of({"apiKey": "sekrit"}, {}), client)
    assert key is not None and "sekrit" not in repr(key) and key[0].startswith("k:")
    # two names for the caller: the server decides who it is, so nothing is cached
    assert scope_of(Credentials.of({"u": "ann", "p": "pw"}, {"Authorization": basic}),
                    client) is None
    assert scope_of(Credentials.of({"u": "ann", "apiKey": "k"}, {}), client) is None
    assert scope_of(Credentials.of({}, {"Authorization": "Basic !!!"}), client) is None
    assert scope_of(Credentials.of({"u": "ann", "p": "pw"}, {}), {"c": "other"}) != plain


def test_entries_expire_and_the_oldest_used_go_first() -> None:
    now = [0.0]
    cache = UserSongCache(10, 3, clock=lambda: now[0])
    a, b = ("u:a", "c", "v"), ("u:b", "c", "v")
    with cache.filling() as token:
        cache.put(a, "1", {"id": "1"}, token)
        cache.put(a, "2", None, token)
        cache.put(b, "1", {"id": "1", "starred": "x"}, token)
    assert cache.get(a, "1") == (True, {"id": "1"})  # used: now the most recent
    assert cache.get(a, "2") == (True, None)  # a remembered refusal
    with cache.filling() as token:
        cache.put(b, "3", {"id": "3"}, token)
    assert len(cache) == 3 and cache.get(b, "1") == (False, None)  # least recently used
    now[0] = 10.0
    assert cache.get(a, "1") == (False, None) and cache.get(b, "3") == (False, None)
    off = UserSongCache(0, 3)
    with off.filling() as token:
        off.put(a, "1", {"id": "1"}, token)
    assert off.get(a, "1") == (False, None) and len(off) == 0


def test_a_change_drops_the_song_for_everyone_and_beats_fills_in_flight() -> None:
    cache = UserSongCache(60, 100)
    a, b = ("u:a", "c", "v"), ("u:b", "c", "v")
    with cache.filling() as token:
        for scope in (a, b):
            cache.put(scope, "1", {"id": "1"}, token)
            cache.put(scope, "2", {"id": "2"}, token)
    with cache.filling() as early:  # a fill that asked the upstream before the change...
        with cache.changing(["1"]):
            assert cache.get(a, "1") == (False, None) and cache.get(b, "1") == (False, None)
            with cache.filling() as during:
                cache.put(a, "1", {"id": "1", "old": True}, during)  # in flight: not stored
            assert cache.get(a, "1") == (False, None)
        cache.put(b, "1", {"id": "1", "old": True}, early)  # ...stores nothing for it
        cache.put(b, "2", {"id": "2"}, early)  # songs not changed are stored as usual
    assert cache.get(b, "1") == (False, None) and cache.get(a, "2") == (True, {"id": "2"})
    with cache.filling() as later:
        cache.put(a, "1", {"id": "1", "new": True}, later)
    assert cache.get(a, "1") == (True, {"id": "1", "new": True})
    # a library change empties it, and fills begun before store nothing
    with cache.filling() as before_clear:
        cache.library(("moved",))
        cache.put(a, "5", {"id": "5"}, before_clear)
    assert len(cache) == 0
