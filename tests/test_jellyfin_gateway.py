"""The Jellyfin gateway in front of the fake Jellyfin, driven by a real client and raw HTTP.

The fake (tests/fakes/jellyfin.py) serves two libraries: "Music" (four
artists, two genres) and "Kids" (one artist whose songs sound like Music's
Artist 0). Synthetic analyses are keyed by the fake's own item ids (one
embedding cluster per artist), plus a "ghost" (analysed, unknown to Jellyfin)
and one Music song left unanalysed. musegate runs in front of the fake
(create_app with source "jellyfin") and is called with jellyfin-apiclient-python
(``Authorization: MediaBrowser … Token="…"``) and raw aiohttp for every other
auth form, route spelling and the pass-through (Range, HEAD, redirects, HLS,
the ``/socket`` websocket).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer
from jellyfin_apiclient_python import JellyfinClient

from analysis.store import LibraryStore, TrackRecord
from gateway.app import create_app
from gateway.jellyfin import GATEWAY, blend, normalise_id
from gateway.jellyfin_auth import (
    JellyfinCredentials,
    authorization_parts,
    header_parts,
)
from musegate.config import Config, load_config
from musegate.library import analyzer_settings
from tests.fakes.jellyfin import FakeJellyfin
from tests.store_factory import synthetic_analysis

module_loop = pytest.mark.asyncio(loop_scope="module")


# ---------------------------------------------------------------------------- unit: auth parsing


def test_header_parts_like_jellyfin() -> None:
    parts = header_parts('Client="Jellyfin Web", Device="Firefox, 128", DeviceId="a%3Db+c", '
                         'Version="10.9.1", Token="t0k"')
    assert parts == {"Client": "Jellyfin Web", "Device": "Firefox, 128", "DeviceId": "a=b c",
                     "Version": "10.9.1", "Token": "t0k"}
    # unquoted values, an empty value skipped, a later key wins, keys are case-sensitive
    assert header_parts("Token=abc, Client=,Token=def") == {"Token": "def"}
    assert header_parts('token="x"') == {"token": "x"}


def test_authorization_schemes() -> None:
    assert authorization_parts('MediaBrowser Token="a"') == {"Token": "a"}
    assert authorization_parts('emby Token="a"') == {"Token": "a"}
    assert authorization_parts("Basic dXNlcjpwdw==") is None
    assert authorization_parts("Bearer abc") is None
    assert authorization_parts("MediaBrowser") is None
    assert authorization_parts(None) is None


def test_token_precedence_is_jellyfins() -> None:
    def token(headers: dict[str, str], query: dict[str, str] | None = None) -> str | None:
        return JellyfinCredentials.of(headers, query or {}).token

    mb = 'MediaBrowser Client="c", Token="{}"'
    assert token({"X-Emby-Authorization": mb.format("a"), "Authorization": mb.format("b")}) == "a"
    assert token({"X-Emby-Authorization": "", "Authorization": mb.format("b")}) == "b"
    assert token({"Authorization": mb.format("a"), "X-Emby-Token": "b"}) == "a"
    assert token({"Authorization": 'MediaBrowser Client="c"', "X-Emby-Token": "b"}) == "b"
    assert token({"X-Emby-Token": "b", "X-MediaBrowser-Token": "c"}, {"ApiKey": "d"}) == "b"
    assert token({"X-MediaBrowser-Token": "c"}, {"api_key": "e"}) == "c"
    assert token({}, {"ApiKey": "d", "api_key": "e"}) == "d"
    assert token({}, {"APIKEY": "d"}) == "d" and token({}, {"Api_Key": "e"}) == "e"
    assert token({"Authorization": "Basic eDp5"}) is None
    assert token({"X-Emby-Token": "  "}) is None
    creds = JellyfinCredentials.of({"Authorization": mb.format("a")}, {})
    assert (creds.client, creds.from_query) == ("c", False)


def test_credentials_hash_and_relay_never_leak() -> None:
    creds = JellyfinCredentials.of({"X-Emby-Token": "secret-token"}, {})
    key = creds.cache_key()
    assert key and re.fullmatch(r"[0-9a-f]{64}", key) and "secret" not in key
    assert key == JellyfinCredentials.of({}, {"api_key": "secret-token"}).cache_key()
    assert "secret-token" not in repr(creds)
    assert creds.upstream_headers() == {"X-Emby-Token": "secret-token"}
    # a token from the query string travels as a header, never in a URL
    assert JellyfinCredentials.of({}, {"ApiKey": "q"}).upstream_headers() == {"X-Emby-Token": "q"}
    assert JellyfinCredentials.of({}, {}).cache_key() is None


def test_normalise_id() -> None:
    guid = uuid.uuid4()
    assert normalise_id(str(guid).upper()) == guid.hex


# ---------------------------------------------------------------------------- environment


@dataclass
class Song:
    id: str
    title: str
    artist: str
    album: str
    genre: str
    library: str
    data: bytes


@dataclass
class Env:
    fake: FakeJellyfin
    app: web.Application
    url: str  # musegate
    session: aiohttp.ClientSession
    songs: list[Song]
    tokens: dict[str, str]
    users: dict[str, str]
    api_key: str
    unanalysed: str
    ghost: str
    by_artist: dict[str, list[str]] = field(default_factory=dict)

    def artist_of(self, item_id: str) -> str | None:
        return next((s.artist for s in self.songs if s.id == item_id), None)

    def library_of(self, item_id: str) -> str | None:
        return next((s.library for s in self.songs if s.id == item_id), None)

    def auth(self, user: str = "alice") -> dict[str, str]:
        return {"Authorization": f'MediaBrowser Client="pytest", Device="pytest", '
                                 f'DeviceId="dev-{user}", Version="1.0", Token="{self.tokens[user]}"'}

    async def get(self, path: str, user: str | None = "alice", base: str | None = None,
                  headers: dict[str, str] | None = None, **params: Any
                  ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        hdrs = {**(self.auth(user) if user else {}), **(headers or {})}
        async with self.session.get((base or self.url) + path, params=params or None,
                                    headers=hdrs, allow_redirects=False) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw) if raw else raw
            except ValueError:
                body = raw
            return resp.status, body, resp.headers

    async def mix(self, path: str, user: str | None = "alice", **params: Any) -> list[str]:
        status, body, _ = await self.get(path, user, **params)
        assert status == 200, (status, body)
        return [i["Id"] for i in body["Items"]]


LIBRARY = [  # (library, artist, genre): artist k of "Music" gets its own embedding cluster
    ("Music", "Artist 0", "Rock"), ("Music", "Artist 1", "Rock"),
    ("Music", "Artist 2", "Jazz"), ("Music", "Artist 3", "Jazz"),
    ("Kids", "Kid Artist", "Rock"),
]


def _populate(fake: FakeJellyfin) -> list[Song]:
    rng = np.random.default_rng(3)
    fake.add_library("Music")
    fake.add_library("Kids")
    songs = []
    for library, artist, genre in LIBRARY:
        for album in range(2 if library == "Music" else 1):
            for n in range(4 if library == "Music" else 6):
                title = f"{artist} song {album}-{n}"
                data = rng.integers(0, 256, 40_000 + n, dtype=np.uint8).tobytes()
                name = f"{artist} album {album}"
                sid = fake.add_song(library, title, artist, name, genre,
                                    f"/media/{library}/{artist}/{name}/{n}.flac", 30.0 + n, data)
                songs.append(Song(sid, title, artist, name, genre, library, data))
    return songs


def _config(tmp: Path, upstream: str, **extra: Any) -> Config:
    return load_config(None, env={}, overrides={
        "data_dir": str(tmp / "data"), "source": "jellyfin", "upstream_url": upstream,
        "max_per_artist": 0, "auth_cache_seconds": 60, "workers": 1, **extra,
    })


CLUSTER = {"Artist 0": 0, "Artist 1": 1, "Artist 2": 2, "Artist 3": 3, "Kid Artist": 0}


async def _write_synthetic(config: Config, songs: list[Song], skip: set[str],
                           ghost: str | None = None) -> None:
    """One embedding cluster per artist (the Kids artist shares Artist 0's)."""
    rng = np.random.default_rng(7)
    version = analyzer_settings(config).version
    centres = rng.standard_normal((4, 200))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    source = f"jellyfin:{config.upstream_url}"
    records = [TrackRecord(source=source, upstream_id=s.id, title=s.title, artist=s.artist,
                           album=s.album, duration=30.0, raw={"Id": s.id, "Name": s.title})
               for s in songs if s.id not in skip]
    cluster = {s.id: CLUSTER[s.artist] for s in songs}
    if ghost:
        records.append(TrackRecord(source=source, upstream_id=ghost, title="ghost",
                                   artist="Artist 0", duration=1.0))
        cluster[ghost] = 0
    store = await LibraryStore.open(config.db_path)
    try:
        await store.sync_source(source, records)
        known = await store.tracks_of_source(source)
        analyses = []
        for uid, track in known.items():
            # loose clusters: no two songs count as duplicates (cosine < 0.995)
            emb = centres[cluster[uid]] + rng.standard_normal(200) * (0.5 / np.sqrt(200))
            analyses.append((track.id, synthetic_analysis(emb, version)))
        await store.write_results(analyses)
    finally:
        await store.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("jf")
    fake = FakeJellyfin()
    songs = _populate(fake)
    users, tokens = {}, {}
    for name, libs, admin in (("admin", None, True), ("alice", None, False),
                              ("bob", ["Music"], False)):
        users[name], tokens[name] = fake.add_user(name, f"{name}pw", libraries=libs, admin=admin)
    api_key = fake.add_api_key("pytest")
    url = await fake.start()
    unanalysed = next(s.id for s in songs if s.artist == "Artist 3")
    ghost = uuid.uuid4().hex
    config = _config(tmp, url)
    await _write_synthetic(config, songs, {unanalysed}, ghost)
    app = create_app(config, adapter=None, refresh_seconds=None)
    try:
        async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
            e = Env(fake, app, str(ts.make_url("")).rstrip("/"), session, songs, tokens, users,
                    api_key, unanalysed, ghost)
            for s in songs:
                if s.id != unanalysed:
                    e.by_artist.setdefault(s.artist, []).append(s.id)
            yield e
    finally:
        await fake.stop()


def _client(env: Env, user: str = "alice") -> JellyfinClient:
    client = JellyfinClient()
    client.config.app("pytest", "1.0.0", "pytest-device", f"pytest-{user}")
    client.config.data["auth.ssl"] = False
    client.config.data["http.user_agent"] = "pytest"
    client.config.data["auth.server"] = env.url
    client.config.data["auth.user_id"] = env.users[user]
    client.config.data["auth.token"] = env.tokens[user]
    return client


def _hydration_calls(env: Env, since: int) -> list[Any]:
    return [r for r in env.fake.requests[since:]
            if r.path.lower() == "/items" and any(k.lower() == "ids" for k in r.query)]


# ---------------------------------------------------------------------------- instant mix


@module_loop
async def test_song_mix_through_apiclient(env: Env) -> None:
    seed = env.by_artist["Artist 1"][0]
    client = _client(env)
    since = len(env.fake.requests)
    body = await asyncio.to_thread(client.jellyfin.get_instant_mix, seed, 10, "Genres,Path")
    ids = [i["Id"] for i in body["Items"]]
    assert ids[0] == seed and len(ids) == 10 and len(set(ids)) == 10
    assert body["TotalRecordCount"] == 10 and body["StartIndex"] == 0
    # the seed, then its sonic neighbours: Artist 1's other 7 songs first
    assert [env.artist_of(i) for i in ids[:8]] == ["Artist 1"] * 8
    # exactly the BaseItemDto the fake itself returns for this caller and these fields
    hydrate = _hydration_calls(env, since)
    # The client library may retry a slow request on a busy machine, which repeats the
    # same calls: count each distinct one once, in the order they were made.
    rounds = list(dict.fromkeys(tuple(",".join(r.query.getall("Ids")).split(","))
                                for r in hydrate))
    # One Ids call for the 10 best, and another only for as many as Jellyfin withheld
    # from it: here only the ghost, which lands among the 10 best in some runs (the
    # fake's song ids, and so which song gets which synthetic embedding, are random).
    assert rounds and len(rounds[0]) == 10
    asked = [i for r in rounds for i in r]
    assert len(asked) == len(set(asked)), "no id is asked for twice"
    withheld = sum(1 for i in rounds[0] if i == env.ghost)
    assert sum(len(r) for r in rounds[1:]) == withheld, rounds
    status, direct, _ = await env.get("/Items", base=env.fake.url, Ids=seed, Fields="Genres,Path",
                                      userId=env.users["alice"])
    assert status == 200 and body["Items"][0] == direct["Items"][0]
    assert "Genres" in body["Items"][0]


@pytest.mark.parametrize("template", [
    "/Items/{id}/InstantMix", "/Songs/{id}/InstantMix", "/items/{id}/instantmix",
    "/SONGS/{id}/INSTANTMIX", "/Items/{dashed}/InstantMix",
])
@module_loop
async def test_song_route_spellings(env: Env, template: str) -> None:
    seed = env.by_artist["Artist 2"][1]
    path = template.format(id=seed, dashed=str(uuid.UUID(seed)))
    status, body, _ = await env.get(path, LIMIT="5", userid=env.users["alice"])
    assert status == 200
    ids = [i["Id"] for i in body["Items"]]
    assert ids[0] == seed and [env.artist_of(i) for i in ids] == ["Artist 2"] * 5


@module_loop
async def test_collection_seeds_blend(env: Env) -> None:
    album = next(s.album for s in env.songs if s.artist == "Artist 3")
    album_id = next(i["Id"] for i in (await env.get("/Items", base=env.fake.url, user="admin",
                                                    IncludeItemTypes="MusicAlbum",
                                                    Recursive="true"))[1]["Items"]
                    if i["Name"] == album)
    artists = (await env.get("/Artists", base=env.fake.url, user="admin"))[1]["Items"]
    artist_id = next(a["Id"] for a in artists if a["Name"] == "Artist 2")
    genres = (await env.get("/MusicGenres", base=env.fake.url, user="admin"))[1]["Items"]
    jazz = next(g["Id"] for g in genres if g["Name"] == "Jazz")

    for path in (f"/Albums/{album_id}/InstantMix", f"/Items/{album_id}/InstantMix"):
        ids = await env.mix(path, limit=6)
        assert len(ids) == 6 and {env.artist_of(i) for i in ids} == {"Artist 3"}
    for path, params in ((f"/Artists/{artist_id}/InstantMix", {}),
                         ("/Artists/InstantMix", {"id": artist_id}),
                         ("/artists/instantmix", {"ID": artist_id})):
        ids = await env.mix(path, limit=5, **params)
        assert len(ids) == 5 and {env.artist_of(i) for i in ids} == {"Artist 2"}
    for path, params in (("/MusicGenres/Jazz/InstantMix", {}),
                         ("/MusicGenres/InstantMix", {"id": jazz})):
        ids = await env.mix(path, limit=12, **params)
        # a blend: both Jazz artists' songs, interleaved, none of Rock's
        assert {env.artist_of(i) for i in ids} == {"Artist 2", "Artist 3"}
        assert {env.artist_of(i) for i in ids[:2]} == {"Artist 2", "Artist 3"}


@module_loop
async def test_playlist_seed(env: Env) -> None:
    members = [env.by_artist["Artist 0"][0], env.by_artist["Artist 3"][0]]
    async with env.session.post(env.url + "/Playlists", headers=env.auth("alice"), json={
        "Name": "mix seed", "Ids": members, "UserId": env.users["alice"], "MediaType": "Audio",
    }) as resp:
        assert resp.status == 200
        playlist = (await resp.json())["Id"]
    ids = await env.mix(f"/Playlists/{playlist}/InstantMix", limit=8)
    assert {env.artist_of(i) for i in ids} <= {"Artist 0", "Artist 3", "Kid Artist"}
    assert {env.artist_of(i) for i in ids[:2]} >= {"Artist 3"}
    # a song id is not a playlist: Jellyfin's own answer (the real one 404s)
    since = len(env.fake.requests)
    await env.get(f"/Playlists/{members[0]}/InstantMix")
    assert any(r.path == f"/Playlists/{members[0]}/InstantMix"
               for r in env.fake.requests[since:])
    # another user's playlist is not theirs to see: Jellyfin's own answer
    status, _, _ = await env.get(f"/Playlists/{playlist}/InstantMix", user="bob")
    assert status in (403, 404)


@module_loop
async def test_top_up_from_jellyfins_own_mix(env: Env) -> None:
    seed = env.by_artist["Artist 3"][0]
    ids = await env.mix(f"/Items/{seed}/InstantMix", limit=200)
    analysed = {i for ids_ in env.by_artist.values() for i in ids_}
    assert ids[0] == seed and len(ids) == len(set(ids))
    # every analysed song alice can see, then Jellyfin's own mix (Jazz) adds the unanalysed one
    assert set(ids) == analysed | {env.unanalysed}
    assert ids[-1] == env.unanalysed and env.ghost not in ids
    # default limit: Jellyfin's 200
    assert len(await env.mix(f"/Items/{seed}/InstantMix")) == len(ids)


@module_loop
async def test_user_isolation(env: Env) -> None:
    seed = env.by_artist["Artist 0"][0]
    alice = await env.mix(f"/Items/{seed}/InstantMix", limit=14)
    bob = await env.mix(f"/Items/{seed}/InstantMix", user="bob", limit=14)
    assert {env.library_of(i) for i in alice} == {"Music", "Kids"}  # Kid Artist sounds alike
    assert {env.library_of(i) for i in bob} == {"Music"} and len(bob) == 14
    for path in ("/MusicGenres/Rock/InstantMix", f"/Items/{seed}/Similar"):
        assert "Kids" not in {env.library_of(i) for i in await env.mix(path, user="bob")}
    # a seed bob cannot see: Jellyfin's own 404, no data
    kid = env.by_artist["Kid Artist"][0]
    status, body, _ = await env.get(f"/Items/{kid}/InstantMix", user="bob")
    assert status == 404 and not (isinstance(body, dict) and body.get("Items"))
    # an API key acting for bob (userId) sees what bob sees
    status, body, _ = await env.get(f"/Items/{seed}/InstantMix", user=None,
                                    headers={"X-Emby-Token": env.api_key},
                                    userId=env.users["bob"], limit=14)
    assert status == 200 and {env.library_of(i["Id"]) for i in body["Items"]} == {"Music"}
    # bob may not act for alice: Jellyfin's refusal
    status, _, _ = await env.get(f"/Items/{seed}/InstantMix", user="bob", userId=env.users["alice"])
    assert status == 403


@pytest.mark.parametrize("form", ["authorization", "emby-scheme", "x-emby-authorization",
                                  "x-emby-token", "x-mediabrowser-token", "api_key", "ApiKey",
                                  "apikey-lowercase"])
@module_loop
async def test_every_auth_form(env: Env, form: str) -> None:
    token = env.tokens["alice"]
    headers: dict[str, str] = {}
    params: dict[str, str] = {"limit": "3"}
    if form == "authorization":
        headers = env.auth("alice")
    elif form == "emby-scheme":
        headers = {"Authorization": f'Emby Client="x", Token="{token}"'}
    elif form == "x-emby-authorization":
        headers = {"X-Emby-Authorization": f'MediaBrowser Client="x", Token="{token}"',
                   "Authorization": "Basic eDp5"}
    elif form == "x-emby-token":
        headers = {"X-Emby-Token": token}
    elif form == "x-mediabrowser-token":
        headers = {"X-MediaBrowser-Token": token}
    else:
        params[{"api_key": "api_key", "ApiKey": "ApiKey", "apikey-lowercase": "apikey"}[form]] = token
    seed = env.by_artist["Artist 1"][2]
    status, body, _ = await env.get(f"/Items/{seed}/InstantMix", user=None, headers=headers,
                                    **params)
    assert status == 200 and body["Items"][0]["Id"] == seed
    # musegate never puts a token in a URL it builds
    assert all(token not in str(r.query) for r in env.fake.requests[-3:] if r.path == "/Items")


@module_loop
async def test_bad_or_missing_token_gets_jellyfins_401(env: Env) -> None:
    seed = env.by_artist["Artist 1"][0]
    paths = [f"/Items/{seed}/InstantMix", "/MusicGenres/Rock/InstantMix",
             f"/Items/{seed}/Similar", "/AudioMuseAI/similar_tracks", "/AudioMuseAI/health"]
    for headers in ({"X-Emby-Token": "not-a-token"}, {}, {"Authorization": "Basic eDp5"}):
        for path in paths:
            since = len(env.fake.requests)
            status, body, _ = await env.get(path, user=None, headers=headers, item_id=seed)
            direct, dbody, _ = await env.get("/System/Info", base=env.fake.url, user=None,
                                             headers=headers)
            assert status == direct == 401 and body == dbody == b""
            asked = [r.path for r in env.fake.requests[since:]]
            assert asked == ["/System/Info", "/System/Info"]  # nothing else was asked


@module_loop
async def test_auth_cache_is_a_hash_and_saves_calls(env: Env) -> None:
    seed = env.by_artist["Artist 0"][1]
    headers = {"X-Emby-Token": env.tokens["admin"]}
    await env.get(f"/Items/{seed}/InstantMix", user=None, headers=headers, limit=2)
    since = len(env.fake.requests)
    for _ in range(3):
        await env.get(f"/Items/{seed}/InstantMix", user=None, headers=headers, limit=2)
    assert not [r for r in env.fake.requests[since:] if r.path == "/System/Info"]
    gw = env.app[GATEWAY]
    stored = gw.cache.keys()
    assert stored and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in stored)
    dump = repr(vars(gw.cache)) + repr(vars(gw))
    assert all(t not in dump for t in env.tokens.values())


