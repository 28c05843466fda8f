"""Song paths: a playlist that travels from one song to another (through waypoints).

A path feels smooth when no single step is a jolt, so the quality measure is
the *largest* step, not the average. Construction has two stages:

1. Targets are placed on the great circle between consecutive anchors (slerp;
   the embeddings live on the unit sphere, so straight-line interpolation would
   bunch the targets up) with slots shared out in proportion to each segment's
   angle, and each target takes the nearest unused song the playlist rules allow.
2. A bottleneck-aware local search then repeatedly attacks the largest jump,
   replacing one or two songs beside it from a candidate pool whenever that
   lowers the jump without raising any other above the current maximum. Each
   accepted move strictly lowers the sorted list of jumps, so it terminates and
   can never make the largest jump worse than where it started.

The same search is also run from AudioMuse-AI's nearest-per-step path and the
better of the two kept, so musegate's largest jump is never worse than the
baseline's on the same endpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.catalogue import Catalogue
from index.duplicates import DuplicateLookup
from index.faiss_index import SimilarityIndex
from index.results import (
    DUPLICATE_SECONDS,
    PlaylistBuilder,
    _text_keys,
    artist_keys,
)

_EPS = 1e-7


@dataclass(frozen=True)
class PathStep:
    track_id: int
    distance: float  # cosine distance from the previous step; 0 for the first


@dataclass(frozen=True)
class SongPath:
    steps: list[PathStep]
    max_jump: float
    mean_jump: float

    @property
    def track_ids(self) -> list[int]:
        return [s.track_id for s in self.steps]


def slerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Points at fractions ``t`` of the great-circle arc from unit vector ``a`` to ``b``."""
    t = np.asarray(t, np.float64).reshape(-1, 1)
    cos = float(np.clip(a @ b, -1.0, 1.0))
    theta = float(np.arccos(cos))
    if theta < 1e-6:
        out = (1 - t) * a + t * b
    elif np.pi - theta < 1e-6:
        # antipodal: any great circle works; take one through a deterministic orthogonal direction
        ortho = np.zeros_like(a)
        ortho[int(np.argmin(np.abs(a)))] = 1.0
        ortho = ortho - (ortho @ a) * a
        ortho /= np.linalg.norm(ortho)
        angle = t * np.pi
        out = np.cos(angle) * a + np.sin(angle) * ortho
    else:
        out = (np.sin((1 - t) * theta) * a + np.sin(t * theta) * b) / np.sin(theta)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, np.float64).reshape(-1, 1)
    out = (1 - t) * a + t * b
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _allocate(slots: int, weights: np.ndarray) -> np.ndarray:
    """Share ``slots`` between segments in proportion to ``weights`` (largest remainder)."""
    if slots <= 0:
        return np.zeros(len(weights), np.int64)
    w = np.asarray(weights, np.float64)
    w = np.ones_like(w) if w.sum() <= 0 else w
    exact = slots * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    rest = slots - int(counts.sum())
    order = np.lexsort((np.arange(len(w)), -(exact - counts)))
    counts[order[:rest]] += 1
    return counts


def _anchors(
    cat: Catalogue, start_id: int, end_id: int, length: int, waypoints: Sequence[int]
) -> np.ndarray:
    if length < 2:
        raise ValueError("a path needs at least 2 songs (length >= 2)")
    if int(start_id) == int(end_id):
        raise ValueError("start and end are the same song")
    ids = [int(start_id), *(int(w) for w in waypoints), int(end_id)]
    for t in ids:
        if not cat.has(t):
            raise KeyError(f"track {t} is not analysed")
    if len(set(ids)) != len(ids):
        raise ValueError("a waypoint repeats the start, the end or another waypoint")
    if length < len(ids):
        raise ValueError(f"length {length} is shorter than the {len(ids)} given songs")
    return cat.rows(ids)


