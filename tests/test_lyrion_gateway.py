"""musegate in front of the fake LMS: scan, analyse, and answer the Music Similarity plugin.

The app is built as ``musegate serve`` builds it (source "lyrion", the library
scheduler on): it scans the password-protected fake LMS, downloads and
analyses the generated songs, and then answers ``/api/similar``, ``/api/dump``
and ``/api/features`` called with the request shapes of CDrummond's LMS
plugin (its POSTed JSON, its keys and value types) and of the original
server's documented GET form.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.app import create_app
from musegate.config import Config, load_config
from tests.conftest import SR, sine_mix, write_track
from tests.fakes.lyrion import FakeLyrion

module_loop = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "lms-pass"
FAMILIES = {"low": ([55.0, 110.0], "Drone"), "mid": ([440.0, 660.0], "Chime"), "noise": ([], "Noise")}
PER_FAMILY = 3


@dataclass
class Env:
    fake: FakeLyrion
    app: web.Application
    url: str
    session: aiohttp.ClientSession
    config: Config
    urls: dict[str, str]  # title -> LMS url
    paths: dict[str, str]  # title -> LMS path

    def title_of(self, name: str) -> str:
        for table in (self.urls, self.paths):
            for title, value in table.items():
                if value == name:
                    return title
        raise AssertionError(f"{name!r} is not a library song")

    async def call(self, path: str, method: str = "POST", **kw: Any) -> tuple[int, str, str]:
        async with self.session.request(method, self.url + path, **kw) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def plugin_mix_body(tracks: list[str], previous: list[str], **changes: Any) -> dict[str, Any]:
    """What the plugin's DSTM mixer POSTs (Plugin.pm _getMixData), with its default prefs."""
    body: dict[str, Any] = {
        "count": 5, "format": "text", "filtergenre": 0, "filterxmas": 1, "min": 0, "max": 0,
        "track": tracks, "previous": previous, "shuffle": 1, "norepart": 15, "norepalb": 25,
        "genregroups": [], "nogenrematchadj": 15, "genregroupadj": 7, "maxbpmdiff": 150,
        "filterkey": 1, "filterattrib": 1, "mpath": "/music",
    }
    body.update(changes)
    return body


def plugin_similar_body(track: str, by_artist: int = 0) -> dict[str, Any]:
    """What the plugin POSTs to /api/dump for its "similar tracks" menu (_getSimilarData)."""
    return {"count": 100, "format": "text-url", "min": 0, "max": 0, "track": [track],
            "filterartist": by_artist, "genregroups": [], "nogenrematchadj": 15,
            "genregroupadj": 7, "maxbpmdiff": 150, "filterkey": 1, "filterattrib": 1,
            "mpath": "/music"}


def _config(tmp: Path, upstream: str, **extra: Any) -> Config:
    return load_config(None, env={}, overrides={
        "data_dir": str(tmp / "data"), "source": "lyrion", "upstream_url": upstream,
        "upstream_user": "admin", "upstream_password": PASSWORD, "workers": 1, **extra,
    })


async def _scan_and_analyse(app: web.Application) -> None:
    """Wait for the run the scheduler starts with the server, as `musegate serve` has it."""
    scheduler = app[keys.SCHEDULER]
    queue = scheduler.subscribe()
    try:
        while scheduler.state.finished is None:
            await asyncio.wait_for(queue.get(), timeout=300)  # a guard against a hang only
    finally:
        scheduler.unsubscribe(queue)
    assert scheduler.state.status == "done", scheduler.state.message


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("lyrion")
    fake = FakeLyrion(user="admin", password=PASSWORD)
    urls, paths = {}, {}
    for family, (freqs, genre) in FAMILIES.items():
        for i in range(PER_FAMILY):
            if freqs:
                audio = sine_mix([f * (1 + 0.02 * i) for f in freqs], 6.0, seed=i)
            else:
                audio = (np.random.default_rng(i).standard_normal(6 * SR) * 0.2).astype(np.float32)
            rel = f"{family}/{family} {i}.flac"
            file = write_track(tmp / "media" / rel, audio)
            tid = fake.add_track(f"{family} {i}", f"{family} artist {i}", f"{family} album {i}",
                                 f"/music/{rel}", file, genres=[genre], duration=6.0)
            urls[f"{family} {i}"] = fake.tracks[tid].url
            paths[f"{family} {i}"] = f"/music/{rel}"
    url = await fake.start()
    config = _config(tmp, url)
    app = create_app(config, refresh_seconds=None, schedule=True)
    try:
        async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
            await _scan_and_analyse(app)
            yield Env(fake, app, str(ts.make_url("")).rstrip("/"), session, config, urls, paths)
    finally:
        await fake.stop()


