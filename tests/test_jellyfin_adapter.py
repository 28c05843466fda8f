"""The Jellyfin adapter against the fake Jellyfin (tests/fakes/jellyfin.py).

The fake follows Jellyfin's published API (auth header parsing, BaseItemDto,
QueryResult, per-user visibility); a real client library logging in and
browsing it checks that its shapes are the ones clients expect.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from adapters.base import HistorySource, NoListeningHistory, PlaylistWriter
from adapters.jellyfin import (
    JellyfinAdapter,
    JellyfinAuthError,
    JellyfinClient,
    JellyfinError,
    JellyfinUnavailable,
)
from analysis.analyzer import run_analysis
from analysis.store import LibraryStore
from musegate import library
from musegate.config import load_config
from musegate.library import adapter_for
from tests.conftest import SR, sine_mix, write_track
from tests.fakes.jellyfin import FakeJellyfin

FAMILIES = {"low": [55.0, 110.0], "mid": [440.0, 660.0], "noise": []}


@dataclass
class Server:
    fake: FakeJellyfin
    url: str
    media: Path  # the server's own files (what Jellyfin reports as /media/...)
    songs: dict[str, str]  # title → item id
    admin: str
    admin_token: str
    bob: str
    bob_token: str
    key: str

    @property
    def secrets(self) -> list[str]:
        return [self.admin_token, self.bob_token, self.key, "adminpw", "bobpw"]


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """Two libraries: Music (low and mid families, 4 songs) and Kids (noise, 2 songs)."""
    fake = FakeJellyfin()
    fake.add_library("Music")
    fake.add_library("Kids")
    admin, admin_token = fake.add_user("admin", "adminpw", admin=True)
    bob, bob_token = fake.add_user("bob", "bobpw", libraries=["Kids"])
    key = fake.add_api_key("musegate")
    media = tmp_path / "server-media"
    songs: dict[str, str] = {}
    for family, freqs in FAMILIES.items():
        lib = "Kids" if family == "noise" else "Music"
        genre = {"low": "Ambient", "mid": "Ambient", "noise": "Noise"}[family]
        for i in range(2):
            if freqs:
                audio = sine_mix([f * (1 + 0.01 * i) for f in freqs], 8.0, seed=i)
            else:
                audio = (np.random.default_rng(i).standard_normal(8 * SR) * 0.2).astype(np.float32)
            rel = f"{lib.lower()}/{family}/{family}{i}.flac"
            file = write_track(media / rel, audio)
            title = f"{family} {i}"
            songs[title] = fake.add_song(
                lib, title, f"Artist {family}", f"Album {family}", genre, f"/media/{rel}", 8.0, file
            )
    url = await fake.start()
    try:
        yield Server(fake, url, media, songs, admin, admin_token, bob, bob_token, key)
    finally:
        await fake.stop()


def item_requests(fake: FakeJellyfin) -> list[dict[str, str]]:
    return [
        {k.lower(): v for k, v in seen.query.items()}
        for seen in fake.requests
        if seen.path.lower().endswith("/items") and "/playlists/" not in seen.path.lower()
    ]


# ---- enumeration ---------------------------------------------------------------------


async def test_pages_through_every_song_and_restricts_to_named_libraries(server: Server) -> None:
    adapter = JellyfinAdapter(server.url, user="admin", password="adminpw", page_size=4)
    only_music = JellyfinAdapter(server.url, api_key=server.key, libraries="music ", page_size=1)
    try:
        records = await adapter.list_tracks({})
        pages = [q for q in item_requests(server.fake) if q.get("includeitemtypes") == "Audio"]
        assert [q["startindex"] for q in pages] == ["0", "4"] and pages[0]["limit"] == "4"
        assert pages[0]["recursive"] == "true" and "Path" in pages[0]["fields"]
        assert "MediaSources" in pages[0]["fields"] and "Genres" in pages[0]["fields"]
        assert len(records) == 6 and {r.upstream_id for r in records} == set(server.songs.values())

        server.fake.requests.clear()
        music = await only_music.list_tracks({})
        assert {r.title for r in music} == {"low 0", "low 1", "mid 0", "mid 1"}
        pages = [q for q in item_requests(server.fake) if q.get("includeitemtypes") == "Audio"]
        assert len(pages) == 4 and {q["parentid"] for q in pages} == {server.fake._library_id("Music")}
        assert any(s.path == "/Library/MediaFolders" for s in server.fake.requests)  # API key: no views

        only_music.libraries = ["Music", "Podcasts"]
        with pytest.raises(JellyfinError) as err:
            await only_music.list_tracks({})
        assert "'Podcasts'" in str(err.value) and "Kids" in str(err.value) and server.url in str(err.value)
    finally:
        await adapter.close()
        await only_music.close()

    song = next(r for r in records if r.title == "mid 1")
    assert song.source == f"jellyfin:{server.url}" and song.upstream_id == server.songs["mid 1"]
    assert (song.artist, song.album, song.genre) == ("Artist mid", "Album mid", "Ambient")
    assert song.path == "/media/music/mid/mid1.flac"
    assert song.size == (server.media / "music/mid/mid1.flac").stat().st_size
    assert song.duration == pytest.approx(8.0) and song.mtime
    assert song.raw["Id"] == song.upstream_id and song.raw["Type"] == "Audio"
    assert not {"UserData", "Path", "MediaSources"} & set(song.raw)


async def test_a_restricted_account_scans_only_what_it_sees(server: Server) -> None:
    bob = JellyfinAdapter(server.url, user="bob", password="bobpw")
    try:
        titles = {r.title for r in await bob.list_tracks({})}
        assert titles == {"noise 0", "noise 1"}
        assert await bob.library_ids() == {"Kids": server.fake._library_id("Kids")}
        bob.libraries = ["Music"]
        with pytest.raises(JellyfinError, match="no library named 'Music'"):
            await bob.list_tracks({})
    finally:
        await bob.close()


async def test_rescans_are_incremental(server: Server, tmp_path: Path) -> None:
    adapter = JellyfinAdapter(server.url, api_key=server.key, page_size=4)
    try:
        async with await LibraryStore.open(tmp_path / "db.sqlite") as store:
            first = await library.scan(store, adapter)
            assert (first.added, first.removed) == (6, 0)

            known = await store.tracks_of_source(adapter.source)
            again = await adapter.list_tracks(known)
            assert all(rec is known[rec.upstream_id] for rec in again)  # reused, not rebuilt

            fresh = write_track(server.media / "music/new.flac", sine_mix([300.0], 4.0))
            server.fake.add_song("Music", "New", "Artist 9", "Fresh", "Pop", "/media/music/new.flac", 4.0, fresh)
            second = await library.scan(store, adapter)
            assert (second.added, second.changed, second.removed, second.unchanged) == (1, 0, 0, 6)

            server.fake.remove_item(server.songs["low 0"])
            server.fake.items[server.songs["low 1"]].name = "low 1 (remaster)"  # metadata only
            write_track(server.media / "music/mid/mid0.flac", sine_mix([500.0], 6.0))  # new audio
            third = await library.scan(store, adapter)
            assert (third.added, third.changed, third.removed, third.unchanged) == (0, 1, 1, 5)
            titles = {t.title for t in (await store.tracks_of_source(adapter.source)).values()}
            assert "low 0" not in titles and "low 1 (remaster)" in titles and len(titles) == 6
    finally:
        await adapter.close()


# ---- audio ---------------------------------------------------------------------------


async def test_path_map_is_used_only_when_sizes_match(server: Server, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    shutil.copytree(server.media, mirror)
    stale = mirror / "music/mid/mid0.flac"
    stale.write_bytes(stale.read_bytes() + b"\0")
    adapter = JellyfinAdapter(server.url, api_key=server.key, path_map=f"/media={mirror}")
    try:
        records = await adapter.list_tracks({})
        where = {r.title: adapter.audio_location(r) for r in records}
    finally:
        await adapter.close()
    assert where["low 1"] == str(mirror / "music/low/low1.flac")
    url = where["mid 0"]
    assert url == f"{server.url}/Items/{server.songs['mid 0']}/Download?api_key={server.key}"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body == (server.media / "music/mid/mid0.flac").read_bytes()


async def test_downloads_are_analysed_end_to_end_and_no_secret_is_logged(
    server: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = load_config(None, env={}, overrides={"data_dir": str(tmp_path / "data"), "workers": 1})
    adapter = JellyfinAdapter(server.url, user="admin", password="adminpw")
    try:
        async with await LibraryStore.open(config.db_path) as store:
            await library.scan(store, adapter)
            server.fake.remove_item(server.songs["noise 1"])  # vanishes after the scan: 404
            located: list[str] = []

            def locate(track: Any) -> str:
                located.append(adapter.audio_location(track))
                return located[-1]

            report = await run_analysis(store, library.analyzer_settings(config), locate=locate)
            assert (report.analysed, report.failed) == (5, 1)
            assert all(u.startswith(f"{server.url}/Items/") and "/Download?api_key=" in u for u in located)
            downloads = [s for s in server.fake.requests if s.path.endswith("/Download")]
            assert len(downloads) == 6
            reasons = [reason for _, reason in report.failures]
            stored = [reason for _, reason, _ in await store.failures()]
            for text in [*reasons, *stored]:
                assert "404" in text and not any(s in text for s in server.secrets)
            seed = await library.resolve_track(store, "low 0")
            result = await library.similar(store, config, seed, 1)
            assert [t.title for t, _ in result.neighbours] == ["low 1"]
    finally:
        await adapter.close()
    assert caplog.records and not any(s in caplog.text for s in server.secrets)


# ---- playlists and history --------------------------------------------------------------


async def test_playlists_are_created_then_refilled(server: Server) -> None:
    adapter = JellyfinAdapter(server.url, user="admin", password="adminpw")
    assert isinstance(adapter, PlaylistWriter) and isinstance(adapter, HistorySource)
    try:
        records = {r.title: r for r in await adapter.list_tracks({})}
        first = await adapter.write_playlist("Calm", [records["low 0"], records["mid 1"]])
        playlist = server.fake.items[first]
        assert playlist.type == "Playlist" and playlist.owner == server.admin
        assert [i for _, i in playlist.entries] == [server.songs["low 0"], server.songs["mid 1"]]

        again = await adapter.write_playlist("Calm", [records["mid 0"], records["low 0"], records["noise 0"]])
        assert again == first
        assert [i for _, i in playlist.entries] == [server.songs[t] for t in ("mid 0", "low 0", "noise 0")]
        assert sum(1 for i in server.fake.items.values() if i.type == "Playlist") == 1
        assert any(s.method == "POST" and s.path == f"/Playlists/{first}/Items" for s in server.fake.requests)
    finally:
        await adapter.close()

    keyed = JellyfinAdapter(server.url, api_key=server.key)
    try:
        with pytest.raises(JellyfinError, match="upstream_user"):
            await keyed.write_playlist("Nope", [records["low 0"]])
    finally:
        await keyed.close()
    as_bob = JellyfinAdapter(server.url, api_key=server.key, user="bob")
    try:
        theirs = await as_bob.write_playlist("Calm", [records["noise 1"]])
        assert theirs != first and server.fake.items[theirs].owner == server.bob
    finally:
        await as_bob.close()


async def test_listening_history_is_per_user(server: Server) -> None:
    fake = server.fake
    fake.set_user_data(server.admin, server.songs["low 0"], play_count=5, last_played=1_700_000_500.0)
    fake.set_user_data(server.admin, server.songs["mid 1"], play_count=2, last_played=1_700_000_900.0)
    fake.set_user_data(server.admin, server.songs["noise 0"], play_count=2, last_played=1_700_001_000.0)
    fake.set_user_data(server.bob, server.songs["noise 1"], play_count=7)
    fake.set_user_data(server.bob, server.songs["low 1"], play_count=9)  # a library bob cannot see
    admin = JellyfinAdapter(server.url, user="admin", password="adminpw")
    keyed = JellyfinAdapter(server.url, api_key=server.key)
    bob = JellyfinAdapter(server.url, api_key=server.bob_token)  # a user's own access token
    try:
        mine = await admin.listening_history()
        assert [(e.upstream_id, e.play_count) for e in mine] == [
            (server.songs["low 0"], 5), (server.songs["noise 0"], 2), (server.songs["mid 1"], 2)]
        assert mine[0].last_played == pytest.approx(1_700_000_500.0)
        assert [e.play_count for e in await admin.listening_history("admin")] == [5, 2, 2]
        theirs = await keyed.listening_history("Bob")
        assert [(e.upstream_id, e.play_count) for e in theirs] == [(server.songs["noise 1"], 7)]
        assert [e.upstream_id for e in await bob.listening_history()] == [server.songs["noise 1"]]
        asked = [s for s in fake.requests if s.path == f"/Users/{server.bob}/Items"]
        assert asked and asked[-1].query["Filters"] == "IsPlayed"
        assert asked[-1].query["SortBy"] == "PlayCount,DatePlayed"
        with pytest.raises(NoListeningHistory):
            await keyed.listening_history()  # an API key has no plays of its own
        fake.add_user("carol", "x")
        with pytest.raises(NoListeningHistory, match="carol"):
            await keyed.listening_history("carol")
        with pytest.raises(JellyfinError, match="no user named 'dave'"):
            await keyed.listening_history("dave")
    finally:
        for a in (admin, keyed, bob):
            await a.close()


# ---- failures ----------------------------------------------------------------------------


async def test_wrong_credentials_and_a_server_that_is_down_are_clear_errors(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = JellyfinAdapter(server.url, user="admin", password="not-the-password")
    bad_key = JellyfinAdapter(server.url, api_key="0123456789abcdef0123456789abcdef")
    try:
        with pytest.raises(JellyfinAuthError) as err:
            await wrong.list_tracks({})
        text = str(err.value)
        assert server.url in text and "'admin'" in text and "upstream_password" in text
        assert "not-the-password" not in text and err.value.status == 401
        with pytest.raises(JellyfinAuthError) as err:
            await bad_key.list_tracks({})
        assert server.url in str(err.value) and "upstream_api_key" in str(err.value)
        assert "0123456789abcdef" not in str(err.value)
    finally:
        await wrong.close()
        await bad_key.close()

    adapter = JellyfinAdapter(server.url, api_key=server.key)
    try:
        assert len(await adapter.list_tracks({})) == 6
        await server.fake.stop()
        with pytest.raises(JellyfinUnavailable) as gone:
            await adapter.list_tracks({})
        assert server.url in str(gone.value) and server.key not in str(gone.value)
        await server.fake.start()
        assert len(await adapter.list_tracks({})) == 6  # and back
    finally:
        await adapter.close()
    assert not any(s in caplog.text for s in [*server.secrets, "not-the-password"])


async def test_a_revoked_login_token_logs_in_again(server: Server) -> None:
    client = JellyfinClient(server.url, user="admin", password="adminpw")
    try:
        await client.connect()
        assert client.user_id == server.admin and not client.is_api_key
        for token, uid in list(server.fake.tokens.items()):
            if uid == server.admin and token != server.admin_token:
                del server.fake.tokens[token]
        info = await client.get("/System/Info")
        assert info["Id"] == server.fake.server_id
        logins = [s for s in server.fake.requests if s.path == "/Users/AuthenticateByName"]
        assert len(logins) == 2
        auth = server.fake.requests[-1].headers["Authorization"]
        assert auth.startswith('MediaBrowser Client="musegate", Device="musegate", DeviceId="')
        assert 'Version="' in auth and 'Token="' in auth
    finally:
        await client.close()


def test_config_selects_the_jellyfin_adapter(tmp_path: Path) -> None:
    config = load_config(None, env={}, overrides={
        "data_dir": str(tmp_path), "source": "jellyfin", "upstream_url": "http://jf:8096/",
        "upstream_api_key": "k" * 32, "libraries": "Music, Audiobooks", "path_map": "/media=/mnt",
    })
    adapter = adapter_for(config)
    assert isinstance(adapter, JellyfinAdapter)
    assert adapter.source == "jellyfin:http://jf:8096" and adapter.libraries == ["Music", "Audiobooks"]
    assert adapter.path_map == [("/media", Path("/mnt"))]


# ---- the fake itself, through a real client library and raw HTTP -------------------------------


async def test_jellyfin_apiclient_python_logs_in_and_browses_the_fake(server: Server) -> None:
    from jellyfin_apiclient_python import JellyfinClient as ApiClient

    def browse() -> dict[str, Any]:
        client = ApiClient()
        client.config.app("musegate-tests", "0.1", "pytest", "test-device")
        client.config.data["auth.ssl"] = False
        state = client.auth.connect_to_address(server.url)
        assert state["State"].name == "ServerSignIn", state
        login = client.auth.login(server.url, "bob", "bobpw")
        assert login["User"]["Id"] == server.bob and login["AccessToken"]
        api = client.jellyfin
        views = api.get_views()
        songs = api.user_items(params={"IncludeItemTypes": "Audio", "Recursive": True, "Fields": "Genres"})
        one = api.get_item(server.songs["noise 0"])
        mix = api.get_instant_mix(server.songs["noise 0"], limit=10)
        return {"views": views, "songs": songs, "one": one, "mix": mix,
                "info": api.get_system_info_new()}

    seen = await asyncio.to_thread(browse)
    assert [v["Name"] for v in seen["views"]["Items"]] == ["Kids"]
    assert seen["views"]["Items"][0]["CollectionType"] == "music"
    songs = seen["songs"]
    assert songs["TotalRecordCount"] == 2 and songs["StartIndex"] == 0
    assert {s["Name"] for s in songs["Items"]} == {"noise 0", "noise 1"}  # never Music's songs
    song = seen["one"]
    assert song["Type"] == "Audio" and song["MediaType"] == "Audio" and song["Id"] == server.songs["noise 0"]
    assert song["Genres"] == ["Noise"] and song["UserData"]["PlayCount"] == 0
    assert song["RunTimeTicks"] == 80_000_000 and "Path" not in song  # not an administrator
    assert {s["Id"] for s in seen["mix"]["Items"]} == {server.songs["noise 0"], server.songs["noise 1"]}
    assert seen["info"]["Id"] == server.fake.server_id


async def test_fake_reads_every_auth_form_and_hides_other_libraries(server: Server) -> None:
    url, token = server.url, server.bob_token
    forms: list[tuple[dict[str, str], dict[str, str]]] = [
        ({"Authorization": f'MediaBrowser Client="c", Device="d", DeviceId="i", Version="1", Token="{token}"'}, {}),
        ({"X-Emby-Authorization": f'Emby Token="{token}", Client="c"'}, {}),
        ({"X-Emby-Token": token}, {}),
        ({"X-MediaBrowser-Token": token}, {}),
        ({}, {"api_key": token}),
        ({}, {"ApiKey": token}),
    ]
    music_song = server.songs["low 0"]
    async with aiohttp.ClientSession() as http:
        for headers, query in forms:
            async with http.get(f"{url}/system/info", headers=headers, params=query) as resp:
                assert resp.status == 200, (headers, query)
        async with http.get(f"{url}/System/Info", headers={"X-Emby-Token": "nope"}) as resp:
            assert resp.status == 401 and await resp.read() == b""
        for path in (f"/Items/{music_song}", f"/Items/{music_song}/Download", f"/Songs/{music_song}/InstantMix",
                     f"/Audio/{music_song}/stream"):
            async with http.get(url + path, headers={"X-Emby-Token": token}) as resp:
                assert resp.status == 404, path
        async with http.get(f"{url}/Items", params={"Ids": ",".join(server.songs.values()), "api_key": token}) as resp:
            body = await resp.json()
        assert {i["Name"] for i in body["Items"]} == {"noise 0", "noise 1"}
        stream = f"{url}/Audio/{server.songs['noise 1']}/stream.flac?api_key={token}"
        data = (server.media / "kids/noise/noise1.flac").read_bytes()
        async with http.get(stream, headers={"Range": "bytes=100-199"}) as resp:
            assert resp.status == 206 and await resp.read() == data[100:200]
            assert resp.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        async with http.get(stream, headers={"Range": f"bytes={len(data)}-"}) as resp:
            assert resp.status == 416
        async with http.head(stream) as resp:
            assert resp.status == 200 and resp.headers["Content-Length"] == str(len(data))
