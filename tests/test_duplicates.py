"""Near-duplicate songs: the fingerprint, the grouping, the store, and every answer that hides them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from analysis import audio_fingerprint as afp
from analysis.store import LibraryStore
from cli import main as cli
from gateway.app import create_app
from index import duplicates as dup
from index.catalogue import Catalogue, CatalogueRow
from index.faiss_index import SimilarityIndex
from index.similar import similar_tracks
from musegate.library import analyzer_settings
from tests.duplicate_audio import fingerprint_of, first_part, lossy, louder_with_silence, song
from tests.store_factory import FilledLibrary, fill_store, make_config, synthetic_analysis

API = "/musegate/api"


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return song(1)


@pytest.fixture(scope="module")
def original_fp(original: np.ndarray) -> afp.Fingerprint:
    return fingerprint_of(original)


# ---------------------------------------------------------------------------- fingerprint


@pytest.mark.parametrize("make, offset", [
    (louder_with_silence, 0.5),
    (first_part, 0.0),
    (lossy, 0.0),
])
def test_copies_match_their_original(original: np.ndarray, original_fp: afp.Fingerprint,
                                     make, offset: float) -> None:
    m = afp.compare(original_fp, fingerprint_of(make(original)))
    assert m is not None and m.bit_error_rate <= dup.MATCH_BIT_ERROR / 2
    assert abs(m.offset_s - offset) <= afp.HOP / afp.SAMPLE_RATE
    assert m.overlap >= 200  # different excerpts of the copy still overlap the original's


def test_other_music_does_not_match(original_fp: afp.Fingerprint) -> None:
    for seed, seconds in ((2, 150.0), (3, 60.0)):
        m = afp.compare(original_fp, fingerprint_of(song(seed, seconds)))
        assert m is not None and m.bit_error_rate >= 0.35


def test_compare_is_symmetric_in_offset(original: np.ndarray, original_fp: afp.Fingerprint) -> None:
    copy = fingerprint_of(louder_with_silence(original))
    there, back = afp.compare(original_fp, copy), afp.compare(copy, original_fp)
    assert there is not None and back is not None
    assert there.offset_s == pytest.approx(-back.offset_s)
    assert there.bit_error_rate == pytest.approx(back.bit_error_rate)


def test_silence_has_no_fingerprint_and_matches_nothing() -> None:
    quiet = afp.compute([np.zeros(16000 * 20, np.float32)], [0.0])
    assert len(quiet) == 0
    assert afp.compare(quiet, quiet) is None


def test_encode_decode_round_trip(original_fp: afp.Fingerprint) -> None:
    blob = afp.encode(original_fp)
    assert blob.startswith(b"MGF1") and len(blob) < 2 * len(original_fp) + 6 * 40
    back = afp.decode(blob)
    assert np.array_equal(back.frames, original_fp.frames)
    assert np.array_equal(back.codes, original_fp.codes)
    assert len(afp.decode(afp.encode(afp.Fingerprint(np.zeros(0, np.int64),
                                                     np.zeros(0, np.uint16))))) == 0
    with pytest.raises(ValueError):
        afp.decode(b"not a fingerprint")
    with pytest.raises(ValueError):
        afp.decode(blob[:-2])


def test_pipeline_stores_a_fingerprint_only_with_excerpt_starts() -> None:
    from analysis.model import MusicnnModel
    from analysis.pipeline import analyse_excerpts
    from analysis.sampling import DEFAULT

    model = MusicnnModel(threads=1)
    y = song(5, 12.0)
    whole = analyse_excerpts([y], 12.0, model, DEFAULT)
    assert whole.fingerprint is not None and len(afp.decode(whole.fingerprint)) > 50
    parts = [y[:48000], y[96000:144000]]
    assert analyse_excerpts(parts, 12.0, model, DEFAULT).fingerprint is None
    placed = analyse_excerpts(parts, 12.0, model, DEFAULT, starts=[0.0, 6.0])
    assert placed.fingerprint is not None


# ---------------------------------------------------------------------------- grouping


def test_duration_fits_allows_cuts_and_silence_only() -> None:
    assert dup.duration_fits(200.0, 160.0, 0.0)  # first 80 %
    assert dup.duration_fits(200.0, 200.5, 0.5)  # 0.5 s of silence in front
    assert not dup.duration_fits(200.0, 160.0, 60.0)  # the cut would hang off the end
    assert not dup.duration_fits(200.0, 60.0, 0.0)  # an excerpt, not a copy
    assert dup.duration_fits(0.0, 60.0, 0.0)  # unknown duration cannot contradict


def _catalogue(original: np.ndarray) -> tuple[Catalogue, SimilarityIndex, dict[str, int]]:
    """Tracks 1-3: one recording (original, louder+silence, 80 % cut); 4: another song whose
    embedding is even closer to track 1 than the copies are; 5: unrelated."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(200)

    def near(scale: float) -> np.ndarray:
        return (base + rng.standard_normal(200) * scale).astype(np.float32)

    specs = [
        (1, near(0.15), original, "a"),
        (2, near(0.2), louder_with_silence(original), "a loud"),
        (3, near(0.2), first_part(original), "a cut"),
        (4, near(0.1), song(2), "b"),
        (5, rng.standard_normal(200).astype(np.float32), song(4), "c"),
    ]
    rows = [
        CatalogueRow(track_id=tid, embedding=emb, features={"key": "A"}, title=title,
                     artist=f"artist {tid}", duration=len(y) / 16000.0,
                     fingerprint=afp.encode(fingerprint_of(y)))
        for tid, emb, y, title in specs
    ]
    cat = Catalogue.from_rows(rows)
    return cat, SimilarityIndex.build(cat.ids, cat.vectors), {t: r.track_id for r, t in
                                                               zip(rows, "abcde", strict=True)}