def _targets(
    cat: Catalogue, anchor_rows: np.ndarray, length: int, spherical: bool
) -> tuple[np.ndarray, list[int]]:
    """Interpolated target vectors and, per final path position, the anchor row or -1."""
    vecs = cat.vectors[anchor_rows].astype(np.float64)
    slots = length - len(anchor_rows)
    if spherical:
        angles = np.arccos(np.clip(np.sum(vecs[:-1] * vecs[1:], axis=1), -1.0, 1.0))
        counts = _allocate(slots, angles)
    else:
        counts = _allocate(slots, np.ones(len(anchor_rows) - 1))
    targets: list[np.ndarray] = []
    layout: list[int] = []
    for s, m in enumerate(counts):
        layout.append(int(anchor_rows[s]))
        if m:
            t = np.arange(1, m + 1) / (m + 1)
            interp = slerp if spherical else _lerp
            targets.append(interp(vecs[s], vecs[s + 1], t))
            layout.extend([-1] * int(m))
    layout.append(int(anchor_rows[-1]))
    dim = cat.vectors.shape[1]
    return (np.concatenate(targets) if targets else np.zeros((0, dim), np.float32)), layout


def _fill(
    cat: Catalogue,
    index: SimilarityIndex,
    anchor_rows: np.ndarray,
    targets: np.ndarray,
    layout: list[int],
    max_per_artist: int,
    pool_size: int,
    hide_duplicates: bool = True,
) -> tuple[list[int], np.ndarray]:
    """Nearest allowed unused song per target; returns the path rows and the candidate pool."""
    builder = PlaylistBuilder(cat, max_per_artist, counted=[int(r) for r in anchor_rows],
                              hide_duplicates=hide_duplicates)
    k = min(len(index), pool_size + len(layout))
    pool_rows: list[np.ndarray] = [np.asarray(anchor_rows, np.int64)]
    chosen: list[int] = []
    if len(targets):
        _, ids = index.search(targets, k)
        for j in range(len(targets)):
            found = ids[j][(ids[j] >= 0)]
            rows = np.array([cat.row(int(t)) for t in found if cat.has(int(t))], np.int64)
            pool_rows.append(rows[:pool_size])
            pick = next((int(r) for r in rows if builder.offer(int(r))), None)
            if pick is None:
                # the index pool ran dry under the rules: scan the whole library for this slot
                sims = cat.vectors @ targets[j]
                order = np.lexsort((cat.ids, -sims))
                pick = next((int(r) for r in order if builder.offer(int(r))), None)
            if pick is not None:
                chosen.append(pick)
    path: list[int] = []
    it = iter(chosen)
    for slot in layout:
        if slot >= 0:
            path.append(slot)
        else:
            nxt = next(it, None)
            if nxt is not None:
                path.append(nxt)
    return path, np.unique(np.concatenate(pool_rows + [np.array(path, np.int64)]))