@module_loop
async def test_unknown_and_unanalysed_seeds_get_jellyfins_answer(env: Env) -> None:
    for seed, expected in ((env.unanalysed, 200), (uuid.uuid4().hex, 404), ("not-a-guid", 404)):
        since = len(env.fake.requests)
        status, body, _ = await env.get(f"/Items/{seed}/InstantMix", limit=5)
        assert status == expected
        assert any(r.path.endswith("/InstantMix") for r in env.fake.requests[since:])
        if expected == 200:
            assert len(body["Items"]) == 5  # the fake's native genre mix
    status, _, _ = await env.get("/Artists/InstantMix")  # id missing: Jellyfin's 400
    assert status == 400
    # a malformed limit: whatever Jellyfin says about it, relayed
    path = f"/Items/{env.by_artist['Artist 0'][0]}/InstantMix"
    ours, _, _ = await env.get(path, limit="x")
    theirs, _, _ = await env.get(path, base=env.fake.url, limit="x")
    assert ours == theirs != 200


@module_loop
async def test_camel_case_profile_envelope(env: Env) -> None:
    seed = env.by_artist["Artist 0"][2]
    status, body, _ = await env.get(f"/Items/{seed}/InstantMix", limit=3, headers={
        "Accept": 'application/json; profile="CamelCase"'})
    assert status == 200 and set(body) == {"items", "totalRecordCount", "startIndex"}
    assert body["totalRecordCount"] == 3


