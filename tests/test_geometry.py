"""The similarity geometry: its math, its persistence and refit, and that every feature sees it."""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis.labels import MSD_LABELS
from analysis.store import LibraryStore, TrackRecord
from index import duplicates as dup
from index.alchemy import Ingredient, alchemy
from index.catalogue import Catalogue, CatalogueRow
from index.clustering import cluster_playlists
from index.faiss_index import SimilarityIndex
from index.fingerprint import Play, sonic_fingerprint
from index.geometry import (
    MEAN_DRIFT,
    RAW,
    current_geometry,
    fit_geometry,
    same_geometry,
    unit_rows,
)
from index.instant import Constraints, instant_playlist
from index.mixer import MixRules, mix
from index.path import song_path
from index.similar import similar_tracks
from musegate.library import analyzer_settings
from musegate.services import LibraryService
from tests.store_factory import fill_store, make_config, synthetic_analysis

DIM = 200


def hubby(n: int = 80, seed: int = 0) -> np.ndarray:
    """Raw-looking embeddings: a large shared direction (weight varying per track) plus
    clustered detail, like musicnn's, where the tracks nearest the shared direction are hubs."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(DIM)
    common /= np.linalg.norm(common)
    centres = rng.standard_normal((4, DIM))
    labels = np.arange(n) % 4
    detail = centres[labels] + rng.standard_normal((n, DIM)) * 0.9
    detail -= np.outer(detail @ common, common)
    detail /= np.linalg.norm(detail, axis=1, keepdims=True)
    weight = rng.uniform(0.6, 0.97, n)
    x = weight[:, None] * common + np.sqrt(1 - weight**2)[:, None] * detail
    return (x * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32)  # stored scale is arbitrary


def catalogue(emb: np.ndarray, geometry=None, fingerprints=None, durations=None) -> Catalogue:
    rows = [
        CatalogueRow(
            track_id=i + 1, embedding=e,
            features={"tags": np.full(len(MSD_LABELS), 0.1).tolist(), "tempo": 100.0,
                      "energy": 0.5, "key": "A", "scale": "minor"},
            title=f"Song {i}", artist=f"Artist {i}", album=f"Album {i}",
            duration=None if durations is None else float(durations[i]),
            fingerprint=None if fingerprints is None else fingerprints[i],
        )
        for i, e in enumerate(emb)
    ]
    return Catalogue.from_rows(rows, geometry)


def k_occurrence(vectors: np.ndarray, k: int = 10) -> np.ndarray:
    s = vectors @ vectors.T
    np.fill_diagonal(s, -np.inf)
    top = np.argsort(-s, axis=1)[:, :k]
    return np.bincount(top.ravel(), minlength=len(vectors))


# ---------------------------------------------------------------------------- math


def test_centring_removes_the_shared_direction_and_the_hubs() -> None:
    emb = hubby()
    g = fit_geometry(emb)
    raw, centred = unit_rows(emb), g.apply(emb)
    assert g.method == "centred" and g.fitted_on == len(emb)
    assert np.allclose(np.linalg.norm(centred, axis=1), 1.0, atol=1e-5)
    # the mean of the raw unit vectors is long; of the centred ones it is what shrinkage left
    assert np.linalg.norm(raw.mean(axis=0)) > 0.7
    assert np.linalg.norm(centred.mean(axis=0)) < 0.3
    raw_occ, cen_occ = k_occurrence(raw), k_occurrence(centred)
    assert cen_occ.max() < raw_occ.max()
    assert (cen_occ == 0).sum() < (raw_occ == 0).sum()


def test_raw_geometry_is_the_unit_embedding() -> None:
    emb = hubby()
    g = fit_geometry(emb, "raw")
    assert g.method == "raw" and g.mean is None
    assert np.array_equal(g.apply(emb), unit_rows(emb))
    assert np.array_equal(catalogue(emb).vectors, unit_rows(emb))  # no geometry given: raw


def test_raw_cosines_are_recovered_exactly_from_centred_vectors() -> None:
    emb = hubby()
    g = fit_geometry(emb)
    v, u = g.apply(emb), unit_rows(emb).astype(np.float64)
    want = u @ u.T
    assert np.abs(g.raw_cosines(v, v) - want).max() < 1e-5
    assert abs(float(g.raw_cosines(v[3], v[7])) - want[3, 7]) < 1e-5
    sims = (v[:5] @ v[2])[None, :]
    assert np.allclose(g.raw_cosines(v[2], v[:5], sims), want[2, :5], atol=1e-5)
    assert np.allclose(RAW.raw_cosines(u[:4], u[:4]), want[:4, :4])


def test_a_tiny_library_is_not_pushed_apart() -> None:
    """Two tracks centred on their own full mean would point in opposite directions."""
    emb = hubby(2)
    g = fit_geometry(emb)
    v = g.apply(emb)
    assert float(v[0] @ v[1]) > -0.5
    assert float(unit_rows(emb)[0] @ unit_rows(emb)[1]) > float(v[0] @ v[1])


def test_fit_is_deterministic_and_rejects_unknown_methods() -> None:
    emb = hubby()
    assert np.array_equal(fit_geometry(emb).mean, fit_geometry(emb.copy()).mean)
    assert same_geometry(fit_geometry(emb), fit_geometry(emb.copy()))
    assert not same_geometry(fit_geometry(emb), fit_geometry(emb, "raw"))
    with pytest.raises(ValueError, match="unknown similarity geometry 'whiten'"):
        fit_geometry(emb, "whiten")


def test_refit_only_when_the_library_mean_moved() -> None:
    emb = hubby(200, seed=1)
    g = fit_geometry(emb[:180])
    # 10 % more tracks of the same kind: the mean hardly moves, vectors stay put
    assert g.drift(emb) <= MEAN_DRIFT
    assert current_geometry(g, emb) is g
    # a different kind of music arrives: refit
    other = -hubby(60, seed=2)
    grown = np.concatenate([emb, other])
    assert g.drift(grown) > MEAN_DRIFT
    refit = current_geometry(g, grown)
    assert refit is not g and refit.fitted_on == len(grown)
    # another method, or another model's embedding size, is always a refit
    assert current_geometry(g, emb, "raw").method == "raw"
    assert current_geometry(g, np.ones((5, 50), np.float32)).mean.shape == (50,)
    # an empty library fits a zero mean; the first analyses make it stale
    empty = fit_geometry(np.zeros((0, DIM), np.float32))
    assert empty.method == "centred" and not np.any(empty.mean)
    assert current_geometry(empty, np.zeros((0, DIM), np.float32)) is empty
    assert empty.stale(emb)


# ---------------------------------------------------------------------------- every feature


def _seed_where_geometries_disagree(emb: np.ndarray) -> tuple[int, int, int]:
    """(seed row, its nearest row centred, its nearest row raw) for a seed where they differ."""
    raw, cen = unit_rows(emb), fit_geometry(emb).apply(emb)
    for s in range(len(emb)):
        r, c = raw @ raw[s], cen @ cen[s]
        r[s] = c[s] = -np.inf
        if int(np.argmax(r)) != int(np.argmax(c)) and np.sort(c)[-1] - np.sort(c)[-2] > 0.02:
            return s, int(np.argmax(c)), int(np.argmax(r))
    raise AssertionError("no disagreeing seed in the test library")


FEATURES = ("similar", "fingerprint", "alchemy", "mix")


@pytest.mark.parametrize("feature", FEATURES)
def test_every_feature_ranks_in_the_catalogue_geometry(feature: str) -> None:
    """Fails if a feature compares anything but the catalogue's (centred) vectors."""
    emb = hubby()
    cat = catalogue(emb, fit_geometry(emb))
    index = SimilarityIndex.build(cat.ids, cat.vectors)
    s, centred_nn, raw_nn = _seed_where_geometries_disagree(emb)
    seed = int(cat.ids[s])
    if feature == "similar":
        got = similar_tracks(cat, index, [seed], n=1)[0].track_id
    elif feature == "fingerprint":
        got = sonic_fingerprint(cat, index, [Play(seed, 3, None)], n=1)[0].track_id
    elif feature == "alchemy":
        got = alchemy(cat, index, [Ingredient("song", seed)], n=1).matches[0].track_id
    else:
        got = mix(cat, index, [seed], [], {}, MixRules(count=1, shuffle=False, max_distance=2.0),
                  random.Random(0))[0]
    assert got == int(cat.ids[centred_nn]) != int(cat.ids[raw_nn])


