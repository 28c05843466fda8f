"""Similar songs: seeds excluded, artist cap, no duplicate recordings, mood filter, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from index.faiss_index import SimilarityIndex
from index.results import Match, PlaylistBuilder, duplicate_of
from index.similar import mood_mask, similar_tracks
from tests.catalogue_factory import make_library


@pytest.fixture(scope="module")
def lib():
    return make_library(
        n_clusters=5, per_cluster=40, artists_per_cluster=5, near_duplicates=25,
        text_duplicates=25, seed=1,
    )


@pytest.fixture(scope="module")
def index(lib):
    return SimilarityIndex.build(lib.cat.ids, lib.cat.vectors)


def _no_duplicates(cat, ids: list[int]) -> bool:
    rows = cat.rows(ids)
    return not any(duplicate_of(cat, int(a), int(b)) for a, b in itertools.combinations(rows, 2))


def test_duplicate_rule(lib) -> None:
    cat = lib.cat
    near = next(c for c, o in lib.originals.items() if "Remastered" in cat.titles[cat.row(c)])
    text = next(c for c, o in lib.originals.items() if "Remastered" not in cat.titles[cat.row(c)])
    for copy in (near, text):
        assert duplicate_of(cat, cat.row(copy), cat.row(lib.originals[copy]))
    # the text copy is NOT a near-identical embedding: the title+artist+duration rule caught it
    assert float(cat.vectors[cat.row(text)] @ cat.vectors[cat.row(lib.originals[text])]) < 0.99
    assert not duplicate_of(cat, 0, 1)
    # same title and artist but a different length is a different recording (a live cut, say)
    cat.duration[cat.row(text)] += 10
    try:
        assert not duplicate_of(cat, cat.row(text), cat.row(lib.originals[text]))
    finally:
        cat.duration[cat.row(text)] -= 10


def test_neighbours_are_best_first_from_the_seed_cluster(lib, index) -> None:
    cat = lib.cat
    seed = int(cat.ids[3])
    found = similar_tracks(cat, index, [seed], n=10)
    assert len(found) == 10
    assert all(isinstance(m, Match) for m in found)
    assert seed not in [m.track_id for m in found]
    sims = [m.similarity for m in found]
    assert sims == sorted(sims, reverse=True)
    assert {int(lib.labels[cat.row(m.track_id)]) for m in found} == {int(lib.labels[3])}
    expected = cat.vectors[[cat.row(m.track_id) for m in found]] @ cat.vectors[3]
    assert np.allclose(sims, expected, atol=1e-5)


@pytest.mark.parametrize("cap", [1, 2, 3])
def test_artist_cap(lib, index, cap: int) -> None:
    cat = lib.cat
    found = similar_tracks(cat, index, [int(cat.ids[0])], n=15, max_per_artist=cap)
    artists = [cat.artists[cat.row(m.track_id)] for m in found]
    assert max(artists.count(a) for a in set(artists)) <= cap
    assert len(found) == 15


def test_copies_of_the_seed_and_among_results_are_never_offered(lib, index) -> None:
    cat = lib.cat
    for copy, original in lib.originals.items():
        found = [m.track_id for m in similar_tracks(cat, index, [original], n=20)]
        assert copy not in found and original not in found
        assert _no_duplicates(cat, found)
        found = [m.track_id for m in similar_tracks(cat, index, [copy], n=20)]
        assert original not in found


def test_duplicates_among_results_keep_the_best(lib, index) -> None:
    cat = lib.cat
    copy, original = next(iter(lib.originals.items()))
    # seed with a cluster-mate so both copies are strong candidates
    mate = next(
        int(t) for i, t in enumerate(cat.ids)
        if lib.labels[i] == lib.labels[cat.row(original)] and int(t) not in (copy, original)
        and cat.artists[i] != cat.artists[cat.row(original)]
    )
    found = similar_tracks(cat, index, [mate], n=60, max_per_artist=100)
    ids = [m.track_id for m in found]
    assert not (copy in ids and original in ids)
    assert _no_duplicates(cat, ids)


def test_several_seeds_query_their_mean(lib, index) -> None:
    cat = lib.cat
    a, b = int(cat.ids[0]), int(cat.ids[45])  # different clusters
    found = similar_tracks(cat, index, [a, b, a], n=10, max_per_artist=10)
    assert {a, b}.isdisjoint(m.track_id for m in found)
    clusters = {int(lib.labels[cat.row(m.track_id)]) for m in found}
    assert clusters <= {int(lib.labels[0]), int(lib.labels[45])}
    mean = cat.vectors[[0, 45]].mean(axis=0)
    mean /= np.linalg.norm(mean)
    assert np.isclose(found[0].similarity, float(cat.vectors[cat.row(found[0].track_id)] @ mean),
                      atol=1e-5)


def test_deterministic(lib, index) -> None:
    cat = lib.cat
    runs = [similar_tracks(cat, index, [int(cat.ids[7])], n=25) for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    hnsw = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=10)
    assert [m.track_id for m in similar_tracks(cat, hnsw, [int(cat.ids[7])], n=5)] == [
        m.track_id for m in runs[0][:5]
    ]


def test_ties_break_by_track_id(lib) -> None:
    cat = lib.cat
    b = PlaylistBuilder(cat, max_per_artist=3)
    from index.results import rank_order

    order = rank_order(np.array([9, 3, 5]), np.array([0.5, 0.5, 0.7], np.float32))
    assert list(order) == [2, 1, 0]
    assert b.offer(0) and not b.offer(0)


def test_mood_filter(lib, index) -> None:
    cat = lib.cat
    tag = int(np.argmax(cat.tags[0]))
    name = cat.tag_names[tag]
    mood = {name: 0.8, "energy": float(cat.energy[0])}
    found = similar_tracks(cat, index, [int(cat.ids[60])], n=10, mood=mood, mood_tolerance=0.2)
    assert found
    for m in found:
        r = cat.row(m.track_id)
        assert abs(cat.tags[r, tag] - 0.8) <= 0.2
        assert abs(cat.energy[r] - cat.energy[0]) <= 0.2
    assert all(mood_mask(cat, mood, 0.2)[cat.row(m.track_id)] for m in found)
    # tempo is relative: 0.1 tolerance around 90 bpm is 81..99
    mask = mood_mask(cat, {"tempo": 90.0}, 0.1)
    assert np.all(np.abs(cat.tempo[mask] - 90.0) <= 9.0 + 1e-4)
    assert mood_mask(cat, {name.upper(): 0.8}, 0.2).sum() == mood_mask(cat, {name: 0.8}, 0.2).sum()
    with pytest.raises(ValueError, match="happy-go-lucky"):
        similar_tracks(cat, index, [int(cat.ids[0])], mood={"happy-go-lucky": 1.0})


def test_exclude_and_unknown_seeds(lib, index) -> None:
    cat = lib.cat
    first = similar_tracks(cat, index, [int(cat.ids[0])], n=5)
    skip = [first[0].track_id, 123_456]
    again = similar_tracks(cat, index, [int(cat.ids[0])], n=5, exclude=skip)
    assert first[0].track_id not in [m.track_id for m in again]
    with pytest.raises(KeyError):
        similar_tracks(cat, index, [123_456])
    with pytest.raises(ValueError):
        similar_tracks(cat, index, [])


def test_small_library_returns_what_it_can(lib) -> None:
    small = make_library(n_clusters=1, per_cluster=6, artists_per_cluster=2, seed=4).cat
    index = SimilarityIndex.build(small.ids, small.vectors)
    found = similar_tracks(small, index, [int(small.ids[0])], n=50, max_per_artist=2)
    assert len(found) == 4  # 2 per artist; the seed itself does not count towards its cap
    assert int(small.ids[0]) not in [m.track_id for m in found]
