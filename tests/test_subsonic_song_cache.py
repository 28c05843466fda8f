"""Default (``hydrate``) answers reuse each caller's songs and stay exactly what the server says.

A real supysonic on loopback serves two music folders ("east": Artist 0 and 1,
"west": Artist 2 and 3) to alice and bob. supysonic lets every user see every
folder, so musegate is pointed at a small aiohttp relay (``WestHidden``, in this
file) that forwards everything to supysonic unchanged, except that it answers
bob the way a server with per-user folders does: ``getSong`` of a west song is
error 70, and ``getAlbum`` and ``search3`` leave out west songs (error 70 for an
album with no other). It counts ``getSong``, ``getAlbum`` and ``search3`` calls per
user, and can make getAlbum's or search3's entries differ from getSong's
(``album_drops``, ``search3_drops``), as a server that builds them differently would. Every comparison is with ``getSong`` as the same
user, straight from the server (supysonic for alice, the relay for bob), after
the user starred and rated songs through musegate — on warm answers (from the
cache) and cold ones (the cache emptied, songs asked by album).
"""

from __future__ import annotations

import asyncio
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
from gateway.subsonic_auth import Credentials, UpstreamError
from gateway.subsonic_songs import AlbumTrust, UserSongCache, fetch_songs, scope_of
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
    """Relays /rest/* to supysonic; west songs are hidden from bob (getSong 70, getAlbum)."""

    def __init__(self, upstream: str, session: aiohttp.ClientSession) -> None:
        self.upstream = upstream
        self.session = session
        self.west: set[str] = set()
        self.get_song: Counter[str] = Counter()
        self.get_album: Counter[str] = Counter()
        self.album_drops: set[str] = set()  # fields removed from getAlbum's song entries
        self.search3: Counter[str] = Counter()
        self.search3_drops: set[str] = set()  # fields removed from search3's song entries
        # when set: search3 calls are held until it is set, ``search3_arrived`` tells when one is
        self.search3_hold: asyncio.Event | None = None
        self.search3_arrived = asyncio.Event()

    def asked(self, user: str) -> int:
        """Song-answering calls (getSong and getAlbum) the user's requests cost so far."""
        return self.get_song[user] + self.get_album[user]

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
        if name == "search3" and self.search3_hold is not None:
            self.search3_arrived.set()
            await self.search3_hold.wait()
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization")}
        async with self.session.request(
            request.method, f"{self.upstream}/rest/{request.match_info['name']}",
            params=request.query, data=body or None, headers=headers,
        ) as resp:
            data, status = await resp.read(), resp.status
            ctype = resp.headers.get("Content-Type", "application/octet-stream")
        if name == "getAlbum":
            self.get_album[user] += 1
            return self._album(json.loads(data), user)
        if name == "search3":
            self.search3[user] += 1
            return self._search(json.loads(data), user)
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    def _album(self, answer: dict[str, Any], user: str) -> web.Response:
        """getAlbum as a per-folder server shapes it: bob's lacks west songs."""
        album = answer["subsonic-response"].get("album")
        if album is not None:
            songs = [{k: v for k, v in song.items() if k not in self.album_drops}
                     for song in album.get("song", [])
                     if not (user == "bob" and song["id"] in self.west)]
            if not songs and album.get("song"):
                return web.json_response({"subsonic-response": {
                    "status": "failed", "version": "1.12.0",
                    "error": {"code": 70, "message": "Album not found"}}})
            album["song"] = songs
        return web.json_response(answer)

    def _search(self, answer: dict[str, Any], user: str) -> web.Response:
        """search3 as a per-folder server lists it: bob's lacks west songs."""
        result = answer["subsonic-response"].get("searchResult3")
        if result is not None and result.get("song"):
            result["song"] = [{k: v for k, v in song.items() if k not in self.search3_drops}
                              for song in result["song"]
                              if not (user == "bob" and song["id"] in self.west)]
        return web.json_response(answer)

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
                # warming is switched on by the tests about it (it adds getSong calls)
                "subsonic_warm_songs": 0,
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
async def test_cold_answers_come_from_albums_once_they_proved_to_equal_getsong(env: Env) -> None:
    gw = env.app[GATEWAY]
    gw.album_trust = AlbumTrust()  # subsonic_song_fetch = "album", nothing learnt yet
    east0, east1 = env.of_artist("Artist 0"), env.of_artist("Artist 1")
    west2 = env.of_artist("Artist 2")
    # per-user fields on every album: alice stars and rates, bob stars other songs
    for song, rating in ((east0[1], 5), (east1[3], 2), (west2[2], 3)):
        await _starred(env, "alice", song)
        assert (await env.json("setRating", id=song, rating=rating, **auth()))["status"] == "ok"
    assert (await env.json("setRating", id=east0[2], rating=1, **auth()))["status"] == "ok"
    await _starred(env, "bob", east0[4])
    # neither starred nor rated by the other user, whatever earlier tests did
    for user, songs in (("alice", (east0[4], east1[1])), ("bob", (east0[1], east1[3]))):
        for song in songs:
            await env.json("unstar", id=song, **auth(user))  # refused when not starred: fine
            ok = await env.json("setRating", id=song, rating=0, **auth(user))
            assert ok["status"] == "ok"
    assert (await env.json("setRating", id=east1[1], rating=4, **auth("bob")))["status"] == "ok"

    # learning: the answer is getSong's, every album entry is compared with it
    gw.songs.clear()
    songs, cost = await _cold(env, "alice", east1[0])
    assert len(songs) == 23 and cost == {"getSong": 23, "getAlbum": 4}
    assert not gw.album_trust.checking and not gw.album_trust.differs
    await _as_server_says(env, "alice", songs)

    # trusted: one getAlbum per album, no getSong, and still exactly getSong's answers
    gw.songs.clear()
    songs, cost = await _cold(env, "alice", east1[0])
    assert len(songs) == 23 and cost == {"getSong": 0, "getAlbum": 4}
    by_id = {s["id"]: s for s in songs}
    assert by_id[east0[1]]["userRating"] == 5 and "starred" in by_id[west2[2]]
    assert "starred" not in by_id[east0[4]] and by_id[east1[1]].get("userRating") is None
    await _as_server_says(env, "alice", songs)

    # bob: west albums are refused to him, so their songs are asked with getSong (refused too)
    songs, cost = await _cold(env, "bob", east0[0])
    assert {env.artist_of(s["id"]) for s in songs} == {"Artist 0", "Artist 1"}
    assert len(songs) == 11 and cost == {"getSong": 12, "getAlbum": 4}
    bobs = {s["id"]: s for s in songs}
    assert "starred" in bobs[east0[4]] and bobs[east1[1]]["userRating"] == 4
    assert "starred" not in bobs[east0[1]] and "userRating" not in bobs[east1[3]]
    await _as_server_says(env, "bob", songs)
    _, cost = await _cold(env, "bob", east0[0])
    assert cost == {"getSong": 0, "getAlbum": 0}  # the refusals were remembered

    # a song's album mates were cached with it: a wider answer on that album costs nothing
    gw.songs.clear()
    few, cost = await _cold(env, "alice", east0[0], count=2)
    assert {env.artist_of(s["id"]) for s in few} == {"Artist 0"}
    assert cost == {"getSong": 0, "getAlbum": 1}
    more, cost = await _cold(env, "alice", east0[0], count=5)
    assert len(more) == 5 and cost == {"getSong": 0, "getAlbum": 0}
    await _as_server_says(env, "alice", more)

    # a change through musegate: the next cold answer shows it, still from albums
    assert (await env.json("unstar", id=east0[1], **auth()))["status"] == "ok"
    assert (await env.json("setRating", id=east0[3], rating=3, **auth()))["status"] == "ok"
    gw.songs.clear()
    songs, cost = await _cold(env, "alice", east1[0])
    assert cost == {"getSong": 0, "getAlbum": 4}
    by_id = {s["id"]: s for s in songs}
    assert "starred" not in by_id[east0[1]] and by_id[east0[3]]["userRating"] == 3
    await _as_server_says(env, "alice", songs)


