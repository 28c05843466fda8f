"""Song paths: endpoints, waypoints, no repeats, playlist rules, and a minimised largest jump."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

import index.path as path_module
from index.faiss_index import SimilarityIndex
from index.path import (
    PathStep,
    SongPath,
    _anchors,
    _fill,
    _Improver,
    _nearest_rows,
    _span,
    _targets,
    greedy_path_baseline,
    slerp,
    song_path,
)
from index.results import duplicate_of
from tests.catalogue_factory import make_library


@pytest.fixture(scope="module")
def lib():
    return make_library(
        n_clusters=6, per_cluster=50, spread=0.9, artists_per_cluster=6, near_duplicates=15,
        text_duplicates=15, seed=2,
    )


@pytest.fixture(scope="module")
def index(lib):
    return SimilarityIndex.build(lib.cat.ids, lib.cat.vectors)


def _check_rules(cat, path: SongPath, cap: int = 3) -> None:
    ids = path.track_ids
    assert len(ids) == len(set(ids)), "a song repeats"
    rows = cat.rows(ids)
    assert not any(duplicate_of(cat, int(a), int(b)) for a, b in itertools.combinations(rows, 2))
    artists = [cat.artists[r] for r in rows]
    # anchors may exceed the cap only if the caller chose them so; our fixtures never do
    assert max(artists.count(a) for a in set(artists)) <= cap
    v = cat.vectors[rows].astype(np.float64)
    jumps = 1.0 - np.sum(v[:-1] * v[1:], axis=1)
    assert path.steps[0].distance == 0.0
    assert np.allclose([s.distance for s in path.steps[1:]], jumps, atol=1e-5)
    assert np.isclose(path.max_jump, jumps.max(), atol=1e-6)
    assert np.isclose(path.mean_jump, jumps.mean(), atol=1e-6)


@pytest.mark.parametrize(("a", "b"), [(0, 120), (10, 260), (55, 70), (3, 299)])
def test_path_endpoints_length_and_rules(lib, index, a: int, b: int) -> None:
    cat = lib.cat
    start, end = int(cat.ids[a]), int(cat.ids[b])
    path = song_path(cat, index, start, end, length=20)
    assert isinstance(path, SongPath) and all(isinstance(s, PathStep) for s in path.steps)
    assert len(path.steps) == 20
    assert path.track_ids[0] == start and path.track_ids[-1] == end
    _check_rules(cat, path)


@pytest.mark.parametrize(("a", "b"), [(0, 120), (10, 260), (55, 70), (3, 299), (101, 201)])
def test_largest_jump_never_worse_than_the_greedy_baseline(lib, index, a: int, b: int) -> None:
    cat = lib.cat
    start, end = int(cat.ids[a]), int(cat.ids[b])
    ours = song_path(cat, index, start, end, length=25)
    baseline = greedy_path_baseline(cat, index, start, end, length=25)
    assert len(baseline.steps) == 25
    assert baseline.track_ids[0] == start and baseline.track_ids[-1] == end
    assert ours.max_jump <= baseline.max_jump + 1e-9


def test_improvement_pass_never_raises_the_largest_jump(lib, index) -> None:
    cat = lib.cat
    for a, b in [(0, 120), (10, 260), (101, 201)]:
        anchors = _anchors(cat, int(cat.ids[a]), int(cat.ids[b]), 25, ())
        targets, layout = _targets(cat, anchors, 25, spherical=True)
        rows, pool = _fill(cat, index, anchors, targets, layout, 3, 30)
        improver = _Improver(cat, pool, {int(r) for r in anchors}, 3)
        before = improver.jumps([improver.where[r] for r in rows])
        improved = improver.improve(rows, 500)
        after = improver.jumps([improver.where[r] for r in improved])
        assert after.max() <= before.max() + 1e-12
        assert improved[0] == rows[0] and improved[-1] == rows[-1]
        assert len(set(improved)) == len(improved)


def test_waypoints_are_visited_in_order(lib, index) -> None:
    cat = lib.cat
    start, w1, w2, end = (int(cat.ids[i]) for i in (0, 60, 160, 280))
    path = song_path(cat, index, start, end, length=16, waypoints=[w1, w2])
    ids = path.track_ids
    assert len(ids) == 16 and ids[0] == start and ids[-1] == end
    assert ids.index(w1) < ids.index(w2)
    _check_rules(cat, path)


def test_short_paths(lib, index) -> None:
    cat = lib.cat
    a, b = int(cat.ids[0]), int(cat.ids[200])
    two = song_path(cat, index, a, b, length=2)
    assert two.track_ids == [a, b] and two.max_jump == two.steps[1].distance
    three = song_path(cat, index, a, b, length=3, waypoints=[int(cat.ids[100])])
    assert three.track_ids == [a, int(cat.ids[100]), b]


def test_bad_requests(lib, index) -> None:
    cat = lib.cat
    a, b = int(cat.ids[0]), int(cat.ids[1])
    with pytest.raises(ValueError):
        song_path(cat, index, a, b, length=1)
    with pytest.raises(ValueError):
        song_path(cat, index, a, a)
    with pytest.raises(ValueError):
        song_path(cat, index, a, b, length=3, waypoints=[int(cat.ids[5]), int(cat.ids[6])])
    with pytest.raises(ValueError):
        song_path(cat, index, a, b, waypoints=[a])
    with pytest.raises(KeyError):
        song_path(cat, index, a, 987_654)


def test_deterministic(lib, index) -> None:
    cat = lib.cat
    a, b = int(cat.ids[4]), int(cat.ids[204])
    assert song_path(cat, index, a, b) == song_path(cat, index, a, b)


def test_library_too_small_gives_a_shorter_path() -> None:
    small = make_library(n_clusters=2, per_cluster=4, artists_per_cluster=2, seed=5).cat
    index = SimilarityIndex.build(small.ids, small.vectors)
    path = song_path(small, index, int(small.ids[0]), int(small.ids[7]), length=25,
                     max_per_artist=1)
    # 8 songs by 4 artists, one song each allowed: the path holds exactly 4 songs
    assert path.track_ids[0] == int(small.ids[0]) and path.track_ids[-1] == int(small.ids[7])
    assert len(path.steps) == 4
    assert len(set(path.track_ids)) == len(path.track_ids)


def test_slerp_stays_on_the_great_circle() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 200))
    a /= np.linalg.norm(a)
    b /= np.linalg.norm(b)
    pts = slerp(a, b, np.linspace(0, 1, 5)).astype(np.float64)
    assert np.allclose(np.linalg.norm(pts, axis=1), 1.0, atol=1e-5)
    assert np.allclose(pts[0], a, atol=1e-5) and np.allclose(pts[-1], b, atol=1e-5)
    angles = np.arccos(np.clip(np.sum(pts[:-1] * pts[1:], axis=1), -1, 1))
    assert np.allclose(angles, angles[0], atol=1e-4)  # evenly spaced
    anti = slerp(a, -a, np.array([0.5]))
    assert np.isclose(np.linalg.norm(anti), 1.0, atol=1e-5)


def _allowed_one_by_one(cat, improver, c: int, path: list[int], replaced, cap: int,
                        hide: bool) -> bool:
    """The playlist rules for one candidate, straight from their definition (index.results)."""
    if c in path:
        return False
    rows = [int(improver.pool[p]) for p in path if p not in replaced]
    row = int(improver.pool[c])
    if hide and any(duplicate_of(cat, row, r) for r in rows):
        return False
    artist = cat.artists[row]
    return not (cap > 0 and sum(cat.artists[r] == artist for r in rows) >= cap)


@pytest.fixture(scope="module")
def retitled(lib):
    """The library with every near-duplicate copy under a title of its own and its original's
    key, so only the embedding rule (index.duplicates' fallback) can tell it is a copy."""
    cat = lib.cat
    titles, key = list(cat.titles), cat.key.copy()
    for copy, original in lib.originals.items():
        r, o = cat.row(copy), cat.row(original)
        if "Remastered" in titles[r]:
            titles[r] = f"Another name {r}"
            key[r] = key[o]
    return replace(cat, titles=titles, key=key)


@pytest.mark.parametrize("hide", [True, False])
@pytest.mark.parametrize("cap", [2, 0])
@pytest.mark.parametrize("which", ["copies by title", "copies by embedding"])
def test_vectorised_rules_agree_with_the_rules_one_candidate_at_a_time(
    lib, retitled, index, hide, cap, which
) -> None:
    """The improver checks a whole candidate list in one go; every verdict must be the one
    the plain rules give, on a library full of copies, same-title cuts and capped artists."""
    cat = lib.cat if which == "copies by title" else retitled
    anchors = _anchors(cat, int(cat.ids[0]), int(cat.ids[299]), 25, ())
    targets, layout = _targets(cat, anchors, 25, spherical=True)
    rows, _ = _fill(cat, index, anchors, targets, layout, cap, 30, hide_duplicates=hide)
    pool = np.arange(len(cat))  # every song, so every copy of a path song is a candidate
    improver = _Improver(cat, pool, {int(r) for r in anchors}, cap, hide_duplicates=hide)
    # put originals of copies (and a same-title cut) into the path, so their copies are candidates
    pairs = [(cat.row(c), cat.row(o)) for c, o in sorted(lib.originals.items())]
    pairs = [(c, o) for c, o in pairs if c not in rows and o not in rows]
    pairs = pairs[:3] + pairs[-3:]  # copies first, then cuts (make_library's order)
    for slot, (_, o) in zip(range(2, len(rows) - 1, 3), pairs, strict=False):
        rows[slot] = o
    path = [improver.where[r] for r in rows]
    for s in (1, len(path) // 2, len(path) - 2):
        replaced = (path[s],)
        got = improver._allowed(pool, path, replaced)
        want = [_allowed_one_by_one(cat, improver, int(c), path, replaced, cap, hide)
                for c in pool]
        assert got.tolist() == want
        if cap or hide:  # the rules did reject songs besides the path's own
            assert int(np.sum(~got)) > len(path)
    copies = np.array([c for c, o in pairs if o in rows])
    assert len(copies) == 6
    if cap == 0:  # nothing but the copy rule can turn these away
        assert not improver._allowed(copies, path, ()).any() if hide else (
            improver._allowed(copies, path, ()).all())


@pytest.mark.parametrize("hide", [True, False])
def test_move_table_is_the_best_allowed_swap_at_each_position(lib, retitled, index, hide) -> None:
    """The improver's per-round table of single swaps, computed for all positions at once,
    names at each position the candidate a one-position search would pick."""
    cat = retitled
    anchors = _anchors(cat, int(cat.ids[10]), int(cat.ids[260]), 25, ())
    targets, layout = _targets(cat, anchors, 25, spherical=False)
    rows, pool = _fill(cat, index, anchors, targets, layout, 2, 30, hide_duplicates=hide)
    improver = _Improver(cat, pool, {int(r) for r in anchors}, 2, hide_duplicates=hide)
    path = [improver.where[r] for r in rows]
    movable = [True] * len(path)
    gmax = float(improver.jumps(path).max())
    table = improver._single_moves(path, movable, gmax)
    found = 0
    for s in range(1, len(path) - 1):
        prev, cur, nxt = path[s - 1], path[s], path[s + 1]
        local = np.maximum(improver.dist[:, prev], improver.dist[:, nxt])
        old = max(improver.dist[prev, cur], improver.dist[cur, nxt])
        order = [c for c in np.lexsort((pool, local)) if local[c] < old - 1e-7]
        ok = improver._allowed(np.array(order, np.int64), path, (cur,)) if order else []
        want = next((int(c) for c, good in zip(order, ok, strict=True) if good), -1)
        assert int(table[s]) == want
        found += int(want >= 0)
    assert found  # the greedy fill leaves swaps to make
    assert table[0] == table[-1] == -1


def _same_neighbours(got: list[np.ndarray], cat, index, targets, k: int) -> None:
    sims, ids = index.search(targets, k)
    for j, rows in enumerate(got):
        want = cat.rows(ids[j])
        assert len(rows) == len(want) == len(set(rows.tolist()))
        assert set(rows.tolist()) == set(want.tolist())
        # best first: the order may differ only between songs within float rounding
        mine = cat.vectors[rows].astype(np.float64) @ targets[j].astype(np.float64)
        assert np.all(np.diff(mine) <= 1e-6)


@pytest.mark.parametrize("spherical", [True, False])
def test_scanning_the_anchors_span_finds_what_the_index_finds(lib, index, spherical,
                                                              monkeypatch) -> None:
    """The targets' nearest songs come from the library projected onto the anchors' span;
    they must be the flat index's answer, also with waypoints (one span for several arcs)
    and when the shortlist is so short that most targets need the whole-library rescue."""
    cat = lib.cat
    for ends in [(0, 299), (10, 160, 260), (3, 70, 140, 210, 280)]:
        anchors = _anchors(cat, int(cat.ids[ends[0]]), int(cat.ids[ends[-1]]), 25,
                           [int(cat.ids[w]) for w in ends[1:-1]])
        targets, _ = _targets(cat, anchors, 25, spherical=spherical)
        span = _span(cat, index, anchors)
        assert span is not None
        _same_neighbours(_nearest_rows(cat, index, targets, 40, span), cat, index, targets, 40)
        monkeypatch.setattr(path_module, "PLANE_SHORTLIST", 1)  # 4 k = 160 songs scored
        _same_neighbours(_nearest_rows(cat, index, targets, 40, span), cat, index, targets, 40)
        monkeypatch.undo()


def test_the_index_is_asked_where_a_scan_would_not_be_exact_or_fast(lib, index) -> None:
    cat = lib.cat
    anchors = _anchors(cat, int(cat.ids[0]), int(cat.ids[299]), 12, ())
    hnsw = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=10)
    assert _span(cat, hnsw, anchors) is None  # HNSW: a graph search beats a scan
    partial = SimilarityIndex.build(cat.ids[:-5], cat.vectors[:-5])
    assert _span(cat, partial, anchors) is None  # the index lacks songs the catalogue has
    # a target off the span (antipodal endpoints: slerp picks a third direction) is searched
    span = _span(cat, index, anchors)
    off = np.zeros((1, cat.vectors.shape[1]), np.float32)
    off[0, 0] = 1.0
    got = _nearest_rows(cat, index, off, 10, span)
    _same_neighbours(got, cat, index, off, 10)
    # and the path built on the index alone is a path by the same rules
    path = song_path(cat, hnsw, int(cat.ids[0]), int(cat.ids[299]), length=20)
    assert len(path.steps) == 20 and path.track_ids[0] == int(cat.ids[0])
    _check_rules(cat, path)


def test_pair_floor_is_the_best_any_two_pool_songs_could_do(lib, index) -> None:
    """Pair searches are skipped when this bound cannot beat the gap: it must be the true
    minimum over every ordered pair of distinct pool songs, rules ignored."""
    cat = lib.cat
    pool = np.arange(0, len(cat), 7)
    improver = _Improver(cat, pool, set(), 3)
    d = improver.dist
    for prev, nxt in [(0, 5), (3, 40), (12, 12)]:
        brute = min(max(d[prev, a], d[a, b], d[b, nxt])
                    for a in range(len(pool)) for b in range(len(pool)) if a != b)
        assert np.isclose(improver._pair_floor(prev, nxt), brute, atol=1e-12)
