"""Loading the library: columns streamed from the store, reloads that patch what changed.

A reload after one changed analysis must give exactly the catalogue (and index) a
full load would, for every kind of change: a new track, an edited title, a
re-analysis with another vector, a removed track. And an idle server must not
carry the analyzer's libraries.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.store import LibraryStore
from index.catalogue import Catalogue, CatalogueRow
from index.geometry import fit_geometry, unit_rows
from musegate.library import analyzer_settings
from musegate.services import LibraryService
from tests.store_factory import add_track, fill_store, make_config, synthetic_analysis

REPO = Path(__file__).resolve().parents[1]


def _row(track_id: int, x: float, title: str = "") -> CatalogueRow:
    emb = np.zeros(200, np.float32)
    emb[track_id % 200] = 1.0
    emb[0] += x
    return CatalogueRow(track_id, emb, {"tempo": 100.0 + track_id, "key": "D", "scale": "minor",
                                        "tags": [0.5] * 50}, title=title or f"t{track_id}",
                        artist="A", album="B", duration=100.0)


def _same(a: Catalogue, b: Catalogue) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    for name in ("vectors", "tags", "tempo", "energy", "loudness", "key", "minor", "duration"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.titles, a.artists, a.albums) == (b.titles, b.artists, b.albums)
    assert a.fingerprints == b.fingerprints


def test_row_lookup_works_in_any_order_and_says_what_is_missing() -> None:
    cat = Catalogue.from_rows([_row(t, 0.0) for t in (30, 10, 20)])
    assert [cat.row(t) for t in (30, 10, 20)] == [0, 1, 2]
    assert cat.rows([20, 30]).tolist() == [2, 0]
    assert cat.has(10) and not cat.has(15) and not cat.has("x")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        cat.row(15)
    with pytest.raises(KeyError):
        cat.rows([10, 99])
    empty = Catalogue.from_rows([])
    assert not empty.has(1) and empty.rows([]).tolist() == []


def test_patched_catalogue_equals_the_one_built_from_scratch() -> None:
    old = Catalogue.from_rows([_row(t, 0.0) for t in (1, 2, 3, 4, 5)])
    fresh = Catalogue.from_rows([_row(2, 0.5, "edited"), _row(7, 0.0), _row(0, 0.2)])
    patched = old.patched(np.array([4], np.int64), fresh)
    expected = Catalogue.from_rows(
        [_row(0, 0.2), _row(1, 0.0), _row(2, 0.5, "edited"), _row(3, 0.0), _row(5, 0.0),
         _row(7, 0.0)])
    _same(patched, expected)
    assert patched.row(7) == 5
    _same(old, Catalogue.from_rows([_row(t, 0.0) for t in (1, 2, 3, 4, 5)]))  # left alone


async def _full_load(config) -> LibraryService:
    store = await LibraryStore.open(config.db_path)
    service = LibraryService(store, config)
    await service.refresh(force=True)
    return service


async def test_reloads_patch_each_kind_of_change_like_a_full_load(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # An HNSW index at this size, so the index is updated in place, not rebuilt. Raw
    # geometry: one track in 60 random ones can move the centred fit's mean past its refit
    # bar, and a refit is a full load by design (tests/test_geometry.py covers that path).
    config = make_config(tmp_path, hnsw_threshold=10, geometry="raw")
    lib = await fill_store(config)
    version = analyzer_settings(config).version
    store = await LibraryStore.open(config.db_path)
    service = LibraryService(store, config)
    await service.refresh(force=True)
    assert service.snapshot.index.kind == "hnsw"
    assert service.snapshot.index.shares_vectors  # one copy of the vectors, the catalogue's
    first_id, second_id = sorted(lib.ids.values())[:2]

    async def check(expect_in_index: str) -> None:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="musegate.services"):
            assert await service.refresh()
        assert any("library updated" in r.getMessage() for r in caplog.records)
        reference = await _full_load(config)
        try:
            snap, ref = service.snapshot, reference.snapshot
            _same(snap.catalogue, ref.catalogue)
            assert snap.upstream_ids == ref.upstream_ids and snap.by_upstream == ref.by_upstream
            assert snap.signature == ref.signature
            assert expect_in_index in snap.index_status
            assert ref.index.shares_vectors == snap.index.shares_vectors  # restart: the same
            assert sorted(snap.index.ids.tolist()) == snap.catalogue.ids.tolist()
            for t in snap.catalogue.ids[:5].tolist() + [first_id]:
                if t in snap.index:
                    np.testing.assert_allclose(snap.index.vector(t),
                                               snap.catalogue.vectors[snap.catalogue.row(t)],
                                               atol=1e-6)
        finally:
            await reference.store.close()

    new_id = await add_track(config, lib, 0, "Brand new")
    await check("1 added or changed, 0 removed")
    assert service.snapshot.catalogue.has(new_id)
    # appended after the others in id order: index positions are still catalogue rows
    assert service.snapshot.index.shares_vectors

    async with await LibraryStore.open(config.db_path) as writer:  # a title edited upstream
        tracks = await writer.tracks_of_source(lib.source)
        edited = next(t for t in tracks.values() if t.id == second_id)
        edited.title = "Renamed song"
        await writer.sync_source(lib.source, list(tracks.values()))
    await check("0 added or changed, 0 removed")
    cat = service.snapshot.catalogue
    assert cat.titles[cat.row(second_id)] == "Renamed song"

    async with await LibraryStore.open(config.db_path) as writer:  # re-analysed: a new vector
        vector = np.zeros(200, np.float32)
        vector[3] = 1.0
        await writer.write_results([(first_id, synthetic_analysis(vector, version))])
    await check("1 added or changed, 0 removed")
    cat = service.snapshot.catalogue
    assert cat.vectors[cat.row(first_id)][3] == pytest.approx(1.0)
    assert not service.snapshot.index.shares_vectors  # a tombstone: its own copy until a rebuild

    async with await LibraryStore.open(config.db_path) as writer:  # removed from the library
        await writer.remove_tracks([new_id])
    await check("0 added or changed, 1 removed")
    assert not service.snapshot.catalogue.has(new_id)
    await store.close()


def test_an_idle_server_does_not_import_the_analyzer() -> None:
    """Importing what `musegate serve` runs must not pull in librosa, PyAV, ONNX Runtime,
    SciPy or scikit-learn: they are loaded when an analysis or a clustering runs."""
    heavy = ("onnxruntime", "librosa", "numba", "av", "soundfile", "soxr", "scipy", "sklearn")
    code = ("import sys; import gateway.app, musegate.scheduler, cli.features; "
            f"print(','.join(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


def test_the_refit_rule_reads_the_same_from_transformed_vectors() -> None:
    """An incremental reload has only the centred vectors: the raw mean it recovers from
    them must give the same refit decision as the raw embeddings would."""
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(300, 200)).astype(np.float32) + 0.8
    fit = fit_geometry(emb)
    for grown in (emb, np.vstack([emb, rng.normal(size=(3, 200)).astype(np.float32) + 0.8]),
                  np.vstack([emb, rng.normal(size=(200, 200)).astype(np.float32) - 2.0])):
        recovered = fit.raw_mean(fit.apply(grown))
        np.testing.assert_allclose(recovered, unit_rows(grown).mean(axis=0), atol=1e-5)
        assert fit.stale_by_mean(recovered, len(grown), "centred") == fit.stale(grown, "centred")
    assert not fit.stale_by_mean(fit.raw_mean(fit.apply(emb)), len(emb), "centred")
    assert fit.stale(np.vstack([emb, rng.normal(size=(200, 200)).astype(np.float32) - 2.0]),
                     "centred")