@module_loop
async def test_similar(env: Env) -> None:
    seed = env.by_artist["Artist 2"][0]
    ids = await env.mix(f"/Items/{seed}/Similar", limit=6)
    assert seed not in ids and len(ids) == 6
    assert {env.artist_of(i) for i in ids} == {"Artist 2"}
    ids = await env.mix(f"/items/{seed}/similar", limit=40)
    assert seed not in ids and len(ids) == len(set(ids))
    # excludeArtistIds drops an artist's songs
    artists = (await env.get("/Artists", base=env.fake.url, user="admin"))[1]["Items"]
    a2 = next(a["Id"] for a in artists if a["Name"] == "Artist 2")
    ids = await env.mix(f"/Items/{seed}/Similar", limit=6, excludeArtistIds=a2)
    assert "Artist 2" not in {env.artist_of(i) for i in ids}
    # an album id: Jellyfin's own similar albums, passed through
    album = next(i["Id"] for i in (await env.get("/Items", base=env.fake.url, user="admin",
                                                 IncludeItemTypes="MusicAlbum",
                                                 Recursive="true"))[1]["Items"])
    status, body, _ = await env.get(f"/Albums/{album}/Similar")
    assert status == 200 and all(i["Type"] == "MusicAlbum" for i in body["Items"])