@module_loop
async def test_an_upstream_whose_album_entries_differ_is_asked_song_by_song(env: Env) -> None:
    gw = env.app[GATEWAY]
    rated = env.of_artist("Artist 1")[4]
    assert (await env.json("setRating", id=rated, rating=2, **auth()))["status"] == "ok"
    gw.album_trust = AlbumTrust()
    env.relay.album_drops = {"userRating"}  # this server leaves ratings out of getAlbum
    try:
        gw.songs.clear()
        songs, cost = await _cold(env, "alice", env.of_artist("Artist 1")[0])
        assert gw.album_trust.differs and cost["getSong"] == 23
        assert next(s for s in songs if s["id"] == rated)["userRating"] == 2
        await _as_server_says(env, "alice", songs)
        gw.songs.clear()
        songs, cost = await _cold(env, "alice", env.of_artist("Artist 1")[0])
        assert cost == {"getSong": 23, "getAlbum": 0}
        await _as_server_says(env, "alice", songs)
    finally:
        env.relay.album_drops = set()


async def _starred(env: Env, user: str, song: str) -> None:
    """Star through musegate (supysonic refuses a second star, so an earlier one is fine too)."""
    await env.json("star", id=song, **auth(user))
    base = env.server.url if user == "alice" else env.relay_url
    assert "starred" in (await env.json("getSong", base=base, id=song, **auth(user)))["song"]


