"""Bad input: fuzz every intercepted Subsonic and Jellyfin endpoint and musegate's JSON API.

* schemathesis generates requests for every operation of musegate's own OpenAPI
  document (gateway/openapi.py) against a filled store;
* hypothesis generates Subsonic query strings (missing, duplicated, huge, negative,
  unicode values, invalid ``f=``, JSONP callbacks with script) for the intercepted
  endpoints through musegate in front of a real supysonic, and Jellyfin paths and
  queries in front of the fake Jellyfin.

Every answer: no 5xx, no traceback in the body, musegate still answering. JSONP
answers only ever echo a plain identifier. The default run has a fixed, derandomised
budget; ``make reliability`` runs the same with ``FUZZ_EXAMPLES`` times more.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.openapi import build_openapi
from tests import test_jellyfin_gateway as jf
from tests import test_subsonic_gateway as ss
from tests.fakes.jellyfin import FakeJellyfin
from tests.reliability.server_thread import serving
from tests.secret_watch import watch_secret
from tests.store_factory import fill_store, make_config
from tests.supysonic_server import Supysonic, generate_library

API_KEY = "fuzz-api-key-0123456789"
SLOW = 8  # examples multiplier under the reliability marker
ENDPOINTS = ("getSimilarSongs", "getSimilarSongs2", "getSonicSimilarTracks", "findSonicPath")

# A JSONP body must start with a plain JavaScript identifier path and nothing else.
JSONP_HEAD = re.compile(r"\A[A-Za-z_$][A-Za-z0-9_$]*(?:\.[A-Za-z_$][A-Za-z0-9_$]*)*\(")


def _settings(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


def _check(status: int, body: bytes, where: str) -> None:
    assert status < 500, (where, status, body[:300])
    assert b"Traceback" not in body and b'File "/' not in body, where


# ---------------------------------------------------------------------------- JSON API


@contextlib.asynccontextmanager
async def _api(tmp: Path) -> AsyncIterator[str]:
    config = make_config(tmp, api_key=API_KEY)
    await fill_store(config)
    app = create_app(config, adapter=None, refresh_seconds=None)
    async with TestServer(app, host="127.0.0.1") as ts:
        yield str(ts.make_url("")).rstrip("/")


def _fuzz_api(tmp: Path, per_operation: int) -> int:
    watch_secret(API_KEY)
    calls = 0
    with serving(lambda: _api(tmp)) as base, requests.Session() as http:
        schema = schemathesis.openapi.from_dict(build_openapi("/musegate", server_url=base))
        for result in schema.get_all_operations():
            op = result.ok()
            if op.path.endswith("/events"):  # an endless server-sent event stream
                continue

            @_settings(per_operation)
            @given(case=op.as_strategy())
            def one(case: Any) -> None:
                nonlocal calls
                kwargs = case.as_transport_kwargs(base_url=base)
                kwargs.setdefault("headers", {})["X-API-Key"] = API_KEY
                kwargs["timeout"] = 60
                resp = http.request(**kwargs)
                calls += 1
                _check(resp.status_code, resp.content, f"{case.method} {case.formatted_path}")

            one()
        assert http.get(f"{base}/musegate/health", timeout=30).status_code == 200
    return calls


def test_schemathesis_over_musegates_openapi(tmp_path: Path) -> None:
    assert _fuzz_api(tmp_path, 6) > 150


@pytest.mark.reliability
def test_schemathesis_over_musegates_openapi_long(tmp_path: Path) -> None:
    assert _fuzz_api(tmp_path, 6 * SLOW) > 150 * 4


# ---------------------------------------------------------------------------- Subsonic

NASTY = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "-1", "-99999999999999999999", "0", "1e9", "NaN", "null", "[]", "{}",
                     "9" * 400, "a" * 5000, "\u202e\u0000x", "ü🎵", "../../etc/passwd",
                     "<script>alert(1)</script>", "%00", "true"]),
    st.integers(-(2**70), 2**70).map(str),
)
CALLBACKS = st.one_of(
    st.just("cb"),
    st.sampled_from(["cb", "a.b.c", "alert(1);//", "x\n", "cb\nalert(1)", "</script>", "$", "_",
                     "é", "a b", "1abc", "a..b", "callback=evil", "x" * 3000, "eval", ""]),
    st.text(max_size=20),
)
FORMATS = st.one_of(st.just("jsonp"),
                    st.sampled_from(["json", "xml", "jsonp", "JSON", "", "yaml", "jsonp\n", "ü"]))
KEYS = st.sampled_from(["id", "count", "offset", "musicFolderId", "startSongId", "endSongId",
                        "size", "f", "callback", "v", "c", "u", "p", "type"])


@st.composite
def subsonic_query(draw: Any, songs: list[str]) -> list[tuple[str, str]]:
    """Mostly valid credentials (so the parsing after the check is reached), then anything."""
    q: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)) < 8:
        q += [("u", "alice"), ("p", "alicepw")]
    q += [("v", draw(st.sampled_from(["1.16.1", "1.12.0", "", "99", "x"]))), ("c", "fuzz")]
    q.append(("f", draw(FORMATS)))
    if draw(st.booleans()):
        q.append(("callback", draw(CALLBACKS)))
    for _ in range(draw(st.integers(0, 6))):
        value = draw(st.one_of(NASTY, st.sampled_from(songs)))
        q.append((draw(KEYS), value))  # duplicates happen: a key may come twice
    return q


@contextlib.asynccontextmanager
async def _subsonic(tmp: Path) -> AsyncIterator[tuple[str, list[str]]]:
    music = generate_library(tmp / "music", artists=2, albums=1, tracks=3, seconds=1.0)
    async with Supysonic.start(tmp, music, users=ss.USERS) as server, \
            aiohttp.ClientSession() as session:
        songs = await ss._songs(session, server.url)
        config = ss._config(tmp, server.url)
        await ss._write_synthetic(config, songs)
        app = create_app(config, adapter=None, refresh_seconds=None)
        async with TestServer(app, host="127.0.0.1") as ts:
            yield str(ts.make_url("")).rstrip("/"), [s["id"] for s in songs]


def _fuzz_subsonic(tmp: Path, examples: int) -> dict[str, int]:
    seen = {"calls": 0, "jsonp": 0}
    with serving(lambda: _subsonic(tmp)) as (base, songs), requests.Session() as http:
        endpoints = st.sampled_from([*ENDPOINTS, "getOpenSubsonicExtensions"])

        @_settings(examples)
        @given(endpoint=endpoints, view=st.booleans(), post=st.booleans(),
               query=subsonic_query(songs))
        def one(endpoint: str, view: bool, post: bool, query: list[tuple[str, str]]) -> None:
            url = f"{base}/rest/{endpoint}{'.view' if view else ''}"
            if post:
                resp = http.post(url, data=query, timeout=60)
            else:
                resp = http.get(url, params=query, timeout=60)
            seen["calls"] += 1
            _check(resp.status_code, resp.content, f"{endpoint} {query!r}")
            if resp.headers.get("Content-Type", "").startswith("application/javascript"):
                seen["jsonp"] += 1
                assert JSONP_HEAD.match(resp.text), (endpoint, view, post, query, resp.text[:80])
                head = resp.text.split("(", 1)[0]
                assert dict(query).get("callback") == head or head in [v for k, v in query
                                                                       if k == "callback"]

        one()
        assert http.get(f"{base}/rest/ping", params=ss.auth(), timeout=30).status_code == 200
    return seen


def test_hypothesis_subsonic_queries(tmp_path: Path) -> None:
    seen = _fuzz_subsonic(tmp_path, 150)
    assert seen["calls"] >= 150 and seen["jsonp"] > 0


@pytest.mark.reliability
def test_hypothesis_subsonic_queries_long(tmp_path: Path) -> None:
    seen = _fuzz_subsonic(tmp_path, 150 * SLOW)
    assert seen["calls"] >= 150 * SLOW


def test_jsonp_callbacks_are_identifiers_only(tmp_path: Path) -> None:
    """Scripts, newlines and non-ASCII never reach a JSONP body (error 10 in JSON instead)."""
    bad = ["alert(1);//", "x\n", "cb\n", "cb\nalert(1)", "</script>", "a b", "1abc", "a..b",
           "é", "cb;", "cb//", ""]
    with serving(lambda: _subsonic(tmp_path)) as (base, songs), requests.Session() as http:
        for endpoint in ENDPOINTS:
            for cb in bad:
                resp = http.get(f"{base}/rest/{endpoint}", timeout=60, params={
                    **ss.auth(), "f": "jsonp", "callback": cb, "id": songs[0],
                    "startSongId": songs[0], "endSongId": songs[1]})
                assert not resp.headers["Content-Type"].startswith("application/javascript"), \
                    (endpoint, cb, resp.text[:60])
                body = json.loads(resp.text)["subsonic-response"]
                assert body["status"] == "failed" and body["error"]["code"] == 10, (endpoint, cb)
            resp = http.get(f"{base}/rest/{endpoint}", timeout=60, params={
                **ss.auth(), "f": "jsonp", "callback": "my.cb_1", "id": songs[0],
                "startSongId": songs[0], "endSongId": songs[1]})
            assert resp.text.startswith("my.cb_1(") and resp.text.endswith(");")


# ---------------------------------------------------------------------------- Jellyfin


@contextlib.asynccontextmanager
async def _jellyfin(tmp: Path) -> AsyncIterator[tuple[str, str, list[str]]]:
    fake = FakeJellyfin()
    songs = jf._populate(fake)
    _uid, token = fake.add_user("alice", "alicepw")
    watch_secret(token)
    url = await fake.start()
    config = jf._config(tmp, url)
    await jf._write_synthetic(config, songs, set())
    app = create_app(config, adapter=None, refresh_seconds=None)
    try:
        async with TestServer(app, host="127.0.0.1") as ts:
            yield str(ts.make_url("")).rstrip("/"), token, [s.id for s in songs]
    finally:
        await fake.stop()


JF_TEMPLATES = ["/Items/{id}/InstantMix", "/Songs/{id}/InstantMix", "/Albums/{id}/InstantMix",
                "/Artists/{id}/InstantMix", "/Playlists/{id}/InstantMix",
                "/MusicGenres/{id}/InstantMix", "/MusicGenres/InstantMix", "/Artists/InstantMix",
                "/Items/{id}/Similar", "/Albums/{id}/Similar", "/Artists/{id}/Similar",
                "/AudioMuseAI/similar_tracks", "/AudioMuseAI/find_path", "/AudioMuseAI/health"]
JF_KEYS = st.sampled_from(["id", "limit", "Limit", "userId", "UserId", "fields", "item_id", "n",
                           "start_song_id", "end_song_id", "max_steps", "eliminate_duplicates",
                           "ParentId", "StartIndex"])
PATH_IDS = st.one_of(st.sampled_from(["", "x", "-1", "%2F", "..", "a" * 600, uuid.uuid4().hex,
                                      "00000000-0000-0000-0000-000000000000"]),
                     st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                    blacklist_characters="/?#"), max_size=30))


def _fuzz_jellyfin(tmp: Path, examples: int) -> int:
    calls = 0
    with serving(lambda: _jellyfin(tmp)) as (base, token, songs), requests.Session() as http:

        @_settings(examples)
        @given(template=st.sampled_from(JF_TEMPLATES),
               item=st.one_of(st.sampled_from(songs), PATH_IDS),
               query=st.lists(st.tuples(JF_KEYS, st.one_of(NASTY, st.sampled_from(songs))),
                              max_size=6))
        def one(template: str, item: str, query: list[tuple[str, str]]) -> None:
            nonlocal calls
            path = template.replace("{id}", requests.utils.quote(item, safe="") or "x")
            resp = http.get(base + path, params=query, headers={"X-Emby-Token": token},
                            timeout=60)
            calls += 1
            _check(resp.status_code, resp.content, f"{path} {query!r}")

        one()
        resp = http.get(f"{base}/AudioMuseAI/health", headers={"X-Emby-Token": token}, timeout=30)
        assert resp.status_code == 200
    return calls


def test_hypothesis_jellyfin_requests(tmp_path: Path) -> None:
    assert _fuzz_jellyfin(tmp_path, 120) >= 120


@pytest.mark.reliability
def test_hypothesis_jellyfin_requests_long(tmp_path: Path) -> None:
    assert _fuzz_jellyfin(tmp_path, 120 * SLOW) >= 120 * SLOW