@module_loop
async def test_audiomuseai_plugin_endpoints(env: Env) -> None:
    seed = env.by_artist["Artist 0"][0]
    status, body, _ = await env.get("/AudioMuseAI/similar_tracks", item_id=seed, n=5)
    assert status == 200 and len(body) == 5
    assert set(body[0]) >= {"item_id", "title", "author", "album", "distance"}
    status, lower, _ = await env.get("/audiomuseai/SIMILAR_TRACKS", ITEM_ID=seed, N=5)
    assert status == 200 and lower == body
    # bob never gets the Kids library's songs
    status, bobs, _ = await env.get("/AudioMuseAI/similar_tracks", user="bob", item_id=seed, n=12)
    assert status == 200 and len(bobs) == 12
    assert {env.library_of(t["item_id"]) for t in bobs} == {"Music"}
    kid = env.by_artist["Kid Artist"][0]
    status, _, _ = await env.get("/AudioMuseAI/similar_tracks", user="bob", item_id=kid)
    assert status == 404
    start, end = env.by_artist["Artist 0"][0], env.by_artist["Artist 3"][0]
    status, path, _ = await env.get("/AudioMuseAI/find_path", start_song_id=start,
                                    end_song_id=end, max_steps=6)
    assert status == 200 and path["path"][0]["item_id"] == start
    assert path["path"][-1]["item_id"] == end
    status, path, _ = await env.get("/AudioMuseAI/find_path", user="bob", start_song_id=start,
                                    end_song_id=end, max_steps=10)
    assert status == 200 and {env.library_of(t["item_id"]) for t in path["path"]} == {"Music"}
    status, _, _ = await env.get("/AudioMuseAI/health")
    assert status == 200


