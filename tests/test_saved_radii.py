"""CSLS radii through the service: saved beside the index by the writer, loaded at the next
start instead of searched for again, and never used once the library, its geometry or k
differ from what they were computed for. Replicas are in tests/test_replicas.py."""

from __future__ import annotations

import numpy as np
import pytest

import musegate.services as services
from analysis.store import LibraryStore, TrackRecord
from index.radii_file import radii_path
from musegate.library import analyzer_settings
from musegate.services import LibraryService
from tests.store_factory import fill_store, make_config, synthetic_analysis
from tests.test_hubness import brute_radius


def _no_search(*_args: object, **_kwargs: object) -> np.ndarray:
    raise AssertionError("radii were searched for although the saved ones are this library's")


async def _start(config, monkeypatch=None) -> tuple[LibraryService, LibraryStore]:
    store = await LibraryStore.open(config.db_path, read_only=config.role == "replica")
    if monkeypatch is not None:
        monkeypatch.setattr(services, "neighbourhood_radius", _no_search)
    service = LibraryService(store, config)
    try:
        await service.refresh(force=True)
    finally:
        if monkeypatch is not None:
            monkeypatch.undo()
    return service, store


async def _add(store: LibraryStore, lib, names: list[str]) -> None:
    """New analysed tracks, written as the analyzer would: near copies of tracks one from
    each style in turn, so the library's mean (and its geometry fit) barely moves."""
    version = analyzer_settings(lib.config).version
    emb = (await store.embeddings(version))[1][::12]
    rng = np.random.default_rng(len(names))
    recs = [TrackRecord(source=lib.source, upstream_id=f"x/{n}.flac", path=f"/x/{n}.flac",
                        title=n, artist="New", duration=200.0) for n in names]
    existing = list((await store.tracks_of_source(lib.source)).values())
    await store.sync_source(lib.source, [*existing, *recs])
    known = await store.tracks_of_source(lib.source)
    await store.write_results([
        (known[r.upstream_id].id, synthetic_analysis(
            emb[i % len(emb)] + rng.standard_normal(200).astype(np.float32) * 0.01, version))
        for i, r in enumerate(recs)])


@pytest.mark.parametrize("threshold", [10, 20_000], ids=["hnsw", "flat"])
async def test_a_restart_loads_the_radii_the_writer_saved(tmp_path, monkeypatch, threshold) -> None:
    config = make_config(tmp_path, hnsw_threshold=threshold)
    await fill_store(config)
    first, store = await _start(config)
    try:
        assert first.snapshot.radius_status == "computed (saved radii missing)"
        computed = first.snapshot.catalogue.radius
        assert radii_path(config.index_path).exists()
    finally:
        await store.close()
    again, store = await _start(config, monkeypatch)
    try:
        assert again.snapshot.radius_status == "loaded"
        assert again.snapshot.index_status == "loaded"
        assert np.array_equal(again.snapshot.catalogue.radius, computed)
    finally:
        await store.close()


async def test_a_patched_centred_catalogue_signs_like_a_fresh_load(tmp_path, monkeypatch) -> None:
    """An incremental reload maps only the new rows through the geometry; a restart maps
    them all at once. The vectors must come out bit for bit the same, or every restart
    after a day of reloads would compute every radius again."""
    config = make_config(tmp_path, hnsw_threshold=10)
    lib = await fill_store(config)
    writer, store = await _start(config)
    try:
        await _add(store, lib, ["one"])  # drifts the mean 0.014: under the refit threshold
        assert await writer.refresh()
        assert writer.snapshot.index_status.startswith("updated")
        assert writer.snapshot.catalogue.geometry.method == "centred"
        running = writer.snapshot.catalogue
    finally:
        await store.close()
    again, store = await _start(config, monkeypatch)
    await store.close()
    assert again.snapshot.radius_status == "loaded"
    assert np.array_equal(again.snapshot.catalogue.vectors, running.vectors)
    assert np.array_equal(again.snapshot.catalogue.radius, running.radius)


