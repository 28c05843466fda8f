"""Incremental reloads read what changed by change number, and never miss a change.

The store stamps every row a transaction writes with the transaction's change number
(analysis/store.py, migration 4), handed out under SQLite's write lock; a reload reads
the rows numbered past the one it saw last. These tests pin what that buys: a reload
right after a bulk import reads the one row that changed (not every row written in the
last minute), a change committed at any point of a reload is in the library then or at
the next reload, a clock that steps back loses nothing, and an existing database
migrates. Commits "during" a reload are made from inside the store calls the reload
makes, so where they land is fixed, not a matter of timing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.store import MIGRATIONS, LibraryStore
from musegate.library import analyzer_settings
from musegate.services import LibraryService
from tests.store_factory import (
    FilledLibrary,
    add_track,
    fill_store,
    make_config,
    synthetic_analysis,
)


def _vector(axis: int) -> np.ndarray:
    v = np.zeros(200, np.float32)
    v[axis] = 1.0
    return v


async def _service(config: Any) -> LibraryService:
    service = LibraryService(await LibraryStore.open(config.db_path), config)
    await service.refresh(force=True)
    return service


async def _assert_like_a_full_load(service: LibraryService) -> None:
    reference = await _service(service.config)
    try:
        a, b = service.snapshot.catalogue, reference.snapshot.catalogue
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.vectors, b.vectors)
        assert a.titles == b.titles
        assert sorted(service.snapshot.index.ids.tolist()) == a.ids.tolist()
        assert service.snapshot.signature == reference.snapshot.signature
    finally:
        await reference.store.close()


async def _library(tmp_path: Path) -> tuple[FilledLibrary, str]:
    # HNSW at this size (updated in place); raw geometry so one change never refits
    config = make_config(tmp_path, hnsw_threshold=10, geometry="raw")
    lib = await fill_store(config)
    return lib, analyzer_settings(config).version


async def test_a_reload_after_a_bulk_import_reads_only_the_changed_row(tmp_path: Path) -> None:
    """The 60 analyses were all committed a moment ago: a reload after one re-analysis
    reads one row (with the old 60-second re-read margin it read all 60)."""
    lib, version = await _library(tmp_path)
    service = await _service(lib.config)
    read: list[int] = []
    original = service.store.analysed_chunks

    async def counted(*args: Any, **kwargs: Any) -> AsyncIterator[list[tuple[Any, ...]]]:
        async for chunk in original(*args, **kwargs):
            read.extend(row[0] for row in chunk)
            yield chunk

    service.store.analysed_chunks = counted  # type: ignore[method-assign]
    target = sorted(lib.ids.values())[7]
    async with await LibraryStore.open(lib.config.db_path) as writer:
        await writer.write_results([(target, synthetic_analysis(_vector(5), version))])
    assert await service.refresh()
    assert read == [target]
    assert "1 added or changed" in service.snapshot.index_status
    await _assert_like_a_full_load(service)
    await service.store.close()


Change = Callable[[LibraryStore, FilledLibrary, str], Awaitable[None]]


async def _reanalyse(writer: LibraryStore, lib: FilledLibrary, version: str) -> None:
    # the change the id list cannot reveal: same id, another vector
    await writer.write_results([(sorted(lib.ids.values())[3], synthetic_analysis(_vector(9),
                                                                                 version))])


async def _rename(writer: LibraryStore, lib: FilledLibrary, version: str) -> None:
    tracks = await writer.tracks_of_source(lib.source)
    track = next(t for t in tracks.values() if t.id == sorted(lib.ids.values())[4])
    track.title = "Renamed while reloading"
    await writer.sync_source(lib.source, list(tracks.values()))


async def _remove(writer: LibraryStore, lib: FilledLibrary, version: str) -> None:
    await writer.remove_tracks([sorted(lib.ids.values())[5]])


async def _add(writer: LibraryStore, lib: FilledLibrary, version: str) -> None:
    await add_track(lib.config, lib, 1, "Added while reloading")


@pytest.mark.parametrize("change", [_reanalyse, _rename, _remove, _add])
@pytest.mark.parametrize("moment", ["before the changed rows", "after the changed rows",
                                    "after the id list", "during a full load"])
async def test_a_change_committed_while_a_reload_runs_is_never_missed(
    tmp_path: Path, change: Change, moment: str
) -> None:
    lib, version = await _library(tmp_path)
    service = await _service(lib.config)
    async with await LibraryStore.open(lib.config.db_path) as writer:
        await writer.write_results(  # the change that starts the reload
            [(sorted(lib.ids.values())[0], synthetic_analysis(_vector(1), version))])
        store = service.store
        chunks, ids = store.analysed_chunks, store.analysed_ids
        fired = False

        async def commit_once() -> None:
            nonlocal fired
            if not fired:
                fired = True
                await change(writer, lib, version)

        async def chunks_with_commit(version_: str, since: int | None = None,
                                     **kw: Any) -> AsyncIterator[list[tuple[Any, ...]]]:
            wanted = (since is None) == (moment == "during a full load")
            if wanted and moment == "before the changed rows":
                await commit_once()
            async for chunk in chunks(version_, since=since, **kw):
                yield chunk
            if wanted and moment in ("after the changed rows", "during a full load"):
                await commit_once()

        async def ids_with_commit(version_: str) -> np.ndarray:
            got = await ids(version_)
            if moment == "after the id list":
                await commit_once()
            return got

        store.analysed_chunks = chunks_with_commit  # type: ignore[method-assign]
        store.analysed_ids = ids_with_commit  # type: ignore[method-assign]
        assert await service.refresh(force=moment == "during a full load")
        assert fired
        store.analysed_chunks, store.analysed_ids = chunks, ids  # type: ignore[method-assign]
        # Whatever that reload saw of it, after the next poll the library is the store's
        # (a snapshot whose signature already counts the change must hold it already).
        await service.refresh()
        await _assert_like_a_full_load(service)
        assert not await service.refresh()
    await service.store.close()


async def test_a_clock_that_steps_back_loses_no_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-analysed with the clock an hour behind: no timestamp moves forward, yet the
    reload reads it (the old timestamp check did not even see that anything changed)."""
    lib, version = await _library(tmp_path)
    service = await _service(lib.config)
    import analysis.store as store_module

    behind = store_module.time.time() - 3600.0
    monkeypatch.setattr(store_module.time, "time", lambda: behind)
    target = sorted(lib.ids.values())[2]
    async with await LibraryStore.open(lib.config.db_path) as writer:
        await writer.write_results([(target, synthetic_analysis(_vector(11), version))])
    assert await service.refresh()
    cat = service.snapshot.catalogue
    assert cat.vectors[cat.row(target)][11] == pytest.approx(1.0)
    await _assert_like_a_full_load(service)
    await service.store.close()