def test_song_path_steps_are_distances_in_the_catalogue_geometry() -> None:
    emb = hubby()
    g = fit_geometry(emb)
    cat = catalogue(emb, g)
    index = SimilarityIndex.build(cat.ids, cat.vectors)
    path = song_path(cat, index, 1, 40, length=6)
    v, raw = g.apply(emb), unit_rows(emb)
    rows = [t - 1 for t in path.track_ids]
    centred_steps = [1 - float(v[a] @ v[b]) for a, b in zip(rows, rows[1:], strict=False)]
    raw_steps = [1 - float(raw[a] @ raw[b]) for a, b in zip(rows, rows[1:], strict=False)]
    got = [s.distance for s in path.steps[1:]]
    assert np.allclose(got, centred_steps, atol=1e-4)
    assert not np.allclose(got, raw_steps, atol=1e-2)


def test_clustering_clusters_the_catalogue_vectors() -> None:
    """Same playlists as on embeddings transformed beforehand; other ones than on raw."""
    emb = hubby(120, seed=3)
    g = fit_geometry(emb)

    def playlists(cat: Catalogue) -> list[tuple[int, ...]]:
        result = cluster_playlists(cat, n_playlists=3, algorithms=("kmeans",), trials=2)
        return sorted(tuple(sorted(p.track_ids)) for p in result.playlists)

    centred = playlists(catalogue(emb, g))
    assert centred == playlists(catalogue(g.apply(emb)))
    assert centred != playlists(catalogue(emb))