# ---------------------------------------------------------------------------- pass-through


@module_loop
async def test_range_head_and_download_are_untouched(env: Env) -> None:
    song = env.songs[3]
    for path in (f"/Audio/{song.id}/stream", f"/Audio/{song.id}/stream.flac",
                 f"/Audio/{song.id}/universal", f"/Items/{song.id}/Download"):
        for rng in ("bytes=100-1099", "bytes=-500", "bytes=39000-"):
            got = []
            for base in (env.url, env.fake.url):
                async with env.session.get(base + path, headers={**env.auth(), "Range": rng},
                                           params={"static": "true"}) as resp:
                    got.append((resp.status, resp.headers.get("Content-Range"), await resp.read()))
            assert got[0] == got[1] and got[0][0] == 206
        async with env.session.get(env.url + path, headers={**env.auth()}) as resp:
            assert resp.status == 200 and await resp.read() == song.data
        async with env.session.head(env.url + path, headers=env.auth()) as resp:
            assert resp.status == 200 and int(resp.headers["Content-Length"]) == len(song.data)
        async with env.session.get(env.url + path, headers={**env.auth(),
                                                            "Range": "bytes=999999-"}) as resp:
            assert resp.status == 416
    # bob cannot download a Kids song through musegate either
    kid = env.by_artist["Kid Artist"][0]
    async with env.session.get(env.url + f"/Items/{kid}/Download", headers=env.auth("bob")) as r:
        assert r.status == 404


