"""Every bad credential × every intercepted endpoint × both protocols, the JSON API and UI.

Subsonic: a real supysonic (users alice and bob) behind musegate in ``hydrate``
visibility, with a "ghost" song analysed in musegate and unknown to supysonic
beside the seed. Jellyfin: the fake (tests/fakes/jellyfin.py) with two
libraries, bob seeing only "Music". A bad credential must get the protocol's
own refusal and no song data; a good one must never see what its server hides
(folder-level isolation for Subsonic is in tests/test_subsonic_visibility.py).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from gateway.app import create_app
from gateway.openapi import build_openapi
from tests import test_jellyfin_gateway as jf
from tests import test_subsonic_gateway as ss
from tests.fakes.jellyfin import FakeJellyfin
from tests.secret_watch import watch_secret
from tests.store_factory import fill_store, make_config
from tests.supysonic_server import Supysonic, generate_library

module_loop = pytest.mark.asyncio(loop_scope="module")

SUBSONIC_ENDPOINTS = ("getSimilarSongs", "getSimilarSongs2", "getSonicSimilarTracks",
                      "findSonicPath")
# name -> (query credentials, headers)
BAD_SUBSONIC: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "none": ({}, {}),
    "wrong password": ({"u": "alice", "p": "not-alices"}, {}),
    "wrong user": ({"u": "mallory", "p": "alicepw"}, {}),
    "wrong enc password": ({"u": "alice", "p": "enc:" + b"nope".hex()}, {}),
    "malformed enc": ({"u": "alice", "p": "enc:zz"}, {}),
    "token without salt": ({"u": "alice", "t": "26719a1196d2a940705a59634eb18eab"}, {}),
    "malformed token": ({"u": "alice", "t": "not hex!", "s": "x"}, {}),
    "user only": ({"u": "alice"}, {}),
    "bogus api key": ({"apiKey": "bogus-api-key"}, {}),
    "malformed basic": ({}, {"Authorization": "Basic !!!not-base64"}),
    "basic wrong password": ({}, {"Authorization": "Basic YWxpY2U6d3Jvbmc="}),  # alice:wrong
}


@dataclass
class SubsonicEnv:
    url: str
    session: aiohttp.ClientSession
    songs: list[dict[str, Any]]
    ghost: str
    server: Supysonic


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subsonic(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SubsonicEnv]:
    tmp = tmp_path_factory.mktemp("authm-ss")
    music = generate_library(tmp / "music", artists=2, albums=1, tracks=3, seconds=1.0)
    async with Supysonic.start(tmp, music, users=ss.USERS) as server, \
            aiohttp.ClientSession() as session:
        songs = await ss._songs(session, server.url)
        config = ss._config(tmp, server.url, auth_cache_seconds=0)
        ghost = "ghost-" + uuid.uuid4().hex
        await ss._write_synthetic(config, songs, [(ghost, {"title": "ghost", "artist": "Artist 0"},
                                                   0)])
        app = create_app(config, adapter=None, refresh_seconds=None)
        async with TestServer(app, host="127.0.0.1") as ts:
            yield SubsonicEnv(str(ts.make_url("")).rstrip("/"), session, songs, ghost, server)


def _subsonic_params(env: SubsonicEnv, endpoint: str) -> dict[str, str]:
    a, b = env.songs[0]["id"], env.songs[-1]["id"]
    if endpoint == "findSonicPath":
        return {"startSongId": a, "endSongId": b, "count": "5"}
    return {"id": a, "count": "5"}


@pytest.mark.parametrize("endpoint", SUBSONIC_ENDPOINTS)
@module_loop
async def test_subsonic_bad_credentials_get_an_error_and_no_data(subsonic: SubsonicEnv,
                                                                 endpoint: str) -> None:
    env = subsonic
    ids = [s["id"] for s in env.songs] + [env.ghost]
    titles = [s["title"] for s in env.songs]
    seen = 0
    for name, (creds, headers) in BAD_SUBSONIC.items():
        for fmt in ("json", "xml", "jsonp"):
            for suffix in ("", ".view"):
                for method in ("GET", "POST"):
                    params = {"v": "1.16.1", "c": "matrix", "f": fmt, "callback": "cb",
                              **creds, **_subsonic_params(env, endpoint)}
                    url = f"{env.url}/rest/{endpoint}{suffix}"
                    kw: dict[str, Any] = ({"params": params} if method == "GET"
                                          else {"data": params})
                    async with env.session.request(method, url, headers=headers, **kw) as resp:
                        text = await resp.text()
                        status = resp.status
                    where = f"{endpoint}{suffix} {method} f={fmt} creds={name}"
                    assert status < 500, where
                    assert 'status="failed"' in text or '"status":"failed"' in text.replace(
                        " ", ""), where
                    code = re.search(r'"code"\s*:\s*(\d+)|code="(\d+)"', text)
                    assert code and int(code.group(1) or code.group(2)) in (10, 40, 41, 42, 43,
                                                                           44, 50), where
                    assert not any(i in text for i in ids), where
                    assert not any(t in text for t in titles), where
                    assert "Traceback" not in text, where
                    seen += 1
    assert seen == len(BAD_SUBSONIC) * 12


@module_loop
async def test_subsonic_good_caller_never_sees_the_ghost(subsonic: SubsonicEnv) -> None:
    """The ghost sits right beside the seed in musegate's index; supysonic does not know it."""
    env = subsonic
    seed = env.songs[0]["id"]
    for user in ss.USERS:
        for endpoint in SUBSONIC_ENDPOINTS:
            params = {**ss.auth(user), "f": "json", **_subsonic_params(env, endpoint)}
            async with env.session.get(f"{env.url}/rest/{endpoint}", params=params) as resp:
                text = await resp.text()
            body = json.loads(text)["subsonic-response"]
            assert body["status"] == "ok", (user, endpoint, body)
            assert env.ghost not in text and "ghost" not in text
    assert seed