def test_duplicates_are_still_found_and_judged_on_raw_cosines() -> None:
    """A re-encode (raw cosine 0.9997) next to a hub: same verdicts raw and centred."""
    emb = hubby()
    rng = np.random.default_rng(5)
    u = unit_rows(emb)
    copies = []
    for r in (0, 10, 20):
        c = u[r] + rng.standard_normal(DIM) * 0.0015
        copies.append(c / np.linalg.norm(c))
    # a different track almost as close as a copy in raw terms but not the same recording
    near = u[30] + rng.standard_normal(DIM) * 0.02
    all_emb = np.concatenate([emb, np.array(copies), near[None, :] / np.linalg.norm(near)])
    durations = np.full(len(all_emb), 200.0)
    raw_cat = catalogue(all_emb, durations=durations)
    cen_cat = catalogue(all_emb, fit_geometry(all_emb), durations=durations)
    found = {}
    for name, cat in (("raw", raw_cat), ("centred", cen_cat)):
        index = SimilarityIndex.build(cat.ids, cat.vectors)
        cands = dup.candidate_pairs(cat, index)
        groups, pairs = dup.find_duplicates(cat, index)  # no fingerprints: the fallback rule
        found[name] = (sorted(g.track_ids for g in groups),
                       [(a, b, round(c, 5)) for a, b, c in cands])
        # playlists hide the copy of a seed
        seed = 1
        ids = [m.track_id for m in similar_tracks(cat, index, [seed], n=10)]
        assert len(emb) + 1 not in ids
        assert dup.is_duplicate(cat, 0, len(emb)) and not dup.is_duplicate(cat, 30, len(emb) + 3)
    assert found["raw"] == found["centred"]
    assert found["raw"][0] == [(1, len(emb) + 1), (11, len(emb) + 2), (21, len(emb) + 3)]
    assert dup.raw_cosine(cen_cat, 0, len(emb)) == pytest.approx(
        float(raw_cat.vectors[0] @ raw_cat.vectors[len(emb)]), abs=1e-5)


def test_instant_playlists_hide_copies_in_either_geometry() -> None:
    emb = hubby()
    u = unit_rows(emb)
    copy = u[4] + np.random.default_rng(6).standard_normal(DIM) * 0.001
    all_emb = np.concatenate([emb, (copy / np.linalg.norm(copy))[None, :]])
    cat = catalogue(all_emb, fit_geometry(all_emb), durations=np.full(len(all_emb), 200.0))
    ids = [m.track_id for m in instant_playlist(cat, Constraints(size=len(all_emb)), n=len(all_emb))]
    assert not {5, len(all_emb)} <= set(ids)


# ---------------------------------------------------------------------------- persistence


async def _embeddings(config) -> np.ndarray:
    store = await LibraryStore.open(config.db_path)
    try:
        return (await store.embeddings(analyzer_settings(config).version))[1]
    finally:
        await store.close()


async def test_service_fits_once_saves_and_reuses_the_geometry(tmp_path) -> None:
    config = make_config(tmp_path)
    await fill_store(config)
    emb = await _embeddings(config)
    version = analyzer_settings(config).version

    store = await LibraryStore.open(config.db_path)
    service = LibraryService(store, config)
    await service.refresh(force=True)
    snap = service.snapshot
    saved = await store.geometry(version)
    assert saved is not None and saved.method == "centred" and saved.fitted_on == len(emb)
    want = fit_geometry(emb).apply(emb)
    assert np.allclose(snap.catalogue.vectors, want, atol=1e-6)
    assert snap.catalogue.geometry.method == "centred"
    # the index holds the very vectors the catalogue has
    first = int(snap.catalogue.ids[0])
    assert np.allclose(snap.index.vector(first), snap.catalogue.vectors[0], atol=1e-6)
    assert not await service.refresh()  # saving the fit is not a library change
    await store.close()

    # a restart, and a read-only replica, use the saved fit as it is (no refit)
    for read_only in (False, True):
        store = await LibraryStore.open(config.db_path, read_only=read_only)
        try:
            cfg = config.replace(role="replica") if read_only else config
            again = LibraryService(store, cfg)
            await again.refresh(force=True)
            assert (await store.geometry(version)).fitted_at == saved.fitted_at
            assert np.array_equal(again.snapshot.catalogue.vectors, snap.catalogue.vectors)
            assert again.snapshot.index_status == "loaded" or read_only
        finally:
            await store.close()


