"""Clustering into playlists on synthetic libraries with known groups."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from analysis.labels import MSD_LABELS
from index.catalogue import Catalogue
from index.clustering import (
    ALGORITHMS,
    ClusteringResult,
    _tempo_word,
    _unique_names,
    cluster_playlists,
    min_tracks,
)

# Each synthetic group leans on two tags and has its own tempo and energy.
GROUP_TAGS = [
    ("Mellow", "acoustic"),
    ("metal", "hard rock"),
    ("electronic", "dance"),
    ("jazz", "instrumental"),
    ("Hip-Hop", "rnb"),
    ("folk", "female vocalists"),
    ("ambient", "chillout"),
    ("punk", "90s"),
]
GROUP_TEMPO = [72, 160, 126, 100, 92, 110, 64, 170]
GROUP_ENERGY = [0.2, 0.9, 0.8, 0.45, 0.6, 0.4, 0.1, 0.85]


def make_catalogue(n_groups: int = 6, per_group: int = 40, seed: int = 0, artists: int = 5,
                   dim: int = 200, spread: float = 0.35) -> tuple[Catalogue, np.ndarray]:
    """Clustered unit vectors with tag, tempo and energy profiles per group."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_groups, dim))
    groups = np.repeat(np.arange(n_groups), per_group)
    n = len(groups)
    vectors = centres[groups] + spread * rng.normal(size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    tags = rng.uniform(0.0, 0.12, size=(n, len(MSD_LABELS))).astype(np.float32)
    for g in range(n_groups):
        a, b = GROUP_TAGS[g % len(GROUP_TAGS)]
        tags[groups == g, MSD_LABELS.index(a)] += 0.6
        tags[groups == g, MSD_LABELS.index(b)] += 0.4
    tempo = np.array([GROUP_TEMPO[g % 8] for g in groups], np.float32) + rng.uniform(-4, 4, n)
    energy = np.array([GROUP_ENERGY[g % 8] for g in groups]) + rng.uniform(-0.04, 0.04, n)
    cat = Catalogue(
        ids=(np.arange(n, dtype=np.int64) + 1) * 7,
        vectors=vectors,
        tags=tags,
        tempo=tempo.astype(np.float32),
        energy=np.clip(energy, 0, 1).astype(np.float32),
        loudness=np.full(n, -12.0, np.float32),
        key=(groups % 12).astype(np.int8),
        minor=groups % 2 == 1,
        duration=np.full(n, 210.0, np.float32),
        titles=[f"Song {i}" for i in range(n)],
        artists=[f"Artist {groups[i]}-{i % artists}" for i in range(n)],
        albums=[f"Album {groups[i]}" for i in range(n)],
    )
    return cat, groups


@pytest.fixture(scope="module")
def six() -> tuple[Catalogue, np.ndarray, ClusteringResult]:
    cat, groups = make_catalogue()
    return cat, groups, cluster_playlists(cat, n_playlists=6, max_per_artist=3)


def test_recovers_groups_as_playlists(six) -> None:
    cat, groups, result = six
    assert len(result.playlists) == 6
    seen_groups = set()
    for p in result.playlists:
        g = Counter(int(groups[cat.row(t)]) for t in p.track_ids)
        group, count = g.most_common(1)[0]
        assert count == len(p.track_ids)  # every playlist is one pure group
        seen_groups.add(group)
    assert seen_groups == set(range(6))
    assert result.algorithm in ALGORITHMS
    assert result.silhouette > 0.3


def test_names_come_from_tags_tempo_and_energy(six) -> None:
    cat, groups, result = six
    names = [p.name for p in result.playlists]
    assert len({n.lower() for n in names}) == len(names)
    by_group = {}
    for p in result.playlists:
        by_group[int(groups[cat.row(p.track_ids[0])])] = p
    mellow = by_group[0]
    assert mellow.name.startswith("Mellow acoustic · slow"), mellow.name
    assert "calm" in mellow.name
    assert by_group[1].name.startswith("Metal hard rock · fast") or \
        by_group[1].name.startswith("Hard rock metal · fast"), by_group[1].name
    assert "high energy" in by_group[1].name
    assert "jazz" in by_group[3].name.lower() and "mid-tempo" in by_group[3].name
    for p in result.playlists:
        assert p.tags[0][0] in GROUP_TAGS[int(groups[cat.row(p.track_ids[0])])]
        assert 40 < p.tempo < 200 and 0 <= p.energy <= 1


def test_artist_cap_and_max_songs() -> None:
    cat, _ = make_catalogue(n_groups=4, per_group=60, artists=6)
    result = cluster_playlists(cat, n_playlists=4, max_per_artist=2, max_songs=10, trials=4)
    for p in result.playlists:
        artists = Counter(cat.artists[cat.row(t)] for t in p.track_ids)
        assert max(artists.values()) <= 2
        assert len(p.track_ids) == 10
        assert len(set(p.track_ids)) == len(p.track_ids)
    uncapped = cluster_playlists(cat, n_playlists=4, max_per_artist=0, max_songs=1000, trials=4)
    assert sum(len(p.track_ids) for p in uncapped.playlists) == len(cat)


def test_deterministic_for_a_seed() -> None:
    cat, _ = make_catalogue(n_groups=5, per_group=30, seed=3)
    a = cluster_playlists(cat, n_playlists=4, trials=10, seed=11)
    b = cluster_playlists(cat, n_playlists=4, trials=10, seed=11)
    assert [(p.name, p.track_ids) for p in a.playlists] == [(p.name, p.track_ids)
                                                             for p in b.playlists]
    assert a.trials == b.trials and a.params == b.params


def test_progress_is_reported_and_monotonic() -> None:
    cat, _ = make_catalogue(n_groups=4, per_group=30)
    calls: list[tuple[float, str]] = []
    result = cluster_playlists(cat, n_playlists=3, trials=6,
                               progress=lambda f, m: calls.append((f, m)))
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in calls)
    assert len(calls) >= len(result.trials) + 2