# ---------------------------------------------------------------------------- Jellyfin


@dataclass
class JellyfinEnv:
    fake: FakeJellyfin
    url: str
    session: aiohttp.ClientSession
    songs: list[jf.Song]
    tokens: dict[str, str]
    expired: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jellyfin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JellyfinEnv]:
    tmp = tmp_path_factory.mktemp("authm-jf")
    fake = FakeJellyfin()
    songs = jf._populate(fake)
    tokens: dict[str, str] = {}
    for name, libs in (("alice", None), ("bob", ["Music"]), ("gone", None)):
        _uid, tokens[name] = fake.add_user(name, f"{name}pw", libraries=libs)
    watch_secret(*tokens.values())
    expired = tokens.pop("gone")
    del fake.tokens[expired]  # the session was ended on the server: Jellyfin now says 401
    url = await fake.start()
    config = jf._config(tmp, url, auth_cache_seconds=0)
    await jf._write_synthetic(config, songs, set())
    app = create_app(config, adapter=None, refresh_seconds=None)
    try:
        async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
            yield JellyfinEnv(fake, str(ts.make_url("")).rstrip("/"), session, songs, tokens,
                              expired)
    finally:
        await fake.stop()


def _jellyfin_paths(env: JellyfinEnv) -> list[tuple[str, dict[str, str]]]:
    song = next(s for s in env.songs if s.library == "Music")
    kid = next(s for s in env.songs if s.library == "Kids")
    album = env.fake._named("MusicAlbum", song.album)
    artist = env.fake._named("MusicArtist", song.artist)
    assert album is not None and artist is not None
    paths = [(f"/{kind}/{song.id}/InstantMix", {}) for kind in ("Items", "Songs")]
    paths += [(f"/Albums/{album.id}/InstantMix", {}), (f"/Artists/{artist.id}/InstantMix", {}),
              ("/Artists/InstantMix", {"id": artist.id}),
              (f"/Artists/{artist.id}/Similar", {}),
              ("/MusicGenres/Rock/InstantMix", {}), ("/MusicGenres/InstantMix", {"id": "Rock"}),
              (f"/Items/{song.id}/Similar", {}), (f"/Albums/{album.id}/Similar", {}),
              (f"/items/{kid.id}/instantmix", {}),
              ("/AudioMuseAI/similar_tracks", {"item_id": song.id, "n": "5"}),
              ("/AudioMuseAI/find_path", {"start_song_id": song.id, "end_song_id": kid.id}),
              ("/AudioMuseAI/health", {})]
    return paths