async def test_a_library_that_changed_enough_is_refitted_and_reindexed(tmp_path) -> None:
    config = make_config(tmp_path)
    lib = await fill_store(config)
    version = analyzer_settings(config).version
    store = await LibraryStore.open(config.db_path)
    try:
        service = LibraryService(store, config)
        await service.refresh(force=True)
        before = await store.geometry(version)
        # one more track: the mean moves by ~1/60 of a distance, far below the bar
        rec = TrackRecord(source=lib.source, upstream_id="x/one.flac", path="/x/one.flac",
                          title="One", artist="New", duration=200.0)
        existing = list((await store.tracks_of_source(lib.source)).values())
        await store.sync_source(lib.source, [*existing, rec])
        one = (await store.tracks_of_source(lib.source))["x/one.flac"]
        emb = await store.embeddings(version)
        await store.write_results([(one.id, synthetic_analysis(emb[1][0], version))])
        assert await service.refresh()
        assert (await store.geometry(version)).fitted_at == before.fitted_at
        assert service.snapshot.index_status.startswith("rebuilt: analyses changed")
        # 40 tracks of one new sound: the mean moves, the fit and the index follow
        rng = np.random.default_rng(1)
        new_dir = rng.standard_normal(DIM)
        recs = [TrackRecord(source=lib.source, upstream_id=f"y/{i}.flac", path=f"/y/{i}.flac",
                            title=f"Y{i}", artist="Y", duration=200.0) for i in range(40)]
        existing = list((await store.tracks_of_source(lib.source)).values())
        await store.sync_source(lib.source, [*existing, *recs])
        known = await store.tracks_of_source(lib.source)
        await store.write_results([
            (known[r.upstream_id].id, synthetic_analysis(new_dir + rng.standard_normal(DIM) * 0.05,
                                                         version))
            for r in recs
        ])
        assert await service.refresh()
        after = await store.geometry(version)
        assert after.fitted_at != before.fitted_at and after.fitted_on == 60 + 1 + 40
        assert service.snapshot.index_status == "rebuilt: similarity geometry refitted"
        all_emb = (await store.embeddings(version))[1]
        assert np.allclose(service.snapshot.catalogue.vectors, fit_geometry(all_emb).apply(all_emb),
                           atol=1e-6)
    finally:
        await store.close()


async def test_raw_setting_keeps_the_embeddings_as_analysed(tmp_path) -> None:
    config = make_config(tmp_path, geometry="raw")
    await fill_store(config)
    emb = await _embeddings(config)
    store = await LibraryStore.open(config.db_path)
    try:
        service = LibraryService(store, config)
        await service.refresh(force=True)
        assert np.allclose(service.snapshot.catalogue.vectors, unit_rows(emb), atol=1e-6)
        assert (await store.geometry(analyzer_settings(config).version)).method == "raw"
    finally:
        await store.close()


def test_user_distances_keep_their_meaning_in_the_centred_geometry() -> None:
    """A distance stated on the raw scale (mix's farthest song, alchemy's subtract distance)
    admits about as many pairs once mapped into the centred geometry as it did raw."""
    emb = hubby(120, seed=4)
    g = fit_geometry(emb)
    raw, cen = unit_rows(emb), g.apply(emb)
    iu = np.triu_indices(len(emb), 1)
    d_raw, d_cen = 1 - (raw @ raw.T)[iu], 1 - (cen @ cen.T)[iu]
    assert RAW.distance_for(0.2) == 0.2
    for t in np.quantile(d_raw, [0.05, 0.1, 0.3]):
        share_raw = float((d_raw < t).mean())
        share_mapped = float((d_cen < g.distance_for(t)).mean())
        # one factor for all distances: close on real music (dev corpus shares within 1.6x),
        # looser on this synthetic library whose tracks' distances from the mean vary more
        assert share_raw / 3 < share_mapped < 3 * share_raw
        assert float((d_cen < t).mean()) < share_raw / 3  # unmapped, the same number means less