@module_loop
async def test_redirect_image_hls_and_items_pass_through(env: Env) -> None:
    status, _, headers = await env.get("/web", user=None)
    assert status == 302 and headers["Location"].endswith("/web/")
    song = env.songs[0].id
    status, png, headers = await env.get(f"/Items/{song}/Images/Primary", user=None)
    assert status == 200 and png.startswith(b"\x89PNG")
    status, m3u8, _ = await env.get(f"/Audio/{song}/main.m3u8")
    assert status == 200 and b"#EXTM3U" in m3u8
    ours = await env.get("/Items", IncludeItemTypes="Audio", Recursive="true", Limit="5")
    theirs = await env.get("/Items", base=env.fake.url, IncludeItemTypes="Audio",
                           Recursive="true", Limit="5")
    assert ours[:2] == theirs[:2]


@module_loop
async def test_websocket_relay_both_ways(env: Env) -> None:
    url = env.url.replace("http", "ws", 1) + "/socket"
    async with env.session.ws_connect(url, params={"api_key": env.tokens["alice"],
                                                   "deviceId": "ws-test"}) as ws:
        first = json.loads((await ws.receive(timeout=5)).data)
        assert first["MessageType"] == "ForceKeepAlive"
        await ws.send_str(json.dumps({"MessageType": "KeepAlive"}))
        assert json.loads((await ws.receive(timeout=5)).data)["MessageType"] == "KeepAlive"
        await ws.send_str(json.dumps({"MessageType": "Echo", "Data": "é" * 1000}))
        echoed = json.loads((await ws.receive(timeout=5)).data)
        assert echoed["Data"] == "é" * 1000
        await env.fake.broadcast({"MessageType": "LibraryChanged", "Data": {}})
        assert json.loads((await ws.receive(timeout=5)).data)["MessageType"] == "LibraryChanged"
    # a bad token: Jellyfin's refusal reaches the caller
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        async with env.session.ws_connect(url, params={"api_key": "bad"}):
            pass
    assert info.value.status == 401


