"""The Subsonic adapter against a real supysonic on loopback (and a tiny stub for LMS/Navidrome auth).

supysonic cannot do token auth or API keys and reports no per-song play
counts, so those paths are exercised with a small aiohttp stub that checks the
signatures the way Navidrome and LMS do.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from adapters.base import NoListeningHistory
from adapters.common import map_path, parse_path_map
from adapters.subsonic import (
    SubsonicAdapter,
    SubsonicAuthError,
    SubsonicClient,
    SubsonicError,
    SubsonicUnavailable,
)
from analysis.analyzer import run_analysis
from analysis.decode import DecodeError, fetch, redact_url
from analysis.store import LibraryStore
from musegate import library
from musegate.config import load_config
from tests.conftest import sine_mix, write_track
from tests.supysonic_server import Supysonic, generate_library

USERS = {"alice": "alicepw", "bob": "bobpw"}
SECRETS = ("alicepw", b"alicepw".hex(), "bobpw")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Supysonic]:
    music = generate_library(tmp_path / "music", artists=2, albums=1, tracks=3, seconds=5.0)
    async with Supysonic.start(tmp_path, music, users=USERS) as srv:
        yield srv


def adapter_for(srv: Supysonic, **kw: Any) -> SubsonicAdapter:
    return SubsonicAdapter(srv.url, "alice", USERS["alice"], **kw)


def counting(adapter: SubsonicAdapter) -> list[str]:
    """Record the endpoints the adapter calls (to see paging happen)."""
    calls: list[str] = []
    real = adapter.client.call

    async def call(endpoint: str, params: Any = (), **kw: Any) -> dict[str, Any]:
        calls.append(endpoint)
        return await real(endpoint, params, **kw)

    adapter.client.call = call  # type: ignore[method-assign]
    return calls


# ---- enumeration ------------------------------------------------------------------


async def test_search3_pages_and_album_walk_agree(server: Supysonic) -> None:
    paged = adapter_for(server, page_size=4)
    calls = counting(paged)
    walked = adapter_for(server, page_size=1, enumerate_with="albums")
    try:
        records = await paged.list_tracks({})
        assert paged.last_enumeration == "search3"
        assert calls.count("search3") == 2  # 4 + 2 songs
        assert len(records) == 6 and len({r.upstream_id for r in records}) == 6
        by_albums = await walked.list_tracks({})
        assert walked.last_enumeration == "albums"
    finally:
        await paged.close()
        await walked.close()
    assert {r.upstream_id for r in by_albums} == {r.upstream_id for r in records}
    song = next(r for r in records if r.title == "Song 1-0-2")
    assert song.source == f"subsonic:{server.url}"
    assert (song.artist, song.album) == ("Artist 1", "Album 1-0")
    assert song.path == "Artist 1/Album 1-0/03 Song 1-0-2.flac"
    assert song.size == (server.folders["music"] / song.path).stat().st_size
    assert song.duration and song.mtime
    assert song.raw["id"] == song.upstream_id and "playCount" not in song.raw


async def test_rescans_are_incremental(server: Supysonic, tmp_path: Path) -> None:
    adapter = adapter_for(server, page_size=5)
    try:
        async with await LibraryStore.open(tmp_path / "db.sqlite") as store:
            first = await library.scan(store, adapter)
            assert (first.added, first.removed) == (6, 0)

            known = await store.tracks_of_source(adapter.source)
            again = await adapter.list_tracks(known)
            assert all(rec is known[rec.upstream_id] for rec in again)  # reused, not rebuilt

            music = server.folders["music"]
            write_track(music / "Artist 9" / "Fresh" / "01 New.flac", sine_mix([300.0], 4.0),
                        title="New", artist="Artist 9", album="Fresh")
            await server.rescan()
            second = await library.scan(store, adapter)
            assert (second.added, second.changed, second.removed, second.unchanged) == (1, 0, 0, 6)
            assert "New" in {t.title for t in (await store.tracks_of_source(adapter.source)).values()}

            (music / "Artist 0" / "Album 0-0" / "01 Song 0-0-0.flac").unlink()
            await server.rescan()
            third = await library.scan(store, adapter)
            assert (third.added, third.removed, third.unchanged) == (0, 1, 6)
            titles = {t.title for t in (await store.tracks_of_source(adapter.source)).values()}
            assert "Song 0-0-0" not in titles and len(titles) == 6
    finally:
        await adapter.close()


# ---- auth ---------------------------------------------------------------------------


async def test_wrong_service_account_is_a_clear_error(server: Supysonic) -> None:
    adapter = SubsonicAdapter(server.url, "alice", "not-her-password")
    try:
        with pytest.raises(SubsonicAuthError) as err:
            await adapter.list_tracks({})
    finally:
        await adapter.close()
    text = str(err.value)
    assert server.url in text and "'alice'" in text and "upstream_password" in text
    assert "not-her-password" not in text and err.value.code == 40

    await server.stop()
    down = adapter_for(server)
    try:
        with pytest.raises(SubsonicUnavailable) as gone:
            await down.list_tracks({})
        assert server.url in str(gone.value) and "alicepw" not in str(gone.value)
        await server.start()
        assert len(await down.list_tracks({})) == 6  # and back
    finally:
        await down.close()


async def test_auto_auth_falls_back_to_password_on_supysonic(server: Supysonic) -> None:
    # supysonic speaks API 1.12: token auth answers error 10 (``p`` missing).
    async with SubsonicClient(server.url, "bob", USERS["bob"]) as client:
        assert client.mode is None
        await client.call("ping")
        assert client.mode == "password"
    async with SubsonicClient(server.url, "bob", USERS["bob"], auth="password") as client:
        assert (await client.call("getMusicFolders"))["status"] == "ok"
    async with SubsonicClient(server.url, "bob", USERS["bob"], auth="token") as client:
        with pytest.raises(SubsonicError) as err:
            await client.call("ping")
        assert err.value.code == 10


class StubServer:
    """Answers like Navidrome (``kind='token'``: token auth) or LMS (``kind='lms'``: error 41).

    Every request's auth params are recorded so the tests can see what was sent.
    """

    def __init__(self, kind: str, search_fails: bool = False) -> None:
        self.kind = kind
        self.search_fails = search_fails
        self.seen: list[dict[str, str]] = []
        self.songs = [
            {"id": f"lms:track:{i}", "title": f"T{i}", "artist": "A", "album": "B",
             "albumId": "lms:album:1", "size": 1000 + i, "duration": 10,
             "path": f"A/B/{i}.flac", "created": "2024-01-01T00:00:00Z",
             "playCount": i, "played": "2024-02-01T10:00:00Z" if i else None}
            for i in range(3)
        ]

    def envelope(self, **payload: Any) -> web.Response:
        return web.json_response({"subsonic-response": {
            "status": "ok", "version": "1.16.1", "type": "stub", **payload}})

    def error(self, code: int, message: str) -> web.Response:
        return web.json_response({"subsonic-response": {
            "status": "failed", "version": "1.16.1", "error": {"code": code, "message": message}}})

    def authorised(self, q: Any) -> web.Response | None:
        if q.get("apiKey"):
            return None if q["apiKey"] == "the-key" else self.error(44, "Invalid API key")
        if "t" in q:
            if self.kind == "lms":
                return self.error(41, "Token authentication not supported")
            want = hashlib.md5(("s3cret" + q["s"]).encode()).hexdigest()
            return None if q["t"] == want and q.get("u") == "svc" else self.error(40, "Wrong username or password")
        password = q.get("p", "")
        if password.startswith("enc:"):
            password = bytes.fromhex(password[4:]).decode()
        return None if password == "s3cret" and q.get("u") == "svc" else self.error(40, "Wrong username or password")

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query
        self.seen.append(dict(q))
        refusal = self.authorised(q)
        if refusal is not None:
            return refusal
        assert (q["f"], q["c"], q["v"]) == ("json", "musegate", "1.16.1")
        name = request.match_info["name"].removesuffix(".view")
        if name == "ping":
            return self.envelope()
        if name == "search3":
            if self.search_fails:
                return self.error(0, "Unknown method")
            off, n = int(q["songOffset"]), int(q["songCount"])
            return self.envelope(searchResult3={"song": self.songs[off:off + n]})
        if name == "getAlbumList2":
            return self.envelope(albumList2={"album": [{"id": "lms:album:1", "name": "B"}]})
        if name == "getAlbum":
            return self.envelope(album={"id": q["id"], "song": self.songs})
        return self.error(0, f"unknown {name}")

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/rest/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def test_token_auth_and_lms_fallback_on_stubs() -> None:
    navidrome = StubServer("token")
    async with navidrome as url, SubsonicClient(url, "svc", "s3cret") as client:
        await client.call("ping")
        await client.call("ping")
        assert client.mode == "token"
        assert all("t" in q and "s" in q and "p" not in q for q in navidrome.seen)
        assert len({q["s"] for q in navidrome.seen}) == len(navidrome.seen) == 3  # negotiation + 2; fresh salts

    lms = StubServer("lms")
    async with lms as url:
        adapter = SubsonicAdapter(url, "svc", "s3cret", page_size=2)
        try:
            records = await adapter.list_tracks({})
        finally:
            await adapter.close()
        assert adapter.client.mode == "password"
        assert [q.get("p") for q in lms.seen[2:]] == ["enc:" + b"s3cret".hex()] * (len(lms.seen) - 2)
        assert [r.upstream_id for r in records] == ["lms:track:0", "lms:track:1", "lms:track:2"]
        async with SubsonicClient(url, "", api_key="the-key") as keyed:
            await keyed.call("ping")
            assert keyed.mode == "apikey" and "u" not in lms.seen[-1]
        async with SubsonicClient(url, "", api_key="wrong", auth="apikey") as keyed:
            with pytest.raises(SubsonicAuthError) as err:
                await keyed.call("ping")
            assert err.value.code == 44 and "wrong" not in str(err.value)


async def test_album_walk_when_search3_fails_and_play_counts() -> None:
    stub = StubServer("token", search_fails=True)
    async with stub as url:
        adapter = SubsonicAdapter(url, "svc", "s3cret")
        try:
            records = await adapter.list_tracks({})
            assert adapter.last_enumeration == "albums" and len(records) == 3
            assert all("playCount" not in r.raw and "played" not in r.raw for r in records)
            history = await adapter.listening_history()
            with pytest.raises(NoListeningHistory):
                await adapter.listening_history("someone-else")
        finally:
            await adapter.close()
    assert [(h.upstream_id, h.play_count) for h in history] == [("lms:track:2", 2), ("lms:track:1", 1)]
    assert history[0].last_played is not None


# ---- audio --------------------------------------------------------------------------


async def test_path_map_used_only_when_sizes_match(server: Supysonic, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(server.folders["music"], mirror)
    changed = mirror / "Artist 0" / "Album 0-0" / "02 Song 0-0-1.flac"
    changed.write_bytes(changed.read_bytes() + b"\0")  # a stale copy
    adapter = adapter_for(server, path_map=f"={mirror}")
    try:
        records = await adapter.list_tracks({})
        where = {r.title: adapter.audio_location(r) for r in records}
    finally:
        await adapter.close()
    assert where["Song 1-0-0"] == str(mirror / "Artist 1" / "Album 1-0" / "01 Song 1-0-0.flac")
    url = where["Song 0-0-1"]
    assert url.startswith(f"{server.url}/rest/download?") and "id=" in url
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        body = await resp.read()
    assert body == (server.folders["music"] / "Artist 0" / "Album 0-0" / "02 Song 0-0-1.flac").read_bytes()

    pairs = parse_path_map("/music=/mnt/a; /music/x=/mnt/b ;=/rel")
    assert map_path("/music/x/1.flac", pairs) == Path("/mnt/b/1.flac")
    assert map_path("/music/y/1.flac", pairs) == Path("/mnt/a/y/1.flac")
    assert map_path("/musicals/1.flac", pairs) is None
    assert map_path("z/1.flac", pairs) == Path("/rel/z/1.flac")


async def test_downloaded_audio_is_analysed_without_temp_files_or_leaked_credentials(
    server: Supysonic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    scratch = tmp_path / "tmpdir"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # the spawned workers' temp dir
    config = load_config(None, env={}, overrides={"data_dir": str(tmp_path / "data"), "workers": 1})
    adapter = adapter_for(server)
    try:
        async with await LibraryStore.open(config.db_path) as store:
            await library.scan(store, adapter)
            # One song vanishes after the scan: its download fails, and the reason is clean.
            (server.folders["music"] / "Artist 1" / "Album 1-0" / "03 Song 1-0-2.flac").unlink()
            located: list[str] = []

            def locate(track: Any) -> str:
                located.append(adapter.audio_location(track))
                return located[-1]

            report = await run_analysis(store, library.analyzer_settings(config), locate=locate)
            assert (report.analysed, report.failed) == (5, 1)
            assert all(u.startswith(f"{server.url}/rest/download?") for u in located)
            reasons = [reason for _, reason in report.failures]
            stored = [reason for _, reason, _ in await store.failures()]
            for text in [*reasons, *stored]:
                assert "download" in text or "audio" in text
                assert not any(s in text for s in SECRETS) and "t=" not in text
            seed = await library.resolve_track(store, "Song 0-0-0")
            result = await library.similar(store, config, seed, 2)
            assert [t.artist for t, _ in result.neighbours] == ["Artist 0", "Artist 0"]
    finally:
        await adapter.close()
    # onnxruntime itself writes a 51-byte session id file ``.ses`` into TMPDIR; nothing else may appear.
    assert [p.name for p in scratch.iterdir() if p.name != ".ses"] == []
    assert not any(s in caplog.text for s in SECRETS)


def test_fetch_caps_size_and_redacts(tmp_path: Path) -> None:
    text = "GET http://h:1/rest/download?u=a&p=enc:61&id=3 failed; also https://x/y?apiKey=k"
    assert redact_url(text) == (
        "GET http://h:1/rest/download?<redacted> failed; also https://x/y?<redacted>"
    )
    with pytest.raises(DecodeError) as err:
        fetch("http://127.0.0.1:9/rest/download?u=a&p=enc:736563726574&id=1", timeout=5)
    assert "enc:" not in str(err.value) and "?<redacted>" in str(err.value)


async def test_fetch_limits_and_rejects_error_bodies(server: Supysonic) -> None:
    import asyncio

    adapter = adapter_for(server)
    try:
        records = await adapter.list_tracks({})
        url = adapter.audio_location(records[0])
        bad = adapter.client.signed_url("download", [("id", "not-a-song")])
    finally:
        await adapter.close()
    with pytest.raises(DecodeError) as small:
        await asyncio.to_thread(fetch, url, 1000)
    assert "limit" in str(small.value) and "enc:" not in str(small.value)
    with pytest.raises(DecodeError) as notaudio:
        await asyncio.to_thread(fetch, bad)
    assert "instead of audio" in str(notaudio.value) and "enc:" not in str(notaudio.value)
    audio = await asyncio.to_thread(fetch, url)
    assert audio.getvalue()[:4] == b"fLaC"


# ---- playlists and history ----------------------------------------------------------


async def test_playlists_are_created_then_replaced(server: Supysonic) -> None:
    adapter = adapter_for(server)
    try:
        records = await adapter.list_tracks({})
        first = await adapter.write_playlist("musegate mix", records[:3])
        second = await adapter.write_playlist("musegate mix", list(reversed(records[2:6])))
        body = await adapter.client.call("getPlaylist", id=second)
        listed = await adapter.client.call("getPlaylists")
    finally:
        await adapter.close()
    assert first == second
    entries = [e["id"] for e in body["playlist"]["entry"]]
    assert entries == [r.upstream_id for r in reversed(records[2:6])]
    names = [p["name"] for p in listed["playlists"]["playlist"]]
    assert names.count("musegate mix") == 1


async def test_history_follows_streams(server: Supysonic) -> None:
    """supysonic counts ``stream`` (not ``scrobble``) and has no per-song playCount."""
    adapter = adapter_for(server)
    try:
        with pytest.raises(NoListeningHistory):
            await adapter.listening_history()
        records = await adapter.list_tracks({})
        played = next(r for r in records if r.album == "Album 1-0")
        url = adapter.client.signed_url("stream", [("id", played.upstream_id)])
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200
            await resp.read()
        history = await adapter.listening_history("alice")
    finally:
        await adapter.close()
    album_songs = {r.upstream_id for r in records if r.album == "Album 1-0"}
    assert {h.upstream_id for h in history} == album_songs
    assert all(h.play_count >= 1 for h in history)




async def test_py_sonic_talks_to_the_fixture(server: Supysonic) -> None:
    """The real client the gateway tests use: against supysonic it needs ``legacyAuth=True``."""
    import asyncio

    import libsonic

    def browse() -> tuple[bool, int]:
        conn = libsonic.Connection(
            "http://127.0.0.1", "alice", USERS["alice"], port=server.port, legacyAuth=True
        )
        found = conn.search3("", songCount=50)["searchResult3"]["song"]
        return conn.ping(), len(found)

    assert await asyncio.to_thread(browse) == (True, 6)


async def test_cli_analyze_uses_the_configured_server(server: Supysonic, tmp_path: Path) -> None:
    """`musegate analyze` with no folder scans and analyses the music server it is configured for."""
    import asyncio
    import json
    import os
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "MUSEGATE_SOURCE": "subsonic",
           "MUSEGATE_UPSTREAM_URL": server.url, "MUSEGATE_UPSTREAM_USER": "alice",
           "MUSEGATE_UPSTREAM_PASSWORD": USERS["alice"], "MUSEGATE_WORKERS": "2"}
    base = [sys.executable, "-m", "cli", "--data-dir", str(tmp_path / "cli-data")]

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *base, *args, env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 300)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run("analyze", "--no-progress")
    assert code == 0, err
    assert f"scanned subsonic:{server.url}: 6 new" in out
    assert "analysed 6 tracks" in out and "0 failed" in out
    assert USERS["alice"] not in out + err
    code, out, _ = await run("status", "--json")
    status = json.loads(out)
    assert (status["tracks"], status["analysed"], status["pending"]) == (6, 6, 0)
