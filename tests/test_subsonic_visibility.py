"""``subsonic_visibility = "folders"``: answers filtered by the caller's music folders.

A real supysonic on loopback serves TWO music folders ("east": Artist 0 and 1,
"west": Artist 2 and 3). supysonic gives every user every folder, so exclusion
cannot be seen against it alone: musegate is pointed at a tiny aiohttp stub
(``FolderFilter``, in this file) that forwards every request to supysonic
unchanged except ``getMusicFolders``, which it answers with only "east" for
bob and refuses (error 50) for carol. alice (the service account) sees both.
The library is listed by the real SubsonicAdapter through that stub, so the
music folder each song records is the one the scan found it in.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from adapters.subsonic import FOLDER_KEY, PER_USER_FIELDS, SubsonicAdapter
from analysis.store import LibraryStore, TrackRecord
from gateway.app import create_app
from gateway.subsonic import GATEWAY
from gateway.subsonic_auth import Credentials, FolderCache
from musegate.config import Config, load_config
from musegate.library import analyzer_settings
from tests.store_factory import synthetic_analysis
from tests.supysonic_server import Supysonic, generate_library

module_loop = pytest.mark.asyncio(loop_scope="module")

USERS = {"alice": "alicepw", "bob": "bobpw", "carol": "carolpw"}
EAST_ARTISTS = {"Artist 0", "Artist 1"}
WEST_ARTISTS = {"Artist 2", "Artist 3"}


def auth(user: str = "alice", **extra: Any) -> dict[str, Any]:
    return {"u": user, "p": USERS[user], "v": "1.16.1", "c": "test", "f": "json", **extra}


# ---------------------------------------------------------------------------- the stub


class FolderFilter:
    """Forwards /rest/* to supysonic; narrows or refuses ``getMusicFolders`` per user."""

    def __init__(self, upstream: str, allowed: Mapping[str, set[str]], refused: set[str]) -> None:
        self.upstream = upstream
        self.allowed = allowed  # user -> folder names their getMusicFolders lists
        self.refused = refused
        self.folder_calls: Counter[str] = Counter()
        self.session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.Response:
        name = request.match_info["name"].removesuffix(".view")
        body = await request.read()
        form = dict(parse_qsl(body.decode(errors="replace"))) if body else {}
        user = request.query.get("u") or form.get("u", "")
        if name == "getMusicFolders":
            self.folder_calls[user] += 1
            if user in self.refused:
                return web.json_response({"subsonic-response": {
                    "status": "failed", "version": "1.12.0",
                    "error": {"code": 50, "message": "not authorized"}}})
        assert self.session is not None
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization")}
        async with self.session.request(
            request.method, f"{self.upstream}/rest/{request.match_info['name']}",
            params=request.query, data=body or None, headers=headers,
        ) as resp:
            data, status = await resp.read(), resp.status
            ctype = resp.headers.get("Content-Type", "application/octet-stream")
        if name == "getMusicFolders" and user in self.allowed and "json" in ctype:
            doc = json.loads(data)
            folders = doc["subsonic-response"]["musicFolders"]
            folders["musicFolder"] = [f for f in folders["musicFolder"]
                                      if f["name"] in self.allowed[user]]
            data = json.dumps(doc).encode()
        return web.Response(body=data, status=status, headers={"Content-Type": ctype})

    @staticmethod
    def app_for(stub: FolderFilter) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/rest/{name}", stub.handle)
        return app


# ---------------------------------------------------------------------------- fixture


@dataclass
class Env:
    server: Supysonic
    stub: FolderFilter
    config: Config
    app: web.Application
    url: str  # musegate (folders mode)
    session: aiohttp.ClientSession
    records: list[TrackRecord]  # what the adapter listed
    folder_ids: dict[str, str]  # folder name -> id
    by_artist: dict[str, list[str]]
    starred: str  # a song alice starred before the scan
    ghost: str  # analysed, but with no recorded folder

    async def json(self, endpoint: str, base: str | None = None, **params: Any) -> dict[str, Any]:
        async with self.session.get(f"{base or self.url}/rest/{endpoint}",
                                    params={k: str(v) for k, v in params.items()}) as resp:
            return json.loads(await resp.text())["subsonic-response"]

    def artist_of(self, song_id: str) -> str:
        return next(r.artist or "" for r in self.records if r.upstream_id == song_id)


async def _analyse_by_artist(config: Config, source: str) -> None:
    """Synthetic analyses: one embedding cluster per artist (the ghost sits by Artist 0)."""
    rng = np.random.default_rng(3)
    version = analyzer_settings(config).version
    centres = {f"Artist {i}": rng.standard_normal(200) for i in range(4)}
    store = await LibraryStore.open(config.db_path)
    try:
        tracks = await store.tracks_of_source(source)
        await store.write_results([
            (t.id or 0, synthetic_analysis(
                centres[t.artist or "Artist 0"] + rng.standard_normal(200) * 0.05, version,
                duration=1.0))
            for t in tracks.values()
        ])
    finally:
        await store.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("vis")
    east = generate_library(tmp / "east", artists=4, albums=1, tracks=6, seconds=0.5)
    west = tmp / "west"
    west.mkdir()
    for name in sorted(WEST_ARTISTS):
        shutil.move(str(east / name), str(west / name))
    async with Supysonic.start(tmp, east, users=USERS, folders={"east": east, "west": west}) \
            as server, aiohttp.ClientSession() as session:
        stub = FolderFilter(server.url, {"bob": {"east"}}, {"carol"})
        stub.session = session
        async with TestServer(FolderFilter.app_for(stub), host="127.0.0.1") as stub_server:
            stub_url = str(stub_server.make_url("")).rstrip("/")
            async with session.get(f"{server.url}/rest/getMusicFolders", params=auth()) as r:
                listed = (await r.json())["subsonic-response"]["musicFolders"]["musicFolder"]
            folder_ids = {f["name"]: str(f["id"]) for f in listed}
            async with session.get(f"{server.url}/rest/search3", params=auth(
                    query="", songCount=500, albumCount=0, artistCount=0)) as r:
                songs = (await r.json())["subsonic-response"]["searchResult3"]["song"]
            starred = songs[0]["id"]
            async with session.get(f"{server.url}/rest/star", params=auth(id=starred)) as r:
                assert (await r.json())["subsonic-response"]["status"] == "ok"

            config = load_config(None, env={}, overrides={
                "data_dir": str(tmp / "data"), "source": "subsonic", "upstream_url": stub_url,
                "max_per_artist": 0, "auth_cache_seconds": 60, "workers": 1,
                "subsonic_visibility": "folders",
            })
            adapter = SubsonicAdapter(stub_url, "alice", USERS["alice"], page_size=5)
            try:
                records = await adapter.list_tracks({})
            finally:
                await adapter.close()
            ghost = "ghost-" + uuid.uuid4().hex
            store = await LibraryStore.open(config.db_path)
            try:
                await store.sync_source(adapter.source, [*records, TrackRecord(
                    source=adapter.source, upstream_id=ghost, title="ghost", artist="Artist 0",
                    duration=1.0, raw={"id": ghost, "title": "ghost", "artist": "Artist 0"})])
            finally:
                await store.close()
            await _analyse_by_artist(config, adapter.source)

            app = create_app(config, adapter=None, refresh_seconds=None)
            async with TestServer(app, host="127.0.0.1") as ts:
                by_artist: dict[str, list[str]] = {}
                for rec in records:
                    by_artist.setdefault(rec.artist or "", []).append(rec.upstream_id)
                yield Env(server, stub, config, app, str(ts.make_url("")).rstrip("/"), session,
                          records, folder_ids, by_artist, starred, ghost)


# ---------------------------------------------------------------------------- adapter


@module_loop
async def test_adapter_records_each_songs_music_folder(env: Env) -> None:
    assert len(env.records) == 24
    for rec in env.records:
        want = "east" if rec.artist in EAST_ARTISTS else "west"
        assert rec.raw[FOLDER_KEY] == env.folder_ids[want], rec.path
        assert not PER_USER_FIELDS & set(rec.raw)  # alice's star was stripped
    # incremental: a second listing reuses every known record as it is
    adapter = SubsonicAdapter(env.config.upstream_url, "alice", USERS["alice"], page_size=5)
    known = {r.upstream_id: r for r in env.records}
    try:
        again = await adapter.list_tracks(known)
    finally:
        await adapter.close()
    assert all(rec is known[rec.upstream_id] for rec in again)


class _FakeClient:
    """Just enough of SubsonicClient for ``list_tracks``: two folders, canned search3 pages."""

    def __init__(self, per_folder: Mapping[str, list[str]]) -> None:
        self.url = "http://fake"
        self.per_folder = per_folder

    async def call(self, endpoint: str, params: Any = (), **kw: Any) -> dict[str, Any]:
        if endpoint == "getMusicFolders":
            return {"musicFolders": {"musicFolder": [{"id": f} for f in self.per_folder]}}
        assert endpoint == "search3"
        ids = self.per_folder[str(kw["musicFolderId"])]
        page = ids[kw["songOffset"]: kw["songOffset"] + kw["songCount"]]
        return {"searchResult3": {"song": [{"id": i, "title": i, "size": 1} for i in page]}}

    async def close(self) -> None:
        return None


async def test_song_in_two_folders_keeps_the_first_and_ignored_folder_id_records_none() -> None:
    overlapping = SubsonicAdapter("", client=_FakeClient({"1": ["a", "b"], "2": ["b", "c"]}))  # type: ignore[arg-type]
    records = {r.upstream_id: r.raw.get(FOLDER_KEY) for r in await overlapping.list_tracks({})}
    assert records == {"a": "1", "b": "1", "c": "2"}
    # a server that ignores musicFolderId lists everything in every folder: no folder is recorded
    ignoring = SubsonicAdapter("", client=_FakeClient({"1": ["a", "b"], "2": ["a", "b"]}))  # type: ignore[arg-type]
    assert [r.raw.get(FOLDER_KEY) for r in await ignoring.list_tracks({})] == [None, None]


# ---------------------------------------------------------------------------- gateway


@module_loop
async def test_folders_mode_returns_only_the_callers_folders(env: Env) -> None:
    east_seed = env.by_artist["Artist 0"][0]
    west_seed = env.by_artist["Artist 2"][0]
    alice = await env.json("getSimilarSongs2", id=east_seed, count=50, **auth("alice"))
    ids = [s["id"] for s in alice["similarSongs2"]["song"]]
    # every other song of both folders; the ghost (no recorded folder) is dropped
    assert len(ids) == 23 and env.ghost not in ids and east_seed not in ids
    assert {env.artist_of(i) for i in ids} == EAST_ARTISTS | WEST_ARTISTS
    for seed in (east_seed, west_seed):
        bob = await env.json("getSimilarSongs2", id=seed, count=50, **auth("bob"))
        got = [s["id"] for s in bob["similarSongs2"]["song"]]
        assert got and {env.artist_of(i) for i in got} <= EAST_ARTISTS
        assert len(got) == (11 if seed == east_seed else 12)
    # XML and getSimilarSongs go the same way
    async with env.session.get(f"{env.url}/rest/getSimilarSongs.view", params={
            **auth("bob"), "f": "xml", "id": west_seed, "count": "5"}) as resp:
        text = await resp.text()
    xml_ids = re.findall(r'<song [^>]*\bid="([^"]+)"', text)
    assert len(xml_ids) == 5 and all(env.artist_of(i) in EAST_ARTISTS for i in xml_ids)


@module_loop
async def test_folders_mode_answers_stored_objects_without_per_user_fields(env: Env) -> None:
    seed = next(i for i in env.by_artist[env.artist_of(env.starred)] if i != env.starred)
    body = await env.json("getSimilarSongs2", id=seed, count=50, **auth("alice"))
    songs = {s["id"]: s for s in body["similarSongs2"]["song"]}
    mine = songs[env.starred]
    direct = await env.json("getSong", base=env.server.url, id=env.starred, **auth("alice"))
    assert "starred" in direct["song"]  # the upstream would show alice her star...
    assert "starred" not in mine  # ...folders mode does not (the documented trade-off)
    assert mine == {k: v for k, v in direct["song"].items() if k not in PER_USER_FIELDS}
    assert all(FOLDER_KEY not in s for s in songs.values())
    sonic = await env.json("getSonicSimilarTracks", id=seed, count=5, **auth("bob"))
    assert all(FOLDER_KEY not in m["entry"] and "starred" not in m["entry"]
               for m in sonic["sonicMatch"])


@module_loop
async def test_folder_lists_are_cached_under_the_credential_hash(env: Env) -> None:
    seed = env.by_artist["Artist 1"][0]
    before = env.stub.folder_calls["bob"]
    for _ in range(3):
        body = await env.json("getSimilarSongs2", id=seed, count=3, **auth("bob"))
        assert body["status"] == "ok"
    assert env.stub.folder_calls["bob"] - before <= 1
    cache = env.app[GATEWAY].folder_cache
    stored = cache.keys()
    assert stored and all(re.fullmatch(r"[0-9a-f]{64}", k) for k in stored)
    assert Credentials.of({"u": "bob", "p": "bobpw"}, {}).cache_key() in stored
    dump = repr(vars(cache)) + repr(vars(env.app[GATEWAY]))
    for secret in USERS.values():
        assert secret not in dump and secret.encode().hex() not in dump


@module_loop
async def test_refused_folder_list_falls_back_to_hydration(env: Env) -> None:
    seed = env.by_artist["Artist 3"][0]
    body = await env.json("getSimilarSongs2", id=seed, count=4, **auth("carol"))
    songs = body["similarSongs2"]["song"]
    assert len(songs) == 4
    direct = await env.json("getSong", base=env.server.url, id=songs[0]["id"], **auth("carol"))
    assert songs[0] == direct["song"]


@module_loop
async def test_folders_mode_path_fallback_and_errors(env: Env) -> None:
    start, end = env.by_artist["Artist 0"][0], env.by_artist["Artist 3"][0]
    path = await env.json("findSonicPath", startSongId=start, endSongId=end, count=6,
                          **auth("alice"))
    ids = [m["entry"]["id"] for m in path["sonicMatch"]]
    assert ids[0] == start and ids[-1] == end
    hidden = await env.json("findSonicPath", startSongId=start, endSongId=end, count=6,
                            **auth("bob"))
    assert hidden["status"] == "failed" and hidden["error"]["code"] == 70
    # unanalysed seed: the upstream's own answer; wrong password: error 40
    ours = await env.json("getSimilarSongs2", id=str(uuid.uuid4()), **auth("bob"))
    theirs = await env.json("getSimilarSongs2", base=env.server.url, id=str(uuid.uuid4()),
                            **auth("bob"))
    assert ours["status"] == theirs["status"] and ours.get("error") == theirs.get("error")
    wrong = await env.json("getSimilarSongs2", id=start, u="bob", p="nope", f="json", c="t")
    assert wrong["error"]["code"] == 40 and "similarSongs2" not in wrong


def test_folder_cache_expires_and_can_be_off() -> None:
    now = [10.0]
    cache = FolderCache(60, clock=lambda: now[0])
    cache.put("k", frozenset({"1"}))
    assert cache.get("k") == frozenset({"1"})
    now[0] += 61
    assert cache.get("k") is None and cache.keys() == []
    off = FolderCache(0)
    off.put("k", frozenset())
    assert off.get("k") is None