class _Improver:
    """Local search over a fixed candidate pool with all distances precomputed."""

    def __init__(
        self, cat: Catalogue, pool: np.ndarray, fixed_rows: set[int], max_per_artist: int,
        hide_duplicates: bool = True,
    ) -> None:
        self.cat = cat
        self.pool = pool
        self.where = {int(r): i for i, r in enumerate(pool)}
        vp = cat.vectors[pool].astype(np.float64)
        gram = np.clip(vp @ vp.T, -1.0, 1.0)
        self.dist = 1.0 - gram
        texts = _text_keys(cat)
        artists = artist_keys(cat)
        if hide_duplicates:
            self.dup_vec: DuplicateLookup | np.ndarray = DuplicateLookup(cat, pool, gram)
            self.text = [texts[int(r)] for r in pool]
        else:  # only a song itself blocks itself; empty title keys never match
            self.dup_vec = np.eye(len(pool), dtype=bool)
            self.text = [""] * len(pool)
        self.artist = [artists[int(r)] for r in pool]
        self.duration = cat.duration[pool].astype(np.float64)
        self.fixed = {self.where[r] for r in fixed_rows}
        self.cap = max_per_artist

    def _valid(self, c: int, path: list[int], replaced: Sequence[int]) -> bool:
        if c in path:
            return False
        others = [p for p in path if p not in replaced]
        if others and bool(self.dup_vec[c, others].any()):
            return False
        key = self.text[c]
        if key and any(
            self.text[p] == key and abs(self.duration[p] - self.duration[c]) <= DUPLICATE_SECONDS
            for p in others
        ):
            return False
        artist = self.artist[c]
        return not (
            artist
            and self.cap > 0
            and sum(1 for p in others if self.artist[p] == artist) >= self.cap
        )

    def _valid_pair(self, a: int, b: int, path: list[int], replaced: Sequence[int]) -> bool:
        """Pair-specific rules only: each of ``a`` and ``b`` already passed ``_valid`` alone."""
        if a == b:
            return False
        if self.dup_vec[a, b] or (
            self.text[a]
            and self.text[a] == self.text[b]
            and abs(self.duration[a] - self.duration[b]) <= DUPLICATE_SECONDS
        ):
            return False
        artist = self.artist[a]
        if artist and self.cap > 0 and artist == self.artist[b]:
            others = [p for p in path if p not in replaced]
            if sum(1 for p in others if self.artist[p] == artist) + 2 > self.cap:
                return False
        return True

    def jumps(self, path: list[int]) -> np.ndarray:
        p = np.asarray(path)
        return self.dist[p[:-1], p[1:]] if len(p) > 1 else np.zeros(0)

    def _single(self, path: list[int], s: int, gmax: float) -> bool:
        prev, nxt = path[s - 1], path[s + 1]
        old = max(self.dist[prev, path[s]], self.dist[path[s], nxt])
        local = np.maximum(self.dist[:, prev], self.dist[:, nxt])
        for c in np.lexsort((self.pool, local)):
            if local[c] >= old - _EPS or local[c] > gmax + _EPS:
                return False
            if self._valid(int(c), path, (path[s],)):
                path[s] = int(c)
                return True
        return False

    def _pair(self, path: list[int], s: int, gmax: float) -> bool:
        """Replace path[s] and path[s+1] together when no single swap can shorten their jump."""
        prev, nxt = path[s - 1], path[s + 2]
        old = max(self.jumps(path[s - 1 : s + 3]))
        replaced = (path[s], path[s + 1])
        near = min(len(self.pool), 96)

        def shortlist(anchor: int) -> np.ndarray:
            ranked = np.argsort(self.dist[:, anchor], kind="stable")
            ok = [int(c) for c in ranked[: 4 * near] if self._valid(int(c), path, replaced)]
            return np.array(ok[:near], np.int64)

        first, second = shortlist(prev), shortlist(nxt)
        if not len(first) or not len(second):
            return False
        cost = np.maximum(
            np.maximum(self.dist[first, prev][:, None], self.dist[np.ix_(first, second)]),
            self.dist[second, nxt][None, :],
        )
        for f in np.argsort(cost, axis=None, kind="stable"):
            i, j = divmod(int(f), len(second))
            if cost[i, j] >= old - _EPS or cost[i, j] > gmax + _EPS:
                return False
            a, b = int(first[i]), int(second[j])
            if self._valid_pair(a, b, path, replaced):
                path[s], path[s + 1] = a, b
                return True
        return False

    def improve(self, rows: list[int], max_rounds: int) -> list[int]:
        path = [self.where[int(r)] for r in rows]
        movable = [i not in self.fixed for i in path]
        for _ in range(max_rounds):
            d = self.jumps(path)
            if not len(d):
                break
            gmax = float(d.max())
            moved = False
            for i in np.argsort(-d, kind="stable"):
                i = int(i)
                for s in (i, i + 1):
                    if 0 < s < len(path) - 1 and movable[s] and self._single(path, s, gmax):
                        moved = True
                        break
                if not moved and d[i] >= gmax - _EPS:
                    for s in (i - 1, i):
                        if (
                            s > 0
                            and s + 2 < len(path)
                            and movable[s]
                            and movable[s + 1]
                            and self._pair(path, s, gmax)
                        ):
                            moved = True
                            break
                if moved:
                    break
            if not moved:
                break
        self._polish(path, movable)
        return [int(self.pool[p]) for p in path]

    def _polish(self, path: list[int], movable: list[bool], sweeps: int = 3) -> None:
        """Lower the mean jump with single swaps that keep every jump under the current maximum."""
        if len(path) < 3:
            return
        gmax = float(self.jumps(path).max())
        for _ in range(sweeps):
            changed = False
            for s in range(1, len(path) - 1):
                if not movable[s]:
                    continue
                prev, nxt = path[s - 1], path[s + 1]
                old = self.dist[prev, path[s]] + self.dist[path[s], nxt]
                total = self.dist[:, prev] + self.dist[:, nxt]
                worst = np.maximum(self.dist[:, prev], self.dist[:, nxt])
                for c in np.lexsort((self.pool, total)):
                    if total[c] >= old - _EPS:
                        break
                    if worst[c] <= gmax + _EPS and self._valid(int(c), path, (path[s],)):
                        path[s] = int(c)
                        changed = True
                        break
            if not changed:
                break