async def test_radii_saved_after_a_reload_keep_counting_across_a_restart(tmp_path,
                                                                        monkeypatch) -> None:
    # raw geometry: in a 60-track library every added track moves the centred fit's mean
    # (1.4 % each), and a refit would recompute every radius for its own reason
    config = make_config(tmp_path, hnsw_threshold=10, geometry="raw")
    lib = await fill_store(config)
    writer, store = await _start(config)
    try:
        await _add(store, lib, ["one"])  # 1 of 61: only the new track's radius is computed
        assert await writer.refresh()
        assert writer.snapshot.radius_status == "1 computed, the rest carried over"
        running = writer.snapshot.catalogue.radius
        assert not np.allclose(running, brute_radius(writer.snapshot.catalogue.vectors),
                               atol=1e-5)  # the others are stale by design
    finally:
        await store.close()
    # the patched catalogue's radii are the ones a fresh load of the same store finds
    again, store = await _start(config, monkeypatch)
    try:
        assert again.snapshot.radius_status == "loaded"
        assert np.array_equal(again.snapshot.catalogue.radius, running)
        # five more: 6 changes since the full computation (1 before the restart), under 10 %
        # of 66; one more makes 7 of 67, over it: every radius afresh
        await _add(store, lib, [f"more {i}" for i in range(5)])
        assert await again.refresh()
        assert again.snapshot.radius_status == "5 computed, the rest carried over"
        await _add(store, lib, ["last"])
        assert await again.refresh()
        assert again.snapshot.radius_status == "computed"
        cat = again.snapshot.catalogue
        assert np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-4)
    finally:
        await store.close()


async def test_stale_radii_are_computed_again(tmp_path, monkeypatch) -> None:
    config = make_config(tmp_path)
    lib = await fill_store(config)
    version = analyzer_settings(config).version
    path = radii_path(config.index_path)
    first, store = await _start(config)
    await store.close()
    saved = path.read_bytes()

    # analyses written while the writer was down (`musegate analyze`): another library
    store = await LibraryStore.open(config.db_path)
    await _add(store, lib, ["while down"])
    await store.close()
    again, store = await _start(config)
    try:
        assert again.snapshot.radius_status == "computed (saved radii stale (count, library changed))"
        cat = again.snapshot.catalogue
        assert np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-5)
    finally:
        await store.close()

    # another k: the same library, but radii averaging other neighbours
    monkeypatch.setattr(services, "K", 5)
    again, store = await _start(config)
    monkeypatch.undo()
    try:
        assert again.snapshot.radius_status == "computed (saved radii stale (k changed))"
        cat = again.snapshot.catalogue
        assert np.allclose(cat.radius, brute_radius(cat.vectors, 5), atol=1e-5)
    finally:
        await store.close()

    # another geometry fit saved in the store (a refit): every vector moved
    store = await LibraryStore.open(config.db_path)
    fit = await store.geometry(version)
    await store.save_geometry(version, fit.method, fit.mean * 0.5, fit.fitted_on + 1,
                              fit.distance_scale)
    await store.close()
    path.write_bytes(saved)  # radii of the old geometry (and the old library) back in place
    again, store = await _start(config)
    try:
        status = again.snapshot.radius_status
        assert status.startswith("computed (saved radii stale (") and "geometry" in status
        cat = again.snapshot.catalogue
        assert np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-5)
    finally:
        await store.close()

    # a damaged file is computed again and replaced
    path.write_bytes(path.read_bytes()[:-3])
    again, store = await _start(config)
    try:
        assert again.snapshot.radius_status.startswith("computed (saved radii corrupt")
    finally:
        await store.close()
    again, store = await _start(config, monkeypatch)
    await store.close()
    assert again.snapshot.radius_status == "loaded"


async def test_hubness_none_neither_reads_nor_writes_radii(tmp_path) -> None:
    config = make_config(tmp_path, hubness="none")
    await fill_store(config)
    service, store = await _start(config)
    await store.close()
    assert service.snapshot.catalogue.radius is None and service.snapshot.radius_status == ""
    assert not radii_path(config.index_path).exists()


async def test_an_unwritable_radii_file_is_a_warning_not_an_error(tmp_path, caplog) -> None:
    config = make_config(tmp_path)
    await fill_store(config)
    radii_path(config.index_path).mkdir(parents=True)  # a directory where the file goes
    service, store = await _start(config)
    await store.close()
    cat = service.snapshot.catalogue
    assert np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-5)
    assert "could not save the CSLS radii" in caplog.text