def test_groups_join_copies_and_keep_the_longest(original: np.ndarray) -> None:
    cat, index, _ = _catalogue(original)
    assert float(cat.vectors[0] @ cat.vectors[3]) > float(cat.vectors[0] @ cat.vectors[2])
    groups, pairs = dup.find_duplicates(cat, index)
    assert [g.track_ids for g in groups] == [(1, 2, 3)]
    # 0.5 s of added silence does not make a longer recording: equal to the second, so the
    # lowest id (no quality given) is kept
    assert groups[0].representative == 1
    assert all(p.verdict.method == "fingerprint" for p in pairs)
    # with a better bitrate for the cut, length still wins; among equals, quality decides
    assert dup.representative(cat, [0, 2], {3: 320.0, 1: 128.0}) == 1
    assert dup.representative(cat, [0, 0], None) == 1


def test_union_find_is_transitive(original: np.ndarray) -> None:
    cat, _, _ = _catalogue(original)
    v = dup.Verdict(True, "fingerprint", 0.95)
    groups = dup.group_pairs(cat, [dup.DuplicatePair(1, 2, v), dup.DuplicatePair(2, 3, v),
                                   dup.DuplicatePair(4, 5, v)])
    assert [g.track_ids for g in groups] == [(1, 2, 3), (4, 5)]


def test_fallback_without_fingerprints_is_strict(original: np.ndarray) -> None:
    cat, _, _ = _catalogue(original)
    cat.fingerprints = [None] * len(cat)
    cat.__dict__.pop("_musegate_dup_verdicts", None)
    verdict = dup.same_recording(cat, 0, 1)
    assert verdict.method == "fallback" and not verdict.duplicate
    same = cat.vectors.copy()
    same[1] = same[0]
    cat.vectors = same
    cat.__dict__.pop("_musegate_dup_verdicts", None)
    assert dup.same_recording(cat, 0, 1).duplicate  # identical embedding, durations 0.5 s apart
    assert not dup.same_recording(cat, 0, 2).duplicate  # the cut is 30 s short: missed, by design


def test_similar_hides_a_duplicate_by_default(original: np.ndarray) -> None:
    cat, index, _ = _catalogue(original)
    shown = [m.track_id for m in similar_tracks(cat, index, [4], n=4, max_per_artist=0,
                                                hide_duplicates=False)]
    hidden = [m.track_id for m in similar_tracks(cat, index, [4], n=4, max_per_artist=0)]
    assert {1, 2, 3} <= set(shown)
    assert len({1, 2, 3} & set(hidden)) == 1 and 5 in hidden


# ---------------------------------------------------------------------------- store, API, CLI