async def _cold(env: Env, user: str, seed: str,
                count: int = 50) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The answer, and the getSong / getAlbum calls it cost the upstream."""
    song, album = env.relay.get_song[user], env.relay.get_album[user]
    songs = await env.similar(user, seed, count=count)
    return songs, {"getSong": env.relay.get_song[user] - song,
                   "getAlbum": env.relay.get_album[user] - album}


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
    calls = env.relay.asked("alice")
    songs = await env.similar("alice", seed, count=5)  # the loaded signature differs again
    assert env.relay.asked("alice") > calls
    await _as_server_says(env, "alice", songs)


@module_loop
async def test_cache_off_asks_every_song(env: Env) -> None:
    gw = env.app[GATEWAY]
    seed = env.of_artist("Artist 1")[2]
    ttl = gw.songs.ttl
    gw.songs.ttl = 0
    try:
        for _ in range(2):  # nothing is kept: each answer asks the server again
            calls = env.relay.asked("alice")
            songs = await env.similar("alice", seed, count=7)
            assert len(songs) == 7 and env.relay.asked("alice") > calls
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


class Script:
    """An upstream as a table: getSong / getAlbum answers by id, each call recorded."""

    def __init__(self, songs: dict[str, Any], albums: dict[str, Any]) -> None:
        self.songs = songs  # id -> Child, or an int error code
        self.albums = albums  # id -> list of Children (or one Child), or an int error code
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, endpoint: str, **params: Any) -> dict[str, Any]:
        self.calls.append((endpoint, params["id"]))
        table = self.songs if endpoint == "getSong" else self.albums
        answer = table.get(params["id"], 70)
        if isinstance(answer, int):
            raise UpstreamError(answer, "refused")
        return {"song": answer} if endpoint == "getSong" else {"album": {"song": answer}}


async def _fetch(script: Script, ids: list[str], album_of: dict[str, str],
                 trust: AlbumTrust | None) -> tuple[dict[str, Any], dict[str, Any]]:
    kept: dict[str, Any] = {}
    got = await fetch_songs(script, ids, album_of, trust, kept.__setitem__)
    return got, kept


@pytest.mark.asyncio
async def test_fetch_asks_by_album_and_settles_the_rest_with_getsong() -> None:
    a1, a2, a3 = {"id": "1", "t": "a"}, {"id": "2", "starred": "x"}, {"id": "3"}
    script = Script(
        songs={"1": a1, "2": a2, "3": a3, "4": 0, "5": 50, "6": {"id": "6"}, "8": 70},
        albums={"A": [a1, a2, a3], "B": {"id": "9"}, "C": 0},
    )
    trusted = AlbumTrust(checks=0, personal_checks=0)
    got, kept = await _fetch(script, ["1", "2", "4", "5", "6", "7", "8", "3"],
                             {"1": "A", "2": "A", "6": "C", "8": "C", "7": "B", "4": "B",
                              "3": "D"}, trusted)
    assert got == {"1": a1, "2": a2, "3": a3, "4": None, "5": None, "6": {"id": "6"},
                   "7": None, "8": None}
    # album A's third song came along; 5 (50) and 7, 8 (70) refusals are kept, 4's error 0 not
    assert kept == {"1": a1, "2": a2, "3": a3, "9": {"id": "9"}, "5": None, "6": {"id": "6"},
                    "7": None, "8": None}
    assert sorted(script.calls) == sorted([
        ("getAlbum", "A"), ("getAlbum", "B"), ("getAlbum", "C"),  # C fails: getSong decides
        ("getSong", "3"),  # the only wanted song of album D: getSong, not the whole album
        ("getSong", "4"), ("getSong", "5"), ("getSong", "6"), ("getSong", "7"),
        ("getSong", "8")])
    # without album trust (subsonic_song_fetch = "song") every id is one getSong
    script.calls.clear()
    got, _ = await _fetch(script, ["1", "2"], {"1": "A", "2": "A"}, None)
    assert got == {"1": a1, "2": a2} and sorted(script.calls) == [("getSong", "1"),
                                                                  ("getSong", "2")]


@pytest.mark.asyncio
async def test_album_entries_are_served_only_after_they_matched_getsong() -> None:
    plain, mine = {"id": "1"}, {"id": "2", "userRating": 4}
    script = Script(songs={"1": plain, "2": mine}, albums={"A": [plain, mine]})
    trust = AlbumTrust(checks=2, personal_checks=1)
    got, kept = await _fetch(script, ["1", "2"], {"1": "A", "2": "A"}, trust)
    assert got == {"1": plain, "2": mine} and kept == got
    assert ("getSong", "1") in script.calls and not trust.checking  # checked, now trusted
    script.calls.clear()
    got, _ = await _fetch(script, ["1", "2"], {"1": "A", "2": "A"}, trust)
    assert got == {"1": plain, "2": mine} and script.calls == [("getAlbum", "A")]
    # a server whose entries carry no rating: one mismatch and albums are not used again
    script.albums["A"] = [plain, {"id": "2"}]
    trust = AlbumTrust(checks=1, personal_checks=1)
    got, kept = await _fetch(script, ["1", "2"], {"1": "A", "2": "A"}, trust)
    assert got == {"1": plain, "2": mine} and trust.differs and kept == got
    script.calls.clear()
    got, _ = await _fetch(script, ["1", "2"], {"1": "A", "2": "A"}, trust)
    assert got == {"1": plain, "2": mine}
    assert sorted(script.calls) == [("getSong", "1"), ("getSong", "2")]
    # trusted for plain songs only: a personal entry is still checked with getSong
    trust = AlbumTrust(checks=0, personal_checks=1)
    script.albums["A"] = [plain, mine]
    script.calls.clear()
    got, kept = await _fetch(script, ["1", "2"], {"1": "A", "2": "A"}, trust)
    assert got == {"1": plain, "2": mine} and ("getSong", "1") not in script.calls
    assert ("getSong", "2") in script.calls and not trust.checking
