import sqlite3
from pathlib import Path

import numpy as np
import pytest

from analysis.store import MIGRATIONS, LibraryStore, TrackRecord
from analysis.types import TrackAnalysis
from tests.conftest import fill_the_disk


def analysis(seed: int, version: str = "v1") -> TrackAnalysis:
    rng = np.random.default_rng(seed)
    return TrackAnalysis(
        embedding=rng.standard_normal(200).astype(np.float32),
        tags=rng.uniform(size=50).astype(np.float32),
        tempo=120.0, key="A", scale="minor", key_strength=0.7, energy=0.5,
        loudness=-12.0, duration=30.0, patches=4, version=version,
    )


def rec(uid: str, size: int = 10, mtime: float = 1.0, **kw: object) -> TrackRecord:
    return TrackRecord(source="s", upstream_id=uid, path=f"/m/{uid}", size=size, mtime=mtime, **kw)


async def test_migrations_are_numbered_and_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "lib.db"
    store = await LibraryStore.open(db)
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    store = await LibraryStore.open(db)  # reopening runs nothing twice
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"tracks", "analyses", "failures"} <= tables


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "lib.db"
    con = sqlite3.connect(db)
    con.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    con.close()
    with pytest.raises(RuntimeError, match="newer than this musegate"):
        await LibraryStore.open(db)


async def test_sync_is_incremental(tmp_path: Path) -> None:
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        r = await store.sync_source("s", [rec("a"), rec("b"), rec("c", title="C")])
        assert (r.added, r.changed, r.removed, r.unchanged) == (3, 0, 0, 0)
        ids = {t.upstream_id: t.id for t in (await store.tracks_of_source("s")).values()}
        await store.write_results([(ids["a"], analysis(1)), (ids["b"], analysis(2))])
        # b changed on disk, c left, d arrived
        r = await store.sync_source("s", [rec("a"), rec("b", size=11), rec("d")])
        assert (r.added, r.changed, r.removed, r.unchanged) == (1, 1, 1, 1)
        assert await store.get_analysis(ids["a"]) is not None  # unchanged keeps its analysis
        assert await store.get_analysis(ids["b"]) is None  # changed is analysed again
        assert await store.get_track(ids["c"]) is None
        pending = {t.upstream_id for t in await store.pending("v1", 3)}
        assert pending == {"b", "d"}


async def test_results_failures_and_status(tmp_path: Path) -> None:
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        await store.sync_source("s", [rec("a"), rec("b"), rec("c")])
        ids = {t.upstream_id: t.id for t in (await store.tracks_of_source("s")).values()}
        a = analysis(1)
        await store.write_results([(ids["a"], a)], [(ids["b"], "v1", "corrupt")])
        stored = await store.get_analysis(ids["a"])
        assert stored is not None
        np.testing.assert_array_equal(stored.embedding, a.embedding)
        assert stored.features["key"] == "A" and len(stored.features["tags"]) == 50
        st = await store.status("v1", max_attempts=2)
        assert (st.tracks, st.analysed, st.failed, st.pending) == (3, 1, 1, 2)
        # a second failure reaches max_attempts: no longer pending
        await store.write_results([], [(ids["b"], "v1", "corrupt again")])
        st = await store.status("v1", max_attempts=2)
        assert st.pending == 1
        (track, reason, attempts), = await store.failures()
        assert (track.upstream_id, reason, attempts) == ("b", "corrupt again", 2)
        # a new analysis version makes everything pending again, failures included
        assert len(await store.pending("v2", 2)) == 3
        ids_arr, matrix = await store.embeddings("v1")
        assert ids_arr.tolist() == [ids["a"]] and matrix.shape == (1, 200)
        # results for a track that left the library are dropped, not an error
        await store.remove_tracks([ids["c"]])
        await store.write_results([(ids["c"], analysis(3))])
        assert await store.get_analysis(ids["c"]) is None


async def test_find_tracks(tmp_path: Path) -> None:
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        await store.sync_source("s", [
            rec("x", title="Blue Monday", artist="New Order"),
            rec("y", title="Blue in Green", artist="Miles Davis"),
        ])
        assert [t.title for t in await store.find_tracks("blue order")] == ["Blue Monday"]
        assert len(await store.find_tracks("blue")) == 2
        assert [t.upstream_id for t in await store.find_tracks("/m/y")] == ["y"]
        assert await store.find_tracks("nothing here") == []


async def test_metadata_edit_keeps_analysis_and_moves_the_signature(tmp_path: Path) -> None:
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        await store.sync_source("s", [rec("a", title="Old")])
        (track,) = (await store.tracks_of_source("s")).values()
        await store.write_results([(track.id, analysis(1))])
        before = await store.signature("v1")
        assert await store.signature("v1") == before  # nothing changed, nothing moves
        r = await store.sync_source("s", [rec("a", title="New")])  # same size and mtime
        assert (r.changed, r.unchanged) == (0, 1)
        assert (await store.get_track(track.id)).title == "New"
        assert await store.get_analysis(track.id) is not None
        assert await store.signature("v1") != before
        assert (await store.status("v1", 3)).pending == 0


async def test_search_ignores_the_library_root(tmp_path: Path) -> None:
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        await store.sync_source("s", [
            TrackRecord(source="s", upstream_id="Metal/12 Anthem.flac",
                        path="/srv/music 12/Metal/12 Anthem.flac", title="Anthem"),
            TrackRecord(source="s", upstream_id="Jazz/01 Blue.flac",
                        path="/srv/music 12/Jazz/01 Blue.flac", title="Blue"),
        ])
        assert [t.title for t in await store.find_tracks("12")] == ["Anthem"]
        assert [t.title for t in await store.find_tracks("metal anthem")] == ["Anthem"]


async def test_full_disk_is_a_clear_error_and_keeps_what_was_saved(tmp_path: Path) -> None:
    from analysis.store import StorageFullError

    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        await store.sync_source("s", [rec(str(i)) for i in range(40)])
        ids = sorted(t.id for t in (await store.tracks_of_source("s")).values())
        await store.write_results([(ids[0], analysis(0))])
        await fill_the_disk(store)
        with pytest.raises(StorageFullError) as err:
            await store.write_results([(i, analysis(i)) for i in ids[1:]])
        assert "disk is full" in str(err.value) and str(tmp_path / "lib.db") in str(err.value)
        with pytest.raises(StorageFullError):
            await store.sync_source("s", [rec(f"new{i}", raw={"x": "y" * 500}) for i in range(200)])
        # The failed transactions left nothing half-written and the store still works.
        st = await store.status("v1", max_attempts=3)
        assert (st.tracks, st.analysed) == (40, 1)
        await store._db.execute("PRAGMA max_page_count = 1073741823")  # space freed
        await store.write_results([(i, analysis(i)) for i in ids[1:]])
        assert (await store.status("v1", max_attempts=3)).analysed == 40