def _bad_jellyfin(env: JellyfinEnv) -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    return {
        "none": ({}, {}),
        "wrong token": ({"X-Emby-Token": uuid.uuid4().hex}, {}),
        "expired token": ({"X-Emby-Token": env.expired}, {}),
        "expired in api_key": ({}, {"api_key": env.expired}),
        "malformed authorization": ({"Authorization": 'MediaBrowser Token="'}, {}),
        "empty token": ({"Authorization": 'MediaBrowser Client="x", Token=""'}, {}),
        "basic": ({"Authorization": "Basic YWxpY2U6YWxpY2Vwdw=="}, {}),  # alice:alicepw
        "garbage header": ({"X-Emby-Authorization": 'MediaBrowser ,,=="",Token' * 20}, {}),
    }


@module_loop
async def test_jellyfin_bad_credentials_get_401_and_no_data(jellyfin: JellyfinEnv) -> None:
    env = jellyfin
    ids = [s.id for s in env.songs]
    n = 0
    for path, query in _jellyfin_paths(env):
        for name, (headers, extra) in _bad_jellyfin(env).items():
            async with env.session.get(env.url + path, params={**query, **extra},
                                       headers=headers) as resp:
                body = await resp.read()
                where = f"{path} creds={name}"
                assert resp.status == 401, (where, resp.status)
                assert not any(i.encode() in body for i in ids), where
            n += 1
    assert n == len(_jellyfin_paths(env)) * len(_bad_jellyfin(env))


@module_loop
async def test_jellyfin_bob_never_sees_the_kids_library(jellyfin: JellyfinEnv) -> None:
    env = jellyfin
    kids = {s.id for s in env.songs if s.library == "Kids"}
    headers = {"X-Emby-Token": env.tokens["bob"]}
    answered = 0
    for path, query in _jellyfin_paths(env):
        async with env.session.get(env.url + path, params=query, headers=headers) as resp:
            body = await resp.read()
            assert resp.status in (200, 404), (path, resp.status)
            asked = path + json.dumps(query)  # a refusal may name the id the caller sent
            assert not any(k.encode() in body for k in kids if k not in asked), path
            answered += resp.status == 200
    assert answered >= 8  # most routes did answer bob with data: the check is not vacuous


# ---------------------------------------------------------------------------- JSON API and UI

API_KEY = "matrix-api-key-0123456789"
BAD_API = {
    "none": {},
    "wrong key": {"X-API-Key": "wrong-key-000"},
    "wrong bearer": {"Authorization": "Bearer wrong-key-000"},
    "malformed bearer": {"Authorization": "Bearer"},
    "basic": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "key as cookie": {"Cookie": f"musegate_session={API_KEY}"},
}
OPEN = ("/health", "/ready", "/api/openapi.json", "/openapi.json")


def _fill_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest.mark.asyncio
async def test_json_api_and_ui_refuse_every_bad_key(tmp_path: Path) -> None:
    """Every operation of musegate's own OpenAPI document, with every bad key: 401/403."""
    watch_secret(API_KEY)
    config = make_config(tmp_path, api_key=API_KEY)
    lib = await fill_store(config)
    titles = [f"{s} song" for s in ("Piano", "Techno", "Folk", "Metal", "Jazz")]
    doc = build_openapi(config.base_path)
    app = create_app(config, adapter=None, refresh_seconds=None)
    checked = 0
    async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
        for path, ops in doc["paths"].items():
            if path.endswith(OPEN) or not path.startswith(config.base_path):
                continue
            for method in ops:
                if method not in ("get", "post", "put", "delete", "patch"):
                    continue
                for name, headers in BAD_API.items():
                    url = str(ts.make_url(_fill_path(path)))
                    async with session.request(method.upper(), url, headers=headers,
                                               json={} if method != "get" else None) as resp:
                        body = await resp.text()
                    where = f"{method.upper()} {path} {name}"
                    if resp.status in (401, 403):
                        assert not any(t in body for t in titles), where
                        checked += 1
                        continue
                    # open by design: the UI's login page and its session/login endpoints
                    page = path in (config.base_path, config.base_path + "/") or \
                        path.startswith(config.base_path + "/static/")
                    assert page or path.endswith(("/login", "/session", "/logout")), \
                        (where, resp.status)
                    assert resp.status < 500 and not any(t in body for t in titles), where
                    assert str(lib.ids) not in body
        # and the good key does see data (the matrix above is not vacuous)
        async with session.get(str(ts.make_url(f"{config.base_path}/api/tracks?q=song")),
                               headers={"X-API-Key": API_KEY}) as resp:
            text = await resp.text()
            assert resp.status == 200 and any(t in text for t in titles)
    assert checked > 50
