"""musegate's JSON API through a real aiohttp server on a store of synthetic analyses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from adapters.base import HistoryEntry
from adapters.folder import FolderAdapter
from gateway import keys
from gateway.app import create_app
from tests.store_factory import FilledLibrary, add_track, fill_store, make_config

API = "/musegate/api"


class Env:
    def __init__(self, session: aiohttp.ClientSession, lib: FilledLibrary, app: Any) -> None:
        self.session = session
        self.lib = lib
        self.app = app

    def id(self, style: str, n: int) -> int:
        """Track ``n`` (1-based) of ``style``."""
        artist = f"{style} Artist {(n - 1) % 3 + 1}"
        return self.lib.ids[f"{style}/{artist}/{n:02d} {style} song {n}.flac"]

    async def get(self, path: str, status: int = 200, **params: Any) -> Any:
        async with self.session.get(path, params=params) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json() if resp.content_type == "application/json" else None

    async def post(self, path: str, body: Any, status: int = 200) -> Any:
        async with self.session.post(path, json=body) as resp:
            assert resp.status == status, await resp.text()
            return await resp.json()


async def _serve(tmp_path: Path, adapter: Any = "default") -> AsyncIterator[Env]:
    config = make_config(tmp_path)
    lib = await fill_store(config)
    kwargs = {} if adapter == "default" else {"adapter": adapter}
    app = create_app(config, refresh_seconds=None, **kwargs)
    async with TestServer(app) as server, aiohttp.ClientSession(
        base_url=str(server.make_url("/"))
    ) as session:
        yield Env(session, lib, app)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async for e in _serve(tmp_path):
        yield e


def _ids(tracks: list[dict[str, Any]]) -> list[int]:
    return [t["id"] for t in tracks]


# ---------------------------------------------------------------------------- similar


async def test_similar_one_seed(env: Env) -> None:
    seed = env.id("Piano", 1)
    body = await env.get(f"{API}/similar", ids=seed, n=5)
    assert _ids(body["seeds"]) == [seed]
    ids = _ids(body["tracks"])
    assert len(ids) == 5 and seed not in ids
    assert all(env.lib.style_of[i] == "Piano" for i in ids)
    sims = [t["similarity"] for t in body["tracks"]]
    assert sims == sorted(sims, reverse=True)
    assert set(body["tracks"][0]) >= {"id", "upstream_id", "title", "artist", "album", "duration"}
    # deterministic
    assert (await env.get(f"{API}/similar", ids=seed, n=5)) == body


async def test_similar_artist_cap_and_several_seeds(env: Env) -> None:
    seeds = [env.id("Jazz", 1), env.id("Jazz", 2)]
    body = await env.post(f"{API}/similar", {"ids": seeds, "n": 6, "max_per_artist": 1})
    artists = [t["artist"] for t in body["tracks"]]
    assert len(artists) == len(set(artists))
    assert not set(seeds) & set(_ids(body["tracks"]))


async def test_similar_album_artist_and_mood(env: Env) -> None:
    body = await env.get(f"{API}/similar", album="folk artist 1 album", n=5)
    assert len(body["seeds"]) == 4 and all(t["album"] == "Folk Artist 1 album" for t in body["seeds"])
    assert all(env.lib.style_of[i] == "Folk" for i in _ids(body["tracks"]))
    body = await env.post(f"{API}/similar", {"artist": "Metal Artist 2", "n": 4})
    assert all(t["artist"] != "Metal Artist 2" or True for t in body["tracks"])
    assert len(body["seeds"]) == 4
    # mood: from a piano seed, ask for high energy → only energetic styles qualify
    body = await env.post(f"{API}/similar", {"ids": [env.id("Piano", 1)], "n": 5,
                                             "mood": {"energy": 0.9}, "mood_tolerance": 0.1})
    assert body["tracks"] and all(env.lib.style_of[i] in ("Techno", "Metal")
                                  for i in _ids(body["tracks"]))
    body = await env.get(f"{API}/similar", ids=env.id("Piano", 1), mood="sad:0.75", n=3)
    assert all(env.lib.style_of[i] == "Piano" for i in _ids(body["tracks"]))


@pytest.mark.parametrize(
    ("params", "field", "status"),
    [
        ({"n": 3}, "ids", 400),
        ({"ids": "1", "n": "0"}, "n", 400),
        ({"ids": "1", "n": "many"}, "n", 400),
        ({"ids": "abc"}, "ids", 404),
        ({"ids": "99999"}, "ids", 404),
        ({"album": "No Such Album"}, "album", 404),
        ({"artist": "Nobody"}, "artist", 404),
        ({"ids": "1", "mood": "nonsense:0.5"}, "mood", 400),
        ({"ids": "1", "mood": "sad"}, "mood", 400),
        ({"ids": "1", "mood_tolerance": "2"}, "mood_tolerance", 400),
        ({"ids": "1", "max_per_artist": "-1"}, "max_per_artist", 400),
    ],
)
async def test_similar_bad_input(env: Env, params: dict[str, str], field: str, status: int) -> None:
    if params.get("ids") == "1":
        params = {**params, "ids": str(env.id("Piano", 1))}
    body = await env.get(f"{API}/similar", status=status, **params)
    assert body["field"] == field and body["error"]


async def test_bad_json_body(env: Env) -> None:
    async with env.session.post(f"{API}/similar", data=b"{not json",
                                headers={"Content-Type": "application/json"}) as resp:
        assert resp.status == 400
        assert (await resp.json())["field"] == "body"
    body = await env.post(f"{API}/similar", [1, 2], status=400)
    assert body["field"] == "body"


# ---------------------------------------------------------------------------- path


async def test_path(env: Env) -> None:
    start, end = env.id("Piano", 1), env.id("Metal", 1)
    body = await env.get(f"{API}/path", start=start, end=end, length=8)
    ids = _ids(body["tracks"])
    assert ids[0] == start and ids[-1] == end and len(ids) == 8
    assert len(set(ids)) == len(ids)
    assert body["tracks"][0]["distance"] == 0
    assert body["max_jump"] == pytest.approx(max(t["distance"] for t in body["tracks"]), abs=1e-5)
    via = env.id("Jazz", 3)
    body = await env.post(f"{API}/path", {"start": start, "end": end, "length": 9, "via": [via]})
    assert via in _ids(body["tracks"])


@pytest.mark.parametrize(
    ("params", "field", "status"),
    [
        ({"end": "E"}, "start", 400),
        ({"start": "S"}, "end", 400),
        ({"start": "S", "end": "S"}, "end", 400),
        ({"start": "S", "end": "E", "length": "1"}, "length", 400),
        ({"start": "99999", "end": "E"}, "start", 404),
        ({"start": "S", "end": "E", "via": "99999"}, "via", 404),
    ],
)
async def test_path_bad_input(env: Env, params: dict[str, str], field: str, status: int) -> None:
    real = {"S": str(env.id("Piano", 1)), "E": str(env.id("Folk", 1))}
    params = {k: real.get(v, v) for k, v in params.items()}
    body = await env.get(f"{API}/path", status=status, **params)
    assert body["field"] == field


# ---------------------------------------------------------------------------- alchemy


async def test_alchemy(env: Env) -> None:
    request = {
        "add": [{"kind": "song", "value": env.id("Jazz", 1)}, {"tag": "jazz"}],
        "subtract": ["artist:Jazz Artist 2"],
        "n": 5,
    }
    body = await env.post(f"{API}/alchemy", request)
    ids = _ids(body["tracks"])
    assert len(ids) == 5 and env.id("Jazz", 1) not in ids
    assert all(env.lib.artist_of[i] != "Jazz Artist 2" for i in ids)
    roles = {p["role"] for p in body["projection"]}
    assert {"result", "add", "subtract", "add_centroid", "subtract_centroid"} <= roles
    assert (await env.post(f"{API}/alchemy", request)) == body  # temperature 0: deterministic
    varied = await env.post(f"{API}/alchemy", {**request, "temperature": 0.5, "seed": 3})
    assert len(varied["tracks"]) == 5


@pytest.mark.parametrize(
    ("request_body", "field", "status"),
    [
        ({"add": []}, "add", 400),
        ({}, "add", 400),
        ({"add": [{"kind": "mood", "value": "x"}]}, "add[0]", 400),
        ({"add": [{"tag": "no such tag"}]}, "add[0]", 400),
        ({"add": [{"artist": "Nobody At All"}]}, "add[0]", 400),
        ({"add": [{"song": 99999}]}, "add[0]", 404),
        ({"add": [{"tag": "jazz"}], "subtract": [{"song": 99999}]}, "subtract[0]", 404),
        ({"add": [{"tag": "jazz"}], "temperature": -1}, "temperature", 400),
        ({"add": [{"tag": "jazz"}], "n": 0}, "n", 400),
    ],
)
async def test_alchemy_bad_input(env: Env, request_body: dict, field: str, status: int) -> None:
    body = await env.post(f"{API}/alchemy", request_body, status=status)
    assert body["field"] == field


# ---------------------------------------------------------------------------- clustering + jobs


async def test_clustering_job_start_poll_fetch(env: Env) -> None:
    await env.get(f"{API}/clusters", status=404)  # nothing finished yet
    started = await env.post(f"{API}/clusters", {"n_playlists": 3, "trials": 4,
                                                 "algorithms": ["kmeans", "gmm"]}, status=202)
    job_id = started["job"]["id"]
    assert started["poll"] == f"{API}/clusters/{job_id}"
    polled = None
    for _ in range(2000):
        polled = await env.get(f"{API}/clusters/{job_id}")
        if polled["job"]["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.01)
    assert polled is not None and polled["job"]["status"] == "done", polled
    result = polled["result"]
    assert len(result["playlists"]) == 3
    names = [p["name"] for p in result["playlists"]]
    assert len(set(names)) == 3 and all(names)
    for pl in result["playlists"]:
        assert pl["tracks"] and {"id", "title"} <= set(pl["tracks"][0])
    latest = await env.get(f"{API}/clusters")
    assert latest["job"]["id"] == job_id and latest["result"] == result
    job = await env.get(f"{API}/jobs/{job_id}")
    assert job["status"] == "done" and job["progress"] == 1.0
    jobs = await env.get(f"{API}/jobs")
    assert [j["id"] for j in jobs["jobs"]] == [job_id]
    # The music map colours by the newest clustering: its names, each song's playlist.
    points = (await env.get(f"{API}/map"))["points"]
    member = {t["id"]: i for i, pl in enumerate(result["playlists"]) for t in pl["tracks"]}
    assert (await env.get(f"{API}/map"))["clusters"] == names
    assert dict(zip(points["id"], points["cluster"], strict=True)) == {
        tid: member.get(tid, -1) for tid in points["id"]}


async def test_music_map_is_parallel_arrays(env: Env) -> None:
    body = await env.get(f"{API}/map")
    points = body["points"]
    assert body["count"] == len(env.lib.ids) and body["clusters"] == []
    assert set(points) == {"id", "title", "artist", "x", "y", "tag", "cluster"}
    assert all(len(col) == body["count"] for col in points.values())
    assert set(points["id"]) == set(env.lib.ids.values())
    assert all(-1.0 <= v <= 1.0 for v in points["x"] + points["y"])
    assert all(0 <= t < len(body["tags"]) for t in points["tag"]) and set(points["cluster"]) == {-1}
    row = points["id"].index(env.id("Piano", 1))
    assert (points["title"][row], points["artist"][row]) == ("Piano song 1", "Piano Artist 1")
    assert body["tags"][points["tag"][row]] in ("beautiful", "sad", "Mellow")
    assert await env.get(f"{API}/map") == body  # the cached answer is the same answer


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"n_playlists": 50}, "n_playlists"),
        ({"n_playlists": 0}, "n_playlists"),
        ({"algorithms": ["kmeans", "magic"]}, "algorithms"),
        ({"trials": "x"}, "trials"),
    ],
)
async def test_clustering_bad_input(env: Env, request_body: dict, field: str) -> None:
    body = await env.post(f"{API}/clusters", request_body, status=400)
    assert body["field"] == field


async def test_unknown_jobs(env: Env) -> None:
    assert (await env.get(f"{API}/jobs/nope", status=404))["field"] == "job_id"
    assert (await env.get(f"{API}/clusters/nope", status=404))["field"] == "job_id"


# ---------------------------------------------------------------------------- fingerprint


async def test_fingerprint_folder_source_is_a_clear_error(env: Env) -> None:
    body = await env.get(f"{API}/fingerprint", status=409)
    assert "listening history" in body["error"]
    body = await env.post(f"{API}/fingerprint", {"n": 5}, status=409)
    assert "folder" in body["error"]


class HistoryFolder(FolderAdapter):
    """A folder source that pretends to know plays (what a media-server adapter will)."""

    def __init__(self, root: Path, plays: list[HistoryEntry]) -> None:
        super().__init__(root)
        self.plays = plays

    async def listening_history(self, user: str | None = None) -> list[HistoryEntry]:
        return self.plays


async def test_fingerprint_with_history(tmp_path: Path) -> None:
    plays = [
        HistoryEntry("Techno/Techno Artist 1/01 Techno song 1.flac", 40, None),
        HistoryEntry("Techno/Techno Artist 2/02 Techno song 2.flac", 25, None),
        HistoryEntry("unknown/elsewhere.flac", 100, None),
    ]
    async for env in _serve(tmp_path, adapter=HistoryFolder(tmp_path / "music", plays)):
        body = await env.get(f"{API}/fingerprint", n=5)
        assert body["plays_used"] == 2
        ids = _ids(body["tracks"])
        assert len(ids) == 5 and all(env.lib.style_of[i] == "Techno" for i in ids)
        assert env.id("Techno", 1) not in ids
        assert (await env.get(f"{API}/fingerprint", status=400, n="x"))["field"] == "n"


# ---------------------------------------------------------------------------- instant


async def test_instant_from_text_and_constraints(env: Env) -> None:
    body = await env.post(f"{API}/instant", {"text": "sad slow music", "n": 5})
    assert body["interpretation"]["source"] == "builtin"
    assert body["interpretation"]["explanation"]
    assert body["tracks"] and all(env.lib.style_of[i] == "Piano" for i in _ids(body["tracks"]))
    body = await env.get(f"{API}/instant", text="fast high energy metal", n=4)
    assert body["tracks"] and all(env.lib.style_of[i] in ("Metal", "Techno")
                                  for i in _ids(body["tracks"]))
    body = await env.post(f"{API}/instant", {"n": 5, "constraints": {"tempo_min": 120,
                                                             "include_tags": {"dance": 1.0}}})
    assert body["tracks"] and all(env.lib.style_of[i] == "Techno" for i in _ids(body["tracks"]))
    assert body["interpretation"]["constraints"]["tempo_min"] == 120


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({}, "text"),
        ({"text": "   "}, "text"),
        ({"text": 5}, "text"),
        ({"text": "jazz", "n": 0}, "n"),
        ({"constraints": {"tempo_min": "fast"}}, "constraints.tempo_min"),
        ({"constraints": {"scale": "dorian"}}, "constraints.scale"),
    ],
)
async def test_instant_bad_input(env: Env, request_body: dict, field: str) -> None:
    body = await env.post(f"{API}/instant", request_body, status=400)
    assert body["field"] == field


# ---------------------------------------------------------------------------- tracks, status


async def test_tracks_search_and_status(env: Env) -> None:
    body = await env.get(f"{API}/tracks", q="folk song 3")
    titles = [t["title"] for t in body["tracks"]]
    assert "Folk song 3" in titles and all(t.startswith("Folk") for t in titles)
    assert all(t["analysed"] is True for t in body["tracks"])
    assert (await env.get(f"{API}/tracks", status=400))["field"] == "q"
    assert (await env.get(f"{API}/tracks", status=400, q="x", limit="0"))["field"] == "limit"
    status = await env.get(f"{API}/status")
    assert status["tracks"] == status["analysed"] == 60
    assert status["index"]["kind"] == "flat" and status["index"]["tracks"] == 60


async def test_unknown_api_path_is_json(env: Env) -> None:
    body = await env.get(f"{API}/nothing-here", status=404)
    assert body["error"]


async def test_reload_picks_up_new_analyses(env: Env) -> None:
    config = env.app[keys.CONFIG]
    assert config.index_path.exists()  # saved beside the database at start
    new_id = await add_track(config, env.lib, 2, "Brand new folk")
    await env.get(f"{API}/similar", status=404, ids=new_id)
    service = env.app[keys.SERVICE]
    assert await service.refresh() is True
    assert await service.refresh() is False  # nothing changed since
    body = await env.get(f"{API}/similar", ids=new_id, n=3)
    assert all(env.lib.style_of[i] == "Folk" for i in _ids(body["tracks"]))
    assert new_id in _ids((await env.get(f"{API}/similar", ids=env.id("Folk", 1), n=3))["tracks"])


# ---------------------------------------------------------------------------- playlist export


async def test_export_playlist_m3u8(env: Env) -> None:
    ids = [env.id("Piano", 2), env.id("Jazz", 1)]
    body = await env.post(f"{API}/playlists", {"name": "Evening: mix/1", "track_ids": ids},
                          status=201)
    location = Path(body["location"])
    assert body["tracks"] == 2 and location.parent == env.lib.root / "Playlists"
    assert location.name == "Evening mix 1.m3u8"
    lines = location.read_text(encoding="utf-8").splitlines()
    assert lines == [
        "#EXTM3U",
        "#EXTINF:181,Piano Artist 2 - Piano song 2",
        "../Piano/Piano Artist 2/02 Piano song 2.flac",
        "#EXTINF:180,Jazz Artist 1 - Jazz song 1",
        "../Jazz/Jazz Artist 1/01 Jazz song 1.flac",
    ]
    # every entry resolves to the track's file relative to the playlist
    assert (location.parent / lines[2]).resolve() == (env.lib.root / lines[2][3:]).resolve()


@pytest.mark.parametrize(
    ("request_body", "field", "status"),
    [
        ({"track_ids": [1]}, "name", 400),
        ({"name": "x", "track_ids": []}, "track_ids", 400),
        ({"name": "x", "track_ids": ["a"]}, "track_ids", 400),
        ({"name": "///", "track_ids": [1]}, "name", 400),
        ({"name": "x", "track_ids": [99999]}, "track_ids", 404),
    ],
)
async def test_export_bad_input(env: Env, request_body: dict, field: str, status: int) -> None:
    request_body = {**request_body,
                    "track_ids": [env.id("Piano", 1) if t == 1 else t
                                  for t in request_body.get("track_ids", [])]}
    body = await env.post(f"{API}/playlists", request_body, status=status)
    assert body["field"] == field


async def test_export_without_a_source(tmp_path: Path) -> None:
    async for env in _serve(tmp_path, adapter=None):
        body = await env.post(f"{API}/playlists", {"name": "x", "track_ids": [env.id("Folk", 1)]},
                              status=409)
        assert "playlists" in body["error"]


# ---------------------------------------------------------------------------- AudioMuse-AI compat

AM_KEYS = {"item_id", "title", "author", "album", "album_artist"}


async def test_compat_similar_tracks(env: Env) -> None:
    seed = "Folk/Folk Artist 1/01 Folk song 1.flac"
    for prefix in (API, "/AudioMuseAI"):
        body = await env.get(f"{prefix}/similar_tracks", item_id=seed, n=4)
        assert isinstance(body, list) and len(body) == 4
        assert set(body[0]) == AM_KEYS | {"distance"}
        assert all(t["item_id"].startswith("Folk/") and t["item_id"] != seed for t in body)
        distances = [t["distance"] for t in body]
        assert distances == sorted(distances)
    by_name = await env.get(f"{API}/similar_tracks", title="Folk song 1", artist="Folk Artist 1",
                            n=4)
    assert by_name == body
    numeric = await env.get(f"{API}/similar_tracks", item_id=env.id("Folk", 1), n=4)
    assert numeric == body
    capped = await env.get(f"{API}/similar_tracks", item_id=seed, n=9,
                           eliminate_duplicates="true")
    uncapped = await env.get(f"{API}/similar_tracks", item_id=seed, n=9,
                             eliminate_duplicates="false")
    assert max(map([t["author"] for t in capped].count, {t["author"] for t in capped})) <= 3
    assert len(uncapped) == 9
    await env.get(f"{API}/similar_tracks", status=400)
    await env.get(f"{API}/similar_tracks", status=404, item_id="missing.flac")
    await env.get(f"{API}/similar_tracks", status=404, title="No", artist="Body")


async def test_compat_find_path(env: Env) -> None:
    start = "Piano/Piano Artist 1/01 Piano song 1.flac"
    end = "Metal/Metal Artist 1/01 Metal song 1.flac"
    for prefix in (API, "/AudioMuseAI"):
        body = await env.get(f"{prefix}/find_path", start_song_id=start, end_song_id=end,
                             max_steps=6)
        assert set(body) == {"path", "total_distance"}
        assert [s["item_id"] for s in (body["path"][0], body["path"][-1])] == [start, end]
        assert len(body["path"]) == 6 and set(body["path"][0]) >= AM_KEYS
        assert body["total_distance"] > 0
    await env.get(f"{API}/find_path", status=400, start_song_id=start)
    await env.get(f"{API}/find_path", status=400, start_song_id=start, end_song_id=start)
    await env.get(f"{API}/find_path", status=404, start_song_id=start, end_song_id="nope")


async def test_compat_search_tracks(env: Env) -> None:
    body = await env.get(f"{API}/search_tracks", search_query="Jazz song 1")
    assert body and all(set(t) == AM_KEYS for t in body)
    assert "Jazz song 1" in [t["title"] for t in body]
    legacy = await env.get(f"{API}/search_tracks", title="song 12", artist="Metal")
    assert [t["title"] for t in legacy] == ["Metal song 12"]
    assert await env.get(f"{API}/search_tracks", search_query="ja") == []
    paged = await env.get(f"{API}/search_tracks", search_query="song", start=2, end=5)
    assert len(paged) == 3


async def test_compat_alchemy(env: Env) -> None:
    body = await env.post(f"{API}/alchemy", {
        "items": [
            {"id": "Jazz/Jazz Artist 1/01 Jazz song 1.flac", "op": "ADD"},
            {"id": "Piano Artist 1", "op": "SUBTRACT", "type": "artist"},
        ],
        "n": 5,
    })
    assert {"results", "filtered_out", "centroid_2d", "add_centroid_2d", "subtract_centroid_2d",
            "add_points", "sub_points", "projection"} <= set(body)
    assert len(body["results"]) == 5
    assert set(body["results"][0]) >= AM_KEYS | {"distance", "embedding_2d"}
    assert body["add_points"][0]["item_id"] == "Jazz/Jazz Artist 1/01 Jazz song 1.flac"
    bad = await env.post(f"{API}/alchemy", {"items": [{"id": "x", "op": "SUBTRACT"}]}, status=400)
    assert bad["error"]


async def test_compat_health(env: Env) -> None:
    async with env.session.get("/AudioMuseAI/health") as resp:
        assert resp.status == 200
        assert await resp.read() == b""


async def test_instant_through_a_configured_llm(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """The server asks the configured OpenAI-compatible LLM, and falls back when it fails."""
    from tests.fakes.llm_server import FakeLLM

    fake = await FakeLLM(api_key="sk-test-secret").start()
    try:
        fake.reply({"tempo_min": 120, "include_tags": [{"tag": "dance", "weight": 1.0}]})
        config = make_config(tmp_path, llm_provider="openai", llm_url=fake.url,
                             llm_model="any", llm_api_key="sk-test-secret")
        lib = await fill_store(config)
        app = create_app(config, refresh_seconds=None)
        async with TestServer(app) as server, aiohttp.ClientSession(
            base_url=str(server.make_url("/"))
        ) as session:
            e = Env(session, lib, app)
            body = await e.post(f"{API}/instant", {"text": "club bangers", "n": 5})
            assert body["interpretation"]["source"] == "llm"
            assert all(lib.style_of[i] == "Techno" for i in _ids(body["tracks"]))
            assert fake.requests[-1]["path"] == "/v1/chat/completions"
            fake.reply(status=500)
            body = await e.post(f"{API}/instant", {"text": "sad slow music", "n": 5})
            assert body["interpretation"]["source"] == "builtin"
            assert body["tracks"]
        assert "sk-test-secret" not in caplog.text
    finally:
        await fake.close()