async def test_writers_on_two_connections_get_numbers_in_commit_order(tmp_path: Path) -> None:
    """Two writers of one file (a server and a `musegate analyze`, say): each commit gets
    the next number and its rows carry it, so "rows past N" is exactly what came after N."""
    lib, version = await _library(tmp_path)
    ids = sorted(lib.ids.values())
    async with (await LibraryStore.open(lib.config.db_path) as one,
                await LibraryStore.open(lib.config.db_path) as two):
        seen = (await one.signature(version))[0]
        for step, writer in enumerate([one, two, two, one, two]):
            await writer.write_results([(ids[step], synthetic_analysis(_vector(step), version))])
            now = (await one.signature(version))[0]
            assert (await two.signature(version))[0] == now == seen + 1
            rows = [row[0] async for chunk in one.analysed_chunks(version, since=seen)
                    for row in chunk]
            assert rows == [ids[step]]
            seen = now
        # what changes nothing a reader loads takes no number: no reload for it
        await one.write_results([], [(ids[0], version, "decode error")])
        await one.sync_source(lib.source, list((await one.tracks_of_source(lib.source)).values()))
        assert (await two.signature(version))[0] == seen


def test_a_schema_3_database_migrates_and_reloads_by_change_number(tmp_path: Path) -> None:
    db = tmp_path / "data" / "musegate.db"
    db.parent.mkdir(parents=True)
    con = sqlite3.connect(db)
    con.executescript("; ".join(MIGRATIONS[:3]) + "; PRAGMA user_version = 3;")
    con.execute("PRAGMA journal_mode=WAL")
    config = make_config(tmp_path, hnsw_threshold=10, geometry="raw")
    version = analyzer_settings(config).version
    for track in (1, 2, 3):
        con.execute("INSERT INTO tracks (id, source, upstream_id, title, added_at, updated_at)"
                    " VALUES (?, 's', ?, ?, 0, 0)", (track, f"u{track}", f"old {track}"))
        con.execute("INSERT INTO analyses (track_id, version, features, embedding, analysed_at)"
                    " VALUES (?, ?, ?, ?, 0)",
                    (track, version, '{"tempo": 100}', _vector(track).astype("<f4").tobytes()))
    con.commit()
    con.close()

    async def check() -> None:
        store = await LibraryStore.open(db)
        assert await store.schema_version() == len(MIGRATIONS) == 4
        assert (await store.signature(version))[0] == 0
        service = LibraryService(store, config)
        await service.refresh(force=True)
        assert service.snapshot.catalogue.ids.tolist() == [1, 2, 3]
        await store.write_results([(2, synthetic_analysis(_vector(20), version))])
        assert [row[0] async for chunk in store.analysed_chunks(version, since=0)
                for row in chunk] == [2]
        assert await service.refresh()
        cat = service.snapshot.catalogue
        assert cat.vectors[cat.row(2)][20] == pytest.approx(1.0)
        await store.close()

    import asyncio

    asyncio.run(check())
