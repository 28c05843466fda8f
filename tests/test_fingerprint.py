"""Sonic fingerprint: play-count and 30-day half-life recency weighting, then neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from index.faiss_index import SimilarityIndex
from index.fingerprint import DAY, Play, fingerprint_vector, play_weights, sonic_fingerprint
from tests.catalogue_factory import make_library

NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def lib():
    return make_library(n_clusters=4, per_cluster=30, artists_per_cluster=6, near_duplicates=8,
                        seed=11)


@pytest.fixture(scope="module")
def index(lib):
    return SimilarityIndex.build(lib.cat.ids, lib.cat.vectors)


def test_recency_halves_every_thirty_days() -> None:
    plays = [Play(1, 4, NOW), Play(2, 4, NOW - 30 * DAY), Play(3, 4, NOW - 60 * DAY),
             Play(4, 8, NOW - 30 * DAY)]
    w = play_weights(plays, NOW)
    assert np.allclose(w / w[0], [1.0, 0.5, 0.25, 1.0])
    w7 = play_weights(plays, NOW, half_life_days=7)
    assert np.isclose(w7[1] / w7[0], 0.5 ** (30 / 7))


def test_old_and_undated_plays() -> None:
    # ten years ago underflows a naive weight; relative weights survive
    ancient = play_weights([Play(1, 3, NOW - 3650 * DAY), Play(2, 1, NOW - 3650 * DAY)], NOW)
    assert np.allclose(ancient, [1.0, 1 / 3])
    # a play from the future counts as now; an undated one as old as the oldest dated play
    w = play_weights([Play(1, 1, NOW + DAY), Play(2, 1, NOW - 60 * DAY), Play(3, 1, None)], NOW)
    assert np.allclose(w, [1.0, 0.25, 0.25])
    # nothing dated: counts alone
    assert np.allclose(play_weights([Play(1, 2, None), Play(2, 1, None)], NOW), [1.0, 0.5])


def test_fingerprint_vector_is_the_weighted_mean(lib) -> None:
    cat = lib.cat
    a, b = int(cat.ids[0]), int(cat.ids[40])
    plays = [Play(a, 10, NOW - 30 * DAY), Play(b, 5, NOW), Play(999_999, 100, NOW)]
    v = fingerprint_vector(cat, plays, NOW)
    expected = 5 * cat.vectors[0] + 5 * cat.vectors[40]  # 10 * 0.5 == 5 * 1
    expected /= np.linalg.norm(expected)
    assert np.allclose(v, expected, atol=1e-5)
    assert np.isclose(np.linalg.norm(v), 1.0, atol=1e-5)


def test_nothing_usable_is_a_clear_error(lib) -> None:
    cat = lib.cat
    with pytest.raises(ValueError, match="listening history"):
        fingerprint_vector(cat, [], NOW)
    with pytest.raises(ValueError, match="listening history"):
        fingerprint_vector(cat, [Play(999_999, 3, NOW), Play(int(cat.ids[0]), 0, NOW)], NOW)


def test_recent_heavy_rotation_steers_the_result(lib, index) -> None:
    cat = lib.cat
    recent = [Play(int(cat.ids[i]), 5, NOW - DAY) for i in range(3)]  # cluster 0
    stale = [Play(int(cat.ids[i]), 5, NOW - 300 * DAY) for i in range(30, 33)]  # cluster 1
    found = sonic_fingerprint(cat, index, recent + stale, n=10, now=NOW)
    assert all(lib.labels[cat.row(m.track_id)] == lib.labels[0] for m in found)
    swapped = [Play(p.track_id, p.play_count, NOW - 300 * DAY) for p in recent] + [
        Play(p.track_id, p.play_count, NOW - DAY) for p in stale
    ]
    found = sonic_fingerprint(cat, index, swapped, n=10, now=NOW)
    assert all(lib.labels[cat.row(m.track_id)] == lib.labels[30] for m in found)


def test_played_songs_and_their_copies_are_left_out_by_default(lib, index) -> None:
    cat = lib.cat
    copy, original = next(iter(lib.originals.items()))
    plays = [Play(original, 7, NOW)]
    found = [m.track_id for m in sonic_fingerprint(cat, index, plays, n=20, now=NOW)]
    assert original not in found and copy not in found
    found = [m.track_id for m in sonic_fingerprint(cat, index, plays, n=20, now=NOW,
                                                    include_played=True)]
    assert found[0] in (original, copy)
    artists = [cat.artists[cat.row(t)] for t in found]
    assert max(artists.count(a) for a in artists) <= 3
    assert sonic_fingerprint(cat, index, plays, n=20, now=NOW) == sonic_fingerprint(
        cat, index, plays, n=20, now=NOW
    )