def test_schema_1_database_migrates_and_keeps_its_analyses(tmp_path: Path) -> None:
    from analysis.store import MIGRATIONS

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    con.execute("INSERT INTO tracks (id, source, upstream_id, added_at, updated_at)"
                " VALUES (1, 's', 'u', 0, 0)")
    con.execute("INSERT INTO analyses VALUES (1, 'v', '{}', ?, 0)",
                (np.zeros(200, "<f4").tobytes(),))
    con.commit()
    con.close()

    async def check() -> None:
        store = await LibraryStore.open(db)
        try:
            assert await store.schema_version() == len(MIGRATIONS)
            (old,) = await store.analysed("v")
            assert old.fingerprint is None
            blob = afp.encode(fingerprint_of(song(6, 20.0)))
            await store.write_results([(1, synthetic_analysis(np.ones(200), "v2",
                                                              fingerprint=blob))])
            assert (await store.get_analysis(1)).fingerprint == blob  # type: ignore[union-attr]
        finally:
            await store.close()

    import asyncio

    asyncio.run(check())


async def _add_copies(lib: FilledLibrary) -> tuple[int, int]:
    """Give Piano song 1 a fingerprint and add its louder copy with 0.5 s of silence."""
    config = lib.config
    version = analyzer_settings(config).version
    y = song(1)
    store = await LibraryStore.open(config.db_path)
    try:
        known = await store.tracks_of_source(lib.source)
        orig_rel = "Piano/Piano Artist 1/01 Piano song 1.flac"
        orig = known[orig_rel]
        ids, vectors = await store.embeddings(version)
        vec = vectors[int(np.searchsorted(ids, orig.id))]
        rel = "Copies/Piano song 1 (louder).flac"
        from analysis.store import TrackRecord

        copy = TrackRecord(source=lib.source, upstream_id=rel, path=str(lib.root / rel),
                           size=5, mtime=1.0, title="Piano song 1 (louder)",
                           artist="Someone Else", album="Copies", duration=150.5)
        await store.sync_source(lib.source, [*known.values(), copy])
        copy_id = (await store.tracks_of_source(lib.source))[rel].id or 0
        rng = np.random.default_rng(1)
        await store.write_results([
            (orig.id or 0, synthetic_analysis(vec, version, duration=150.0,
                                              fingerprint=afp.encode(fingerprint_of(y)))),
            (copy_id, synthetic_analysis(vec + rng.standard_normal(200) * 0.02, version,
                                         duration=150.5, fingerprint=afp.encode(
                                             fingerprint_of(louder_with_silence(y))))),
        ])
        return orig.id or 0, copy_id
    finally:
        await store.close()


async def test_api_duplicates_and_hide_option(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    lib = await fill_store(config)
    orig, copy = await _add_copies(lib)
    app = create_app(config, refresh_seconds=None)
    async with TestServer(app) as server, aiohttp.ClientSession(
        base_url=str(server.make_url("/"))
    ) as session:
        async with session.get(f"{API}/duplicates") as resp:
            assert resp.status == 200
            body = await resp.json()
        assert [sorted(t["id"] for t in g["tracks"]) for g in body["groups"]] == [
            sorted([orig, copy])]
        group = body["groups"][0]
        assert group["representative"] == orig  # same length to the second, higher bitrate
        assert group["pairs"][0]["method"] == "fingerprint"
        assert group["pairs"][0]["bit_error_rate"] < 0.25
        assert body["without_fingerprint"] == len(lib.ids) - 1

        async with session.get(f"{API}/duplicates", params={"id": "999999"}) as resp:
            assert resp.status == 404

        seed = lib.ids["Piano/Piano Artist 2/02 Piano song 2.flac"]
        params = {"ids": str(seed), "n": "13", "max_per_artist": "0"}
        async with session.get(f"{API}/similar", params=params) as resp:
            hidden = [t["id"] for t in (await resp.json())["tracks"]]
        async with session.get(f"{API}/similar",
                               params={**params, "hide_duplicates": "false"}) as resp:
            shown = [t["id"] for t in (await resp.json())["tracks"]]
        assert orig in shown and copy in shown
        assert len({orig, copy} & set(hidden)) == 1
        async with session.get(f"{API}/similar",
                               params={**params, "hide_duplicates": "maybe"}) as resp:
            assert resp.status == 400


async def test_hide_duplicates_setting_off(tmp_path: Path) -> None:
    config = make_config(tmp_path, hide_duplicates="false")
    assert config.hide_duplicates is False
    lib = await fill_store(config)
    orig, copy = await _add_copies(lib)
    app = create_app(config, refresh_seconds=None)
    async with TestServer(app) as server, aiohttp.ClientSession(
        base_url=str(server.make_url("/"))
    ) as session:
        seed = lib.ids["Piano/Piano Artist 2/02 Piano song 2.flac"]
        async with session.get(f"{API}/similar", params={"ids": str(seed), "n": "13",
                                                         "max_per_artist": "0"}) as resp:
            ids = [t["id"] for t in (await resp.json())["tracks"]]
        assert orig in ids and copy in ids


async def test_cli_duplicates_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path)
    lib = await fill_store(config)
    orig, copy = await _add_copies(lib)
    import asyncio

    argv = ["--data-dir", config.data_dir, "duplicates", "--json"]
    code = await asyncio.to_thread(cli.main, argv)
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert [sorted(t["id"] for t in g["tracks"]) for g in out["groups"]] == [sorted([orig, copy])]
    code = await asyncio.to_thread(cli.main, ["--data-dir", config.data_dir, "duplicates"])
    text = capsys.readouterr().out
    assert code == 0 and "1 duplicate groups" in text and "keep" in text
    assert "re-analysing them fills the fingerprint in" in text