# ---------------------------------------------------------------------------- own servers


async def _own(tmp: Path, fake: FakeJellyfin, upstream: str) -> tuple[web.Application, list[Song]]:
    songs = _populate(fake)
    return create_app(_config(tmp, upstream), adapter=None, refresh_seconds=None), songs


@pytest.mark.asyncio
async def test_upstream_down_and_back(tmp_path: Path) -> None:
    fake = FakeJellyfin()
    songs = _populate(fake)
    _uid, token = fake.add_user("alice", "pw")
    url = await fake.start()
    config = _config(tmp_path, url)
    await _write_synthetic(config, songs, set())
    seed = songs[0].id
    headers = {"X-Emby-Token": token}
    app = create_app(config, adapter=None, refresh_seconds=None)
    async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
        mix = str(ts.make_url(f"/Items/{seed}/InstantMix"))
        async with session.get(mix, headers=headers, params={"limit": "3"}) as resp:
            assert resp.status == 200
        await fake.stop()
        for path in (mix, str(ts.make_url(f"/Audio/{seed}/stream"))):
            async with session.get(path, headers=headers) as resp:
                assert resp.status == 502
        await fake.start()
        try:
            async with session.get(mix, headers=headers, params={"limit": "3"}) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["Items"][0]["Id"] == seed
        finally:
            await fake.stop()