def test_search_is_bounded_and_recorded() -> None:
    cat, _ = make_catalogue(n_groups=5, per_group=30)
    result = cluster_playlists(cat, n_playlists=5, trials=7)
    assert 5 <= len(result.trials) <= 8
    assert {t["algorithm"] for t in result.trials} == set(ALGORITHMS)
    best = max((t for t in result.trials if "score" in t), key=lambda t: t["score"])
    assert result.score == pytest.approx(best["score"])
    for t in result.trials:
        assert {"silhouette", "purity", "diversity", "noise", "clusters", "score"} <= set(t) \
            or "error" in t


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_alone(algorithm: str) -> None:
    cat, groups = make_catalogue(n_groups=5, per_group=40, seed=2)
    result = cluster_playlists(cat, n_playlists=5, algorithms=[algorithm], trials=3)
    assert result.algorithm == algorithm
    assert len(result.playlists) >= 4
    assert all(t["algorithm"] == algorithm for t in result.trials)
    for p in result.playlists:
        top = Counter(int(groups[cat.row(t)]) for t in p.track_ids).most_common(1)[0][1]
        assert top / len(p.track_ids) >= 0.8


def test_without_pca_and_larger_than_the_subsamples() -> None:
    # more rows than the spectral and silhouette subsamples: exercises assignment of the rest
    cat, groups = make_catalogue(n_groups=8, per_group=300, seed=5, artists=50)
    result = cluster_playlists(cat, n_playlists=8, algorithms=["spectral", "gmm"], trials=4,
                               max_songs=50)
    assert len(result.playlists) == 8
    for p in result.playlists:
        top = Counter(int(groups[cat.row(t)]) for t in p.track_ids).most_common(1)[0][1]
        assert top / len(p.track_ids) >= 0.9
    small, _ = make_catalogue(n_groups=3, per_group=20)
    plain = cluster_playlists(small, n_playlists=3, pca_components=None, trials=3,
                              algorithms=["kmeans"])
    assert len(plain.playlists) == 3


def test_fewer_playlists_than_clusters_picks_distinct_ones() -> None:
    cat, groups = make_catalogue(n_groups=8, per_group=25)
    result = cluster_playlists(cat, n_playlists=3, trials=8)
    assert len(result.playlists) == 3
    owners = [Counter(int(groups[cat.row(t)]) for t in p.track_ids).most_common(1)[0][0]
              for p in result.playlists]
    assert len(set(owners)) == 3


def test_too_small_library_says_how_many_are_needed() -> None:
    cat, _ = make_catalogue(n_groups=2, per_group=5)
    with pytest.raises(ValueError, match=rf"at least {min_tracks(10)} analysed tracks.*has 10"):
        cluster_playlists(cat, n_playlists=10)


def test_bad_arguments() -> None:
    cat, _ = make_catalogue(n_groups=3, per_group=20)
    with pytest.raises(ValueError, match="unknown clustering algorithm"):
        cluster_playlists(cat, n_playlists=3, algorithms=["birch"])
    with pytest.raises(ValueError, match="n_playlists"):
        cluster_playlists(cat, n_playlists=0)


def test_names_made_unique_on_collision() -> None:
    names = _unique_names(
        [["Mellow acoustic", "slow"], ["Mellow acoustic", "slow"], ["Mellow acoustic", "slow"]],
        [["folk"], ["sad"], []],
    )
    assert names == ["Mellow acoustic · slow", "Mellow acoustic, sad · slow",
                     "Mellow acoustic · slow (2)"]


def test_tempo_words() -> None:
    assert [_tempo_word(b) for b in (0, 70, 100, 128, 170)] == [
        "free tempo", "slow", "mid-tempo", "upbeat", "fast"]