# ---------------------------------------------------------------------------- Subsonic gateway


async def test_subsonic_similar_songs_hide_a_copy_unless_configured(tmp_path: Path) -> None:
    """getSimilarSongs2 through py-sonic against a real supysonic: two of its songs are
    given one recording's fingerprints; the gateway answer holds one of them by default
    and both with hide_duplicates = false."""
    import asyncio

    import libsonic

    from analysis.store import TrackRecord
    from tests.supysonic_server import Supysonic, generate_library
    from tests.test_subsonic_gateway import USERS, _songs, auth

    music = generate_library(tmp_path / "music", artists=1, albums=1, tracks=6, seconds=1.0)
    async with Supysonic.start(tmp_path, music, users=USERS) as server, \
            aiohttp.ClientSession() as session:
        songs = await _songs(session, server.url)
        assert len(songs) == 6 and auth()["u"] == "alice"
        y = song(1)
        fps = {songs[0]["id"]: afp.encode(fingerprint_of(y)),
               songs[1]["id"]: afp.encode(fingerprint_of(louder_with_silence(y)))}
        rng = np.random.default_rng(2)
        base = rng.standard_normal(200)
        answers = {}
        for hide in (True, False):
            config = make_config(tmp_path / f"hide-{hide}", source="subsonic",
                                 upstream_url=server.url, max_per_artist=0,
                                 hide_duplicates=hide)
            version = analyzer_settings(config).version
            source = f"subsonic:{config.upstream_url}"
            store = await LibraryStore.open(config.db_path)
            try:
                await store.sync_source(source, [
                    TrackRecord(source=source, upstream_id=s["id"], title=s["title"],
                                artist=s["artist"], album=s.get("album"), duration=150.0, raw=s)
                    for s in songs])
                known = await store.tracks_of_source(source)
                await store.write_results([
                    (known[s["id"]].id or 0, synthetic_analysis(
                        base + np.random.default_rng(k).standard_normal(200) * 0.15, version,
                        duration=150.0, fingerprint=fps.get(s["id"])))
                    for k, s in enumerate(songs)])
            finally:
                await store.close()
            app = create_app(config, adapter=None, refresh_seconds=None)
            async with TestServer(app, host="127.0.0.1") as ts:
                client = libsonic.Connection("http://127.0.0.1", "alice", USERS["alice"],
                                             port=ts.port, appName="pytest",
                                             apiVersion="1.16.1", legacyAuth=True)
                res = await asyncio.to_thread(client.getSimilarSongs2, songs[5]["id"], 10)
                answers[hide] = [s["id"] for s in res["similarSongs2"]["song"]]
    pair = {songs[0]["id"], songs[1]["id"]}
    assert pair <= set(answers[False]) and len(answers[False]) == 5
    assert len(pair & set(answers[True])) == 1 and len(answers[True]) == 4