def family(title: str) -> str:
    return title.split()[0]


@module_loop
async def test_the_scan_read_lms_and_the_analysis_downloaded_every_song(env: Env) -> None:
    assert sorted(env.fake.downloads) == sorted(env.fake.tracks)
    assert any(c[0] == "titles" for c in env.fake.commands)
    assert all(h and h.startswith("Basic ") for h in env.fake.auth_headers)
    snap = env.app[keys.SERVICE].snapshot
    assert len(snap.catalogue) == len(env.urls)


@module_loop
async def test_dstm_mix_as_the_plugin_posts_it(env: Env) -> None:
    seed = env.urls["low 0"]
    previous = [env.urls["mid 2"], seed]
    status, ctype, text = await env.call(
        "/api/similar", json=plugin_mix_body([seed], previous, count=3))
    assert status == 200 and ctype.startswith("text/plain")
    lines = text.split("\n")
    assert len(lines) == 3 and len(set(lines)) == 3
    assert all(line.startswith("file:///music/") for line in lines)  # LMS's own URLs
    titles = [env.title_of(line) for line in lines]
    assert "low 0" not in titles and "mid 2" not in titles


@module_loop
async def test_mix_order_follows_the_sound(env: Env) -> None:
    body = plugin_mix_body([env.urls["mid 1"]], [], count=2, shuffle=0, filterkey=0)
    status, _, text = await env.call("/api/similar", json=body)
    assert status == 200
    assert sorted(env.title_of(t) for t in text.split("\n")) == ["mid 0", "mid 2"]
    # several seeds: both families come back; the genre filter keeps to the seeds' groups
    body = plugin_mix_body([env.urls["low 0"], env.urls["noise 0"]], [], count=4, shuffle=0,
                           filterkey=0, filtergenre=1, genregroups=[["Drone"], ["Noise"], ["Chime"]])
    status, _, text = await env.call("/api/similar", json=body)
    got = {env.title_of(t) for t in text.split("\n")}
    assert status == 200 and got == {"low 1", "low 2", "noise 1", "noise 2"}
    # genre groups widen what the filter accepts
    body["genregroups"] = [["Drone", "Chime"]]
    body["track"], body["count"] = [env.urls["low 0"]], 4
    status, _, text = await env.call("/api/similar", json=body)
    got = {family(env.title_of(t)) for t in text.split("\n")}
    assert status == 200 and got <= {"low", "mid"} and "mid" in got


@module_loop
async def test_documented_get_form_with_paths(env: Env) -> None:
    params = [("track", env.paths["noise 1"]), ("count", "10"), ("filtergenre", "1"),
              ("genregroups", json.dumps([["Noise"], ["Drone", "Chime"]])),
              ("min", "1"), ("max", "600"), ("norepart", "15"), ("norepalb", "25"),
              ("filterxmas", "1"), ("shuffle", "0")]
    status, ctype, text = await env.call("/api/similar", "GET", params=params)
    assert status == 200 and ctype.startswith("application/json")
    assert sorted(json.loads(text)) == [env.paths["noise 0"], env.paths["noise 2"]]  # plain paths
    # relative to the music folder (mpath), and too long for max: nothing fits
    params = [("track", "noise/noise 1.flac"), ("mpath", "/music/"), ("max", "5"), ("format", "text")]
    status, _, text = await env.call("/api/similar", "GET", params=params)
    assert (status, text) == (200, "")


@module_loop
async def test_similar_tracks_menu_uses_dump(env: Env) -> None:
    status, _, text = await env.call("/api/dump", json=plugin_similar_body(env.urls["low 1"]))
    lines = text.split("\n")
    assert status == 200 and len(lines) == len(env.urls) - 1
    assert {env.title_of(x) for x in lines[:2]} == {"low 0", "low 2"}
    assert all(x.startswith("file:///") for x in lines)
    status, _, text = await env.call("/api/dump", json=plugin_similar_body(env.urls["low 1"], 1))
    assert (status, text) == (200, "")  # every song has its own artist here
    status, _, text = await env.call("/api/dump", "GET",
                                     params={"track": env.paths["low 1"], "format": "text", "count": "2"})
    rows = [line.split("\t") for line in text.split("\n")]
    assert status == 200 and len(rows) == 2 and all(float(d) >= 0 for _, d in rows)
    assert {env.title_of(p) for p, _ in rows} == {"low 0", "low 2"}
    status, _, text = await env.call("/api/dump", json={"track": [env.urls["low 1"]], "count": 1})
    assert status == 200 and list(json.loads(text)[0]) == ["file", "sim"]