def _song_path(cat: Catalogue, rows: list[int]) -> SongPath:
    v = cat.vectors[np.asarray(rows, np.int64)].astype(np.float64)
    jumps = np.clip(1.0 - np.sum(v[:-1] * v[1:], axis=1), 0.0, 2.0)
    steps = [PathStep(int(cat.ids[rows[0]]), 0.0)] + [
        PathStep(int(cat.ids[r]), float(j)) for r, j in zip(rows[1:], jumps, strict=True)
    ]
    return SongPath(
        steps=steps,
        max_jump=float(jumps.max()) if len(jumps) else 0.0,
        mean_jump=float(jumps.mean()) if len(jumps) else 0.0,
    )


def greedy_path_baseline(
    cat: Catalogue,
    index: SimilarityIndex,
    start_id: int,
    end_id: int,
    length: int = 25,
    waypoints: Sequence[int] = (),
    max_per_artist: int = 3,
) -> SongPath:
    """AudioMuse-AI's method, for benchmarks: evenly spaced linear targets, nearest unused song each."""
    rows, _ = _baseline_rows(cat, index, start_id, end_id, length, waypoints, max_per_artist, 30)
    return _song_path(cat, rows)


def _baseline_rows(
    cat: Catalogue,
    index: SimilarityIndex,
    start_id: int,
    end_id: int,
    length: int,
    waypoints: Sequence[int],
    max_per_artist: int,
    pool_size: int,
    hide_duplicates: bool = True,
) -> tuple[list[int], np.ndarray]:
    anchor_rows = _anchors(cat, start_id, end_id, length, waypoints)
    targets, layout = _targets(cat, anchor_rows, length, spherical=False)
    return _fill(cat, index, anchor_rows, targets, layout, max_per_artist, pool_size,
                 hide_duplicates)


def song_path(
    cat: Catalogue,
    index: SimilarityIndex,
    start_id: int,
    end_id: int,
    length: int = 25,
    waypoints: Sequence[int] = (),
    max_per_artist: int = 3,
    pool_size: int = 30,
    max_rounds: int | None = None,
    hide_duplicates: bool = True,
) -> SongPath:
    """A ``length``-song path from start to end through ``waypoints`` in order, largest jump minimised.

    The path is shorter than ``length`` only when the library cannot supply
    enough songs under the artist and duplicate rules.
    """
    anchor_rows = _anchors(cat, start_id, end_id, length, waypoints)
    targets, layout = _targets(cat, anchor_rows, length, spherical=True)
    rows, pool = _fill(cat, index, anchor_rows, targets, layout, max_per_artist, pool_size,
                       hide_duplicates)
    base_rows, base_pool = _baseline_rows(
        cat, index, start_id, end_id, length, waypoints, max_per_artist, pool_size,
        hide_duplicates,
    )
    improver = _Improver(
        cat, np.union1d(pool, base_pool), {int(r) for r in anchor_rows}, max_per_artist,
        hide_duplicates,
    )
    rounds = max_rounds if max_rounds is not None else 20 * length
    candidates = [
        _song_path(cat, improver.improve(rows, rounds)),
        _song_path(cat, improver.improve(base_rows, rounds)),
    ]
    return min(candidates, key=lambda p: (-len(p.steps), p.max_jump, p.mean_jump))
