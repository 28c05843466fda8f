"""CSLS re-ranking of similar songs (index.hubness): the math, and the setting through the service."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.labels import MSD_LABELS
from analysis.store import LibraryStore, TrackRecord
from index.catalogue import Catalogue, CatalogueRow
from index.faiss_index import SimilarityIndex
from index.hubness import K, candidate_pool, carry_over, csls_similarity, neighbourhood_radius
from index.similar import similar_tracks
from musegate.library import analyzer_settings
from musegate.services import LibraryService
from tests.store_factory import fill_store, make_config, synthetic_analysis

DIM = 200


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def catalogue(vectors: np.ndarray, durations: np.ndarray | None = None) -> Catalogue:
    rows = [
        CatalogueRow(track_id=i + 1, embedding=v,
                     features={"tags": np.full(len(MSD_LABELS), 0.1).tolist()},
                     title=f"Song {i}", artist=f"Artist {i}",
                     duration=None if durations is None else float(durations[i]))
        for i, v in enumerate(vectors)
    ]
    return Catalogue.from_rows(rows)  # raw geometry: the vectors as given


def brute_radius(vectors: np.ndarray, k: int = K) -> np.ndarray:
    s = vectors.astype(np.float64) @ vectors.T.astype(np.float64)
    np.fill_diagonal(s, -np.inf)
    k = min(k, len(vectors) - 1)
    return np.sort(s, axis=1)[:, -k:].mean(axis=1) if k > 0 else np.zeros(len(vectors))


def test_radius_is_the_mean_cosine_to_the_k_nearest_others() -> None:
    rng = np.random.default_rng(0)
    v = unit(rng.standard_normal((300, DIM)))
    v[7] = v[3]  # an exact copy counts as a neighbour; the track itself does not
    ids = np.arange(1, 301, dtype=np.int64) * 5
    index = SimilarityIndex.build(ids, v)
    r = neighbourhood_radius(index, ids, v)
    assert r.dtype == np.float32 and r.shape == (300,)
    assert np.allclose(r, brute_radius(v), atol=1e-5)
    # batches: the same numbers whatever the batch size
    import index.hubness as hubness

    old, hubness.BATCH = hubness.BATCH, 7
    try:
        assert np.array_equal(neighbourhood_radius(index, ids, v), r)
    finally:
        hubness.BATCH = old
    # a track not in the index (about to be added) still gets its k nearest
    q = unit(rng.standard_normal((1, DIM)))
    want = np.sort(v.astype(np.float64) @ q[0].astype(np.float64))[-K:].mean()
    assert neighbourhood_radius(index, np.array([9999]), q)[0] == pytest.approx(want, abs=1e-5)


def test_tiny_libraries_have_small_or_no_neighbourhoods() -> None:
    v = unit(np.random.default_rng(1).standard_normal((3, DIM)))
    one = SimilarityIndex.build(np.array([1]), v[:1])
    assert neighbourhood_radius(one, np.array([1]), v[:1]).tolist() == [0.0]
    three = SimilarityIndex.build(np.arange(1, 4), v)
    assert np.allclose(neighbourhood_radius(three, np.arange(1, 4), v), brute_radius(v), atol=1e-6)
    empty = SimilarityIndex.build(np.zeros(0, np.int64), np.zeros((0, DIM), np.float32))
    assert neighbourhood_radius(empty, np.zeros(0, np.int64), np.zeros((0, DIM))).shape == (0,)


def test_carry_over_keeps_old_radii_and_takes_fresh_ones() -> None:
    got = carry_over(np.array([1, 2, 3]), np.array([0.1, 0.2, 0.3]),
                     np.array([3, 4, 1]), np.array([4]), np.array([0.9]))
    assert np.allclose(got, [0.3, 0.9, 0.1])
    assert candidate_pool(10) == 100 and candidate_pool(50) == 200


def hub_library() -> tuple[np.ndarray, int, int, int]:
    """A query's nearest track by cosine is a hub (one of a dense crowd); a track barely
    farther has a sparse neighbourhood. Returns vectors and (seed, hub, loner) rows."""
    rng = np.random.default_rng(2)
    e = np.linalg.qr(rng.standard_normal((DIM, 3)))[0].T  # three orthonormal directions
    seed = e[0]
    hub = unit(0.70 * e[0] + 0.714 * e[1])
    crowd = unit(hub + rng.standard_normal((40, DIM)) * 0.01)  # the hub's dense neighbourhood
    loner = unit(0.68 * e[0] + 0.733 * e[2])
    scatter = unit(rng.standard_normal((40, DIM)))
    vectors = np.concatenate([[seed, loner, hub], crowd, scatter]).astype(np.float32)
    crowded = np.arange(2, 3 + len(crowd))
    return vectors, 0, int(crowded[np.argmax(vectors[crowded] @ seed)]), 1


def test_a_hub_is_demoted_below_a_song_nearly_as_close() -> None:
    v, seed, hub, loner = hub_library()
    cat = catalogue(v)
    index = SimilarityIndex.build(cat.ids, cat.vectors)
    cos = v @ v[seed]
    assert cos[hub] > cos[loner]  # plain cosine puts the hub first...
    plain = [m.track_id for m in similar_tracks(cat, index, [seed + 1], n=5)]
    assert plain[0] == hub + 1
    cat.radius = neighbourhood_radius(index, cat.ids, cat.vectors)
    assert cat.radius[hub] > cat.radius[loner] + 0.3
    reranked = similar_tracks(cat, index, [seed + 1], n=5)
    assert reranked[0].track_id == loner + 1  # ...CSLS the song whose neighbourhood is not crowded
    # the order is CSLS over every other track; the numbers reported are CSLS on the cosine
    # scale, cos − (r(y) − r(x)) / 2 with the seed's own r(x), so they are sorted best first
    score = csls_similarity(cos, cat.radius, float(cat.radius[seed]))
    score[seed] = -np.inf
    assert [m.track_id for m in reranked] == [int(r) + 1 for r in np.argsort(-score)[:5]]
    sims = [m.similarity for m in reranked]
    assert sims == pytest.approx([float(score[m.track_id - 1]) for m in reranked], abs=1e-5)
    assert sims == sorted(sims, reverse=True)
    # a mood filter scores the allowed rows exactly: the same re-rank
    moody = similar_tracks(cat, index, [seed + 1], n=5, mood={"energy": 0.0})
    assert [m.track_id for m in moody] == [m.track_id for m in reranked]


def test_copies_stay_hidden_when_re_ranked() -> None:
    v, seed, hub, loner = hub_library()
    rng = np.random.default_rng(3)
    copies = unit(v[[seed, loner]] + rng.standard_normal((2, DIM)) * 0.0005)
    all_v = np.concatenate([v, copies])
    cat = catalogue(all_v, durations=np.full(len(all_v), 200.0))
    index = SimilarityIndex.build(cat.ids, cat.vectors)
    cat.radius = neighbourhood_radius(index, cat.ids, cat.vectors)
    ids = [m.track_id for m in similar_tracks(cat, index, [seed + 1], n=10)]
    seed_copy, loner_copy = len(v) + 1, len(v) + 2
    assert loner + 1 in ids and seed_copy not in ids and loner_copy not in ids
    shown = [m.track_id for m in similar_tracks(cat, index, [seed + 1], n=10,
                                                hide_duplicates=False)]
    assert seed_copy in shown and loner_copy in shown


# ---------------------------------------------------------------------------- the service


def test_the_setting_defaults_to_csls_and_rejects_other_values(tmp_path) -> None:
    from musegate.config import ConfigError

    assert make_config(tmp_path).hubness == "csls"
    assert make_config(tmp_path, hubness="NONE").hubness == "none"
    with pytest.raises(ConfigError, match="hubness"):
        make_config(tmp_path, hubness="mutual")


async def test_service_ranks_similar_songs_by_the_setting(tmp_path) -> None:
    answers = {}
    for setting in ("csls", "none"):
        config = make_config(tmp_path / setting, hubness=setting)
        await fill_store(config)
        store = await LibraryStore.open(config.db_path)
        try:
            service = LibraryService(store, config)
            await service.refresh(force=True)
            cat = service.snapshot.catalogue
            if setting == "none":
                assert cat.radius is None
            else:
                assert np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-5)
            seed = int(cat.ids[0])
            got = await service.run(similar_tracks, [seed], n=8, max_per_artist=0,
                                    hide_duplicates=False)
            cos = cat.vectors @ cat.vectors[0]
            score = (cos if cat.radius is None
                     else csls_similarity(cos, cat.radius, float(cat.radius[0])))
            score[0] = -np.inf
            assert [m.track_id for m in got] == [int(cat.ids[r]) for r in np.argsort(-score)[:8]]
            answers[setting] = [m.track_id for m in got]
        finally:
            await store.close()
    assert answers["csls"] != answers["none"]  # the synthetic library has hubs to demote


@pytest.mark.parametrize("threshold", [10, 20_000], ids=["hnsw", "flat"])
async def test_a_few_new_tracks_get_their_radius_and_many_refresh_all(tmp_path, threshold) -> None:
    config = make_config(tmp_path, hnsw_threshold=threshold)
    lib = await fill_store(config)
    version = analyzer_settings(config).version
    store = await LibraryStore.open(config.db_path)
    try:
        service = LibraryService(store, config)
        await service.refresh(force=True)
        assert service.snapshot.index.kind == ("hnsw" if threshold == 10 else "flat")
        before = service.snapshot.catalogue
        emb = (await store.embeddings(version))[1]

        async def add(names: list[str]) -> Catalogue:
            recs = [TrackRecord(source=lib.source, upstream_id=f"x/{n}.flac", path=f"/x/{n}.flac",
                                title=n, artist="New", duration=200.0) for n in names]
            existing = list((await store.tracks_of_source(lib.source)).values())
            await store.sync_source(lib.source, [*existing, *recs])
            known = await store.tracks_of_source(lib.source)
            await store.write_results([
                (known[r.upstream_id].id, synthetic_analysis(emb[i] * 1.01 + 0.001, version))
                for i, r in enumerate(recs)])
            assert await service.refresh()
            return service.snapshot.catalogue

        cat = await add(["one"])  # 1 of 61: below STALE_SHARE, only the new track is computed
        new_row = len(cat) - 1 if cat.titles[-1] == "one" else cat.titles.index("one")
        s = cat.vectors.astype(np.float64) @ cat.vectors[new_row].astype(np.float64)
        s[new_row] = -np.inf
        assert cat.radius[new_row] == pytest.approx(np.sort(s)[-K:].mean(), abs=1e-4)
        for t in before.ids:  # the others keep the radius they had (stale by design)
            assert cat.radius[cat.row(int(t))] == before.radius[before.row(int(t))]
        assert not np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-5)
        # six more: 7 changes since the full computation, above 10 % of 67: all afresh
        cat = await add([f"more {i}" for i in range(1, 7)])
        assert np.allclose(cat.radius, brute_radius(cat.vectors), atol=1e-4)
    finally:
        await store.close()