@module_loop
async def test_features_say_no_essentia_and_no_bliss(env: Env) -> None:
    assert await env.call("/api/features", "GET") == (200, "text/plain; charset=utf-8", "")


@module_loop
async def test_unknown_seeds_and_bad_requests(env: Env) -> None:
    status, _, text = await env.call(
        "/api/similar", json=plugin_mix_body(["file:///music/nowhere.flac"], []))
    assert (status, text) == (200, "")  # the plugin then asks LMS's other mixers
    status, _, text = await env.call("/api/similar", data=b"{not json",
                                     headers={"Content-Type": "application/json"})
    assert status == 400 and "JSON" in text
    status, _, text = await env.call("/api/similar", json={"count": 3})
    assert status == 400 and "track" in text
    status, _, text = await env.call("/api/similar", json=plugin_mix_body([env.urls["low 0"]], [],
                                                                         count="lots"))
    assert status == 400 and "count" in text
    status, _, text = await env.call("/api/similar", json=plugin_mix_body(
        [env.urls["low 0"]], [], genregroups="Rock"))
    assert status == 400 and "genregroups" in text
    status, _, _ = await env.call("/api/dump", json={"track": ["file:///music/nowhere.flac"]})
    assert status == 404
    # still serving after all that
    status, _, text = await env.call("/api/similar", json=plugin_mix_body([env.urls["low 0"]], []))
    assert status == 200 and text


@module_loop
async def test_who_may_call(env: Env, tmp_path: Path) -> None:
    async def features(config: Config, path: str = "/api/features", **headers: str) -> int:
        app = create_app(config, adapter=None, refresh_seconds=None)
        async with TestServer(app, host="127.0.0.1") as ts, \
                env.session.get(str(ts.make_url(path)), headers=headers) as resp:
            return resp.status

    shared = tmp_path  # a fresh, empty library: the access check comes first
    lan = _config(shared, env.config.upstream_url, host="0.0.0.0")
    assert await features(lan) == 403  # bound to every address, nobody is trusted by default
    assert await features(lan.replace(lms_clients="127.0.0.0/8")) == 200
    keyed = lan.replace(api_key="k3y")
    assert await features(keyed, **{"X-API-Key": "k3y"}) == 200
    assert await features(keyed, **{"X-API-Key": "nope"}) == 401
    mounted = lan.replace(lms_clients="127.0.0.1", mount_path="/lms")
    assert await features(mounted, "/lms/api/features") == 200
    # a forged X-Forwarded-For from an untrusted peer is ignored, not believed
    assert await features(lan.replace(lms_clients="10.9.9.9"), **{"X-Forwarded-For": "10.9.9.9"}) == 403


@module_loop
async def test_lms_itself_is_not_proxied(env: Env) -> None:
    status, _, _ = await env.call("/jsonrpc.js", json={"id": 1, "method": "slim.request",
                                                       "params": ["", ["version", "?"]]})
    assert status == 404


@module_loop
async def test_web_ui_login_is_checked_by_lms(env: Env) -> None:
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(env.url + "/musegate/session") as resp:
            assert "password" in (await resp.json())["modes"]
        async with http.post(env.url + "/musegate/login",
                             json={"username": "admin", "password": "wrong"}) as resp:
            assert resp.status == 401 and "wrong user name or password" in await resp.text()
        async with http.post(env.url + "/musegate/login",
                             json={"username": "admin", "password": PASSWORD}) as resp:
            assert resp.status == 200 and (await resp.json())["user"] == "admin"
        # the whole library, and a preview relayed from LMS's download with Basic auth
        track = next(t for t in (await env.app[keys.STORE].tracks_of_source(
            f"lyrion:{env.config.upstream_url}")).values() if t.title == "mid 2")
        async with http.get(f"{env.url}/musegate/stream/{track.id}") as resp:
            assert resp.status == 200
            body = await resp.read()
        fake_track = env.fake.tracks[int(track.upstream_id)]
        assert fake_track.file is not None and body == fake_track.file.read_bytes()
    env.fake.password = ""  # no protection: LMS could not tell anyone apart
    try:
        async with aiohttp.ClientSession() as http, http.post(
                env.url + "/musegate/login", json={"username": "x", "password": "y"}) as resp:
            assert resp.status == 401 and "no password protection" in await resp.text()
    finally:
        env.fake.password = PASSWORD
