"""The Lyrion adapter against the fake LMS (tests/fakes/lyrion.py, from LMS's CLI docs)."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from adapters.base import HistorySource, NoListeningHistory, PlaylistWriter
from adapters.lyrion import (
    LyrionAdapter,
    LyrionAuthError,
    LyrionClient,
    LyrionUnavailable,
    path_from_url,
    url_from_path,
)
from analysis.analyzer import run_analysis
from analysis.decode import fetch, redact_url
from analysis.store import LibraryStore
from musegate import library
from musegate.config import load_config
from musegate.library import adapter_for
from tests.conftest import SR, sine_mix, write_track
from tests.fakes.lyrion import FakeLyrion

FAMILIES = {"low": [55.0, 110.0], "mid": [440.0, 660.0], "noise": []}
PASSWORD = "s3cret pass/word"


@dataclass
class Server:
    fake: FakeLyrion
    url: str
    media: Path  # the server's own files (what LMS reports as /music/...)
    ids: dict[str, int]  # title -> LMS track id


def family_audio(family: str, i: int, seconds: float = 8.0) -> np.ndarray:
    freqs = FAMILIES[family]
    if freqs:
        return sine_mix([f * (1 + 0.01 * i) for f in freqs], seconds, seed=i)
    return (np.random.default_rng(i).standard_normal(int(seconds * SR)) * 0.2).astype(np.float32)


def fill(fake: FakeLyrion, media: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    for family in FAMILIES:
        for i in range(2):
            rel = f"{family.title()} Artist/{family} album/{i + 1:02d} {family} {i}.flac"
            file = write_track(media / rel, family_audio(family, i))
            ids[f"{family} {i}"] = fake.add_track(
                f"{family} {i}", f"{family.title()} Artist", f"{family} album", f"/music/{rel}",
                file, genres=["Ambient" if family != "noise" else "Noise"], duration=8.0,
                year=2001, tracknum=i + 1, playcount=i * 3, featuring=["Guest"] if i else [],
            )
    return ids


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """Password-protected LMS: six local songs (three families) and one radio stream."""
    fake = FakeLyrion(user="admin", password=PASSWORD)
    media = tmp_path / "server-media"
    ids = fill(fake, media)
    fake.add_remote_track("Radio", "Station", "http://radio.example/stream.mp3")
    url = await fake.start()
    try:
        yield Server(fake, url, media, ids)
    finally:
        await fake.stop()


def adapter_of(server: Server, **kw: Any) -> LyrionAdapter:
    return LyrionAdapter(server.url, user="admin", password=PASSWORD, **kw)


# ---- urls --------------------------------------------------------------------------------


def test_file_urls_and_paths() -> None:
    assert path_from_url("file:///music/A%20B/01%20%C3%A9t%C3%A9.flac") == "/music/A B/01 été.flac"
    assert path_from_url("file:///C:/Music/x%23y.flac") == "C:/Music/x#y.flac"
    assert path_from_url("http://radio/stream") is None
    assert url_from_path("/music/A B/été#1.flac") == "file:///music/A%20B/%C3%A9t%C3%A9%231.flac"
    assert path_from_url(url_from_path("/music/a & b/c.flac")) == "/music/a & b/c.flac"


# ---- enumeration -------------------------------------------------------------------------


async def test_pages_through_titles_and_skips_remote_tracks(server: Server) -> None:
    adapter = adapter_of(server, page_size=3)
    try:
        records = await adapter.list_tracks({})
    finally:
        await adapter.close()
    pages = [c for c in server.fake.commands if c[0] == "titles"]
    assert [c[1:3] for c in pages] == [["0", "3"], ["3", "3"], ["6", "3"]]
    assert all(c[3].startswith("tags:") and "u" in c[3] and "f" in c[3] for c in pages)
    assert sorted(r.title for r in records) == sorted(server.ids)  # no "Radio"
    song = next(r for r in records if r.title == "mid 1")
    assert song.source == f"lyrion:{server.url}" and song.upstream_id == str(server.ids["mid 1"])
    assert song.path == "/music/Mid Artist/mid album/02 mid 1.flac"
    assert song.raw["url"] == "file:///music/Mid%20Artist/mid%20album/02%20mid%201.flac"
    assert (song.artist, song.album, song.genre, song.year) == ("Mid Artist", "mid album", "Ambient", 2001)
    assert song.raw["artist"] == "Mid Artist"  # the primary artist, not "Mid Artist, Guest"
    assert song.size == (server.media / "Mid Artist/mid album/02 mid 1.flac").stat().st_size
    assert song.duration == pytest.approx(8.0) and song.mtime == 1_700_000_000
    assert "playcount" not in song.raw  # play counts change; a scan must not see that as an edit


async def test_rescans_are_incremental(server: Server, tmp_path: Path) -> None:
    adapter = adapter_of(server, page_size=4)
    try:
        async with await LibraryStore.open(tmp_path / "db.sqlite") as store:
            first = await library.scan(store, adapter)
            assert (first.added, first.removed) == (6, 0)
            known = await store.tracks_of_source(adapter.source)
            again = await adapter.list_tracks(known)
            assert all(rec is known[rec.upstream_id] for rec in again)  # reused, not rebuilt

            server.fake.tracks[server.ids["low 0"]].playcount += 5  # listening is not an edit
            new = write_track(server.media / "new.flac", sine_mix([300.0], 4.0))
            server.fake.add_track("New", "Nine", "Fresh", "/music/new.flac", new, duration=4.0)
            second = await library.scan(store, adapter)
            assert (second.added, second.changed, second.removed, second.unchanged) == (1, 0, 0, 6)

            del server.fake.tracks[server.ids["noise 0"]]
            server.fake.tracks[server.ids["low 1"]].title = "low 1 (remaster)"
            write_track(server.media / "Mid Artist/mid album/01 mid 0.flac", sine_mix([500.0], 6.0))
            server.fake.tracks[server.ids["mid 0"]].mtime += 60
            third = await library.scan(store, adapter)
            assert (third.added, third.changed, third.removed, third.unchanged) == (0, 1, 1, 5)
            titles = {t.title for t in (await store.tracks_of_source(adapter.source)).values()}
            assert "noise 0" not in titles and "low 1 (remaster)" in titles and len(titles) == 6
    finally:
        await adapter.close()


# ---- credentials -------------------------------------------------------------------------


async def test_credentials_are_checked_with_basic_auth(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = LyrionClient(server.url, "admin", PASSWORD)
    try:
        assert await good.connect() == "9.0.2"
    finally:
        await good.close()
    assert server.fake.auth_headers[-1] and server.fake.auth_headers[-1].startswith("Basic ")
    for user, password in (("admin", "wrong"), ("", "")):
        bad = LyrionClient(server.url, user, password)
        try:
            with pytest.raises(LyrionAuthError, match="401") as err:
                await bad.connect()
            assert "upstream_password" in str(err.value) and PASSWORD not in str(err.value)
        finally:
            await bad.close()
    adapter = adapter_of(server)
    try:
        assert await adapter.check_credentials("admin", PASSWORD) is True
        assert await adapter.check_credentials("admin", "nope") is False
        with pytest.raises(LyrionAuthError):
            await LyrionAdapter(server.url, user="admin", password="x").list_tracks({})
        server.fake.blocked = True
        with pytest.raises(LyrionAuthError, match="allowed IP"):
            await adapter.list_tracks({})
    finally:
        await adapter.close()
    assert PASSWORD not in caplog.text


async def test_an_unreachable_or_foreign_server_is_named(tmp_path: Path) -> None:
    fake = FakeLyrion()
    url = await fake.start()
    await fake.stop()
    client = LyrionClient(url)
    try:
        with pytest.raises(LyrionUnavailable, match="cannot reach") as err:
            await client.connect()
        assert url in str(err.value)
    finally:
        await client.close()
    fake.version = ""
    async with fake:
        client = LyrionClient(url)
        try:
            with pytest.raises(LyrionUnavailable, match="is this LMS"):
                await client.connect()
            fake._run = lambda command: None  # type: ignore[method-assign]  # LMS answers {}
            with pytest.raises(LyrionUnavailable, match="without a count"):
                await LyrionAdapter(url, client=client).list_tracks({})
        finally:
            await client.close()


def test_config_selects_the_lyrion_adapter(tmp_path: Path) -> None:
    config = load_config(None, env={"MUSEGATE_SOURCE": "lyrion",
                                    "MUSEGATE_UPSTREAM_URL": "http://lms:9000/",
                                    "MUSEGATE_LMS_CLIENTS": "192.168.1.0/24, 10.0.0.5"})
    adapter = adapter_for(config)
    assert isinstance(adapter, LyrionAdapter) and adapter.source == "lyrion:http://lms:9000"
    assert config.lms_clients == "192.168.1.0/24,10.0.0.5/32"
    from musegate.config import ConfigError

    with pytest.raises(ConfigError, match="lms_clients"):
        load_config(None, env={"MUSEGATE_LMS_CLIENTS": "lms.local"})


# ---- audio -------------------------------------------------------------------------------


async def test_audio_comes_from_the_path_map_or_the_download(server: Server, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(server.media, mirror)
    stale = mirror / "Mid Artist/mid album/01 mid 0.flac"
    stale.write_bytes(stale.read_bytes() + b"\0")
    adapter = adapter_of(server, path_map=f"/music={mirror}")
    try:
        records = {r.title: r for r in await adapter.list_tracks({})}
        where = {t: adapter.audio_location(r) for t, r in records.items()}
    finally:
        await adapter.close()
    assert where["low 1"] == str(mirror / "Low Artist/low album/02 low 1.flac")
    url = where["mid 0"]
    assert url.endswith(f"/music/{server.ids['mid 0']}/download") and "admin:" in url
    assert PASSWORD not in redact_url(url) and "admin" not in redact_url(url)
    body = await asyncio.to_thread(fetch, url)  # the analyzer's downloader sends the URL's credentials as Basic auth
    assert body.read() == (server.media / "Mid Artist/mid album/01 mid 0.flac").read_bytes()
    assert server.fake.downloads == [server.ids["mid 0"]]


async def test_downloads_are_analysed_and_no_secret_is_logged(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = load_config(None, env={}, overrides={"data_dir": str(tmp_path / "data"), "workers": 1})
    adapter = adapter_of(server)
    try:
        async with await LibraryStore.open(config.db_path) as store:
            await library.scan(store, adapter)
            server.fake.tracks[server.ids["noise 1"]].file = None  # gone after the scan: 404
            report = await run_analysis(store, library.analyzer_settings(config),
                                        locate=adapter.audio_location)
            assert (report.analysed, report.failed) == (5, 1)
            for _, reason, _ in await store.failures():
                assert "404" in reason and PASSWORD not in reason and "admin" not in reason
            seed = await library.resolve_track(store, "low 0")
            result = await library.similar(store, config, seed, 1)
            assert [t.title for t, _ in result.neighbours] == ["low 1"]
    finally:
        await adapter.close()
    assert caplog.records and PASSWORD not in caplog.text


# ---- playlists and history -----------------------------------------------------------------


async def test_playlists_are_created_then_refilled(server: Server) -> None:
    adapter = adapter_of(server)
    assert isinstance(adapter, PlaylistWriter) and isinstance(adapter, HistorySource)
    try:
        records = {r.title: r for r in await adapter.list_tracks({})}
        first = await adapter.write_playlist("Calm", [records["low 0"], records["mid 1"]])
        playlist = server.fake.playlists[int(first)]
        assert playlist.name == "Calm"
        assert playlist.urls == [records["low 0"].raw["url"], records["mid 1"].raw["url"]]
        again = await adapter.write_playlist("Calm", [records["mid 0"], records["low 0"], records["noise 0"]])
        assert again == first and len(server.fake.playlists) == 1
        assert playlist.urls == [records[t].raw["url"] for t in ("mid 0", "low 0", "noise 0")]
        adds = [c for c in server.fake.commands if c[:3] == ["playlists", "edit", "cmd:add"]]
        assert adds[0][3:] == [f"playlist_id:{first}", f"url:{records['low 0'].raw['url']}", "title:low 0"]
    finally:
        await adapter.close()


async def test_history_is_the_servers_play_counts(server: Server) -> None:
    adapter = adapter_of(server)
    try:
        history = await adapter.listening_history("anyone")  # LMS has no users
        assert [(e.upstream_id, e.play_count) for e in history] == [
            (str(server.ids[f"{f} 1"]), 3) for f in ("low", "mid", "noise")
        ]
        assert all(e.last_played is None for e in history)
        for t in server.fake.tracks.values():
            t.playcount = 0
        with pytest.raises(NoListeningHistory, match="no plays"):
            await adapter.listening_history()
    finally:
        await adapter.close()