@pytest.mark.parametrize("where", ["upstream_url", "client"])
@pytest.mark.asyncio
async def test_jellyfin_under_a_base_url(tmp_path: Path, where: str) -> None:
    """BaseUrl /jellyfin: in musegate's upstream_url, or in the clients' own paths."""
    fake = FakeJellyfin(base_url="/jellyfin")
    songs = _populate(fake)
    _uid, token = fake.add_user("alice", "pw")
    url = await fake.start()
    upstream = url if where == "upstream_url" else url.removesuffix("/jellyfin")
    prefix = "" if where == "upstream_url" else "/jellyfin"
    config = _config(tmp_path, upstream)
    await _write_synthetic(config, songs, set())
    seed = songs[5].id
    headers = {"X-Emby-Token": token}
    app = create_app(config, adapter=None, refresh_seconds=None)
    try:
        async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
            base = str(ts.make_url("")).rstrip("/") + prefix
            async with session.get(f"{base}/Songs/{seed}/InstantMix", headers=headers,
                                   params={"limit": "4"}) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["Items"][0]["Id"] == seed
            assert {r.path for r in fake.requests} >= {"/jellyfin/System/Info", "/jellyfin/Items"}
            async with session.get(f"{base}/Audio/{seed}/stream", headers={
                    **headers, "Range": "bytes=0-9"}) as resp:
                assert resp.status == 206 and await resp.read() == songs[5].data[:10]
            async with session.get(f"{base}/AudioMuseAI/similar_tracks", headers=headers,
                                   params={"item_id": seed, "n": "3"}) as resp:
                assert resp.status == 200 and len(await resp.json()) == 3
    finally:
        await fake.stop()


# ---------------------------------------------------------------------------- pure


def test_blend_interleaves_seeds() -> None:
    from index.catalogue import Catalogue, CatalogueRow
    from index.faiss_index import SimilarityIndex

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 200))
    rows = []
    for i in range(30):
        vec = centres[i % 3] + rng.standard_normal(200) * 0.05
        rows.append(CatalogueRow(track_id=i + 1, embedding=vec.astype(np.float32),
                                 features={}, title=f"t{i}", artist=f"a{i % 3}", album=None,
                                 duration=1.0))
    cat = Catalogue.from_rows(rows)
    index = SimilarityIndex.build(cat.ids, cat.vectors, 10_000)
    out = blend(cat, index, [1, 2], 6, 0)  # seeds from clusters 0 and 1
    assert len(out) == 6 and len(set(out)) == 6
    assert [(t - 1) % 3 for t in out[:2]] in ([0, 1], [1, 0])
    assert {(t - 1) % 3 for t in out} == {0, 1}
