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
    _text_groups,
    artist_keys,
)

_EPS = 1e-7
#: OpenBLAS spreads a product over every core above about 2^18 multiply-adds
#: (GEMM_MULTITHREAD_THRESHOLD 4 x 65536), and its threads then spin waiting for more
#: work. A path's products are thin (the library against a few vectors, a pool of ~100
#: songs against itself) and on a busy two-core box those threads cost a path ~3x its
#: single-threaded time (bench/path_speed.py), so they are cut into row blocks below that.
_SERIAL_PRODUCT = 1 << 18


def _serial_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in row blocks small enough for OpenBLAS to run each on the calling thread."""
    rows = max(1, _SERIAL_PRODUCT // max(1, a.shape[1] * b.shape[1]))
    if rows >= len(a):
        return a @ b
    out = np.empty((len(a), b.shape[1]), np.result_type(a, b))
    for i in range(0, len(a), rows):
        np.matmul(a[i : i + rows], b, out=out[i : i + rows])
    return out


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
    span: _Span | None = None,
) -> tuple[list[int], np.ndarray]:
    """Nearest allowed unused song per target; returns the path rows and the candidate pool.
    ``span``: the library projected onto the anchors' span, when the caller has it."""
    builder = PlaylistBuilder(cat, max_per_artist, counted=[int(r) for r in anchor_rows],
                              hide_duplicates=hide_duplicates)
    k = min(len(index), pool_size + len(layout))
    pool_rows: list[np.ndarray] = [np.asarray(anchor_rows, np.int64)]
    chosen: list[int] = []
    if len(targets):
        if span is None:
            span = _span(cat, index, anchor_rows)
        for j, rows in enumerate(_nearest_rows(cat, index, targets, k, span)):
            pool_rows.append(rows[:pool_size])
            pick = next((int(r) for r in rows if builder.offer(int(r))), None)
            if pick is None:
                # the index pool ran dry under the rules: scan the whole library for this slot
                sims = _serial_matmul(cat.vectors, targets[j][:, None])[:, 0]
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


#: songs scored against every target when the targets' plane is scanned (_nearest_rows)
PLANE_SHORTLIST = 2048


@dataclass(frozen=True)
class _Span:
    """The library projected onto the span of a path's anchors (see :func:`_nearest_rows`)."""

    basis: np.ndarray  # float64 [dim, anchors], orthonormal columns
    proj: np.ndarray  # float64 [N, anchors], every song's coordinates in the span
    reach: np.ndarray  # float64 [N], the projection's length: no target is closer than this


def _span(cat: Catalogue, index: SimilarityIndex, anchor_rows: np.ndarray) -> _Span | None:
    """The projection, where it beats asking the index (which it answers exactly as);
    None for an HNSW index (large libraries: a graph search beats any scan) or a flat
    index that does not hold exactly the catalogue's songs."""
    if index.kind != "flat" or len(index) != len(cat) or not len(cat):
        return None
    basis, _ = np.linalg.qr(cat.vectors[np.asarray(anchor_rows)].astype(np.float64).T)
    p64 = _serial_matmul(cat.vectors, basis.astype(np.float32)).astype(np.float64)
    return _Span(basis, p64, np.sqrt(np.einsum("ij,ij->i", p64, p64)))


def _nearest_rows(cat: Catalogue, index: SimilarityIndex, targets: np.ndarray, k: int,
                  span: _Span | None) -> list[np.ndarray]:
    """Per target, the catalogue rows of its ``k`` nearest songs, best first.

    Every target lies in the span of the anchors' vectors (slerp and lerp only mix
    consecutive anchors), so a song's cosine to a target is its projection onto that
    span dotted with the target's coordinates there: one thin product over the library
    (N x a few, shared by both fills) replaces a full scan per target. The projection's
    length bounds the cosine to every target, so only the ``PLANE_SHORTLIST`` songs
    reaching furthest into the span are scored, and a target whose k-th best could be
    beaten from outside them is scored over the whole library: the answer is the exact
    search's (up to float rounding between near-equal songs). Without a ``span`` the
    index is asked.
    """
    t64 = np.asarray(targets, np.float64)
    coords = t64 @ span.basis if span is not None else None
    if (span is None or k <= 0 or coords is None
            or float(np.abs(t64 - coords @ span.basis.T).max()) > 1e-5):  # off the span: antipodes
        _, ids = index.search(targets, k)
        return _known_rows(cat, ids)
    m = min(len(cat), max(PLANE_SHORTLIST, 4 * k))
    if m < len(cat):
        part = np.argpartition(-span.reach, m)
        short, beyond = part[:m], float(span.reach[part[m]]) + 1e-5
    else:
        short, beyond = np.arange(len(cat)), -np.inf
    sims = span.proj[short] @ coords.T  # [m, targets]
    kk = min(k, len(short))
    out = []
    for j in range(len(t64)):
        col = sims[:, j]
        top = np.argpartition(-col, kk - 1)[:kk] if kk < len(col) else np.arange(len(col))
        rows, scores = short[top], col[top]
        if float(scores.min()) < beyond:  # a song outside the shortlist might be nearer
            full = _serial_matmul(span.proj, coords[j][:, None])[:, 0]
            rows = np.argpartition(-full, k - 1)[:k] if k < len(full) else np.arange(len(full))
            scores = full[rows]
        out.append(rows[np.lexsort((rows, -scores))].astype(np.int64))
    return out


def _known_rows(cat: Catalogue, ids: np.ndarray) -> list[np.ndarray]:
    """Catalogue rows of each line of index hits, in order, without the ones the catalogue
    lacks (empty slots, or a track removed between the index and the catalogue swap)."""
    found = ids >= 0
    try:
        rows = np.full(ids.shape, -1, np.int64)
        rows[found] = cat.rows(ids[found])
        return [line[line >= 0] for line in rows]
    except KeyError:  # rare: map the hits one by one
        return [np.array([cat.row(int(t)) for t in line[line >= 0] if cat.has(int(t))], np.int64)
                for line in ids]


class _Improver:
    """Local search over a fixed candidate pool with all distances precomputed.

    The playlist rules are checked for a whole ranked candidate list at once
    (:meth:`_allowed`) over integer codes per pool row, so a move costs a few
    array operations instead of a Python loop over candidates and path songs.
    """

    def __init__(
        self, cat: Catalogue, pool: np.ndarray, fixed_rows: set[int], max_per_artist: int,
        hide_duplicates: bool = True,
    ) -> None:
        self.cat = cat
        self.pool = pool
        self.where = {int(r): i for i, r in enumerate(pool)}
        vp = cat.vectors[pool].astype(np.float64)
        gram = np.clip(_serial_matmul(vp, vp.T), -1.0, 1.0)
        self.dist = 1.0 - gram
        # copies are judged lazily per pair; without hiding, only a song blocks itself,
        # which the "already in the path" rule covers
        self.copies = DuplicateLookup(cat, pool, gram) if hide_duplicates else None
        # pool rows with any close (raw cosine) partner: the only ones a copy check can reject
        self.close = (self.copies.pending.any(axis=1) if self.copies is not None
                      else np.zeros(len(pool), bool))
        self.text = (_renumbered(_text_groups(cat)[pool]) if hide_duplicates
                     else np.full(len(pool), -1, np.int64))
        self.n_texts = int(self.text.max()) + 1 if len(pool) else 0
        self.duration = cat.duration[pool].astype(np.float64)
        # same title+artist within 3 s: one pool x pool table, as the rule does not change
        self.clash = (
            (self.text[:, None] == self.text[None, :])
            & (self.text >= 0)[:, None]
            & (np.abs(self.duration[:, None] - self.duration[None, :]) <= DUPLICATE_SECONDS)
        )
        self.artist = _codes([artist_keys(cat)[int(r)] for r in pool])
        self.n_artists = int(self.artist.max()) + 1 if len(pool) else 0
        self.fixed = {self.where[r] for r in fixed_rows}
        self._floors: dict[tuple[int, int], float] = {}
        self.cap = max_per_artist

    def _others(self, path: list[int], replaced: Sequence[int]) -> np.ndarray:
        here = np.asarray(path, np.int64)
        keep = np.ones(len(here), bool)
        for r in replaced:
            keep &= here != r
        return here[keep]

    def _artist_counts(self, others: np.ndarray) -> np.ndarray:
        mine = self.artist[others]
        return np.bincount(mine[mine >= 0], minlength=self.n_artists)

    def _allowed(self, cands: np.ndarray, path: list[int], replaced: Sequence[int]) -> np.ndarray:
        """Which of ``cands`` (pool rows) may take the place of ``replaced`` in ``path``."""
        cands = np.asarray(cands, np.int64)
        in_path = np.zeros(len(self.pool), bool)
        in_path[path] = True
        ok = ~in_path[cands]
        others = self._others(path, replaced)
        if not len(others):
            return ok
        if self.cap > 0:
            art = self.artist[cands]
            ok &= ~((art >= 0) & (self._artist_counts(others)[np.maximum(art, 0)] >= self.cap))
        if self.n_texts:
            taken = np.zeros(self.n_texts + 1, bool)  # the last slot is "no title" (-1)
            taken[self.text[others]] = True
            taken[-1] = False
            for i in np.flatnonzero(taken[self.text[cands]] & ok):
                c = int(cands[i])
                same = others[self.text[others] == self.text[c]]
                if bool((np.abs(self.duration[same] - self.duration[c]) <= DUPLICATE_SECONDS).any()):
                    ok[i] = False
        if self.copies is not None and bool(ok.any()):
            keep = np.flatnonzero(ok & self.close[cands])
            if len(keep):
                ok[keep] = ~self.copies.copies_among(cands[keep], others)
        return ok

    def _pairs_allowed(self, a: np.ndarray, b: np.ndarray, path: list[int],
                       replaced: Sequence[int]) -> np.ndarray:
        """Pair-specific rules only, for pairs whose members each passed ``_allowed`` alone;
        copies are left to the caller (judged lazily, pair by pair, in rank order)."""
        ok = a != b
        same_text = (self.text[a] >= 0) & (self.text[a] == self.text[b])
        ok &= ~(same_text & (np.abs(self.duration[a] - self.duration[b]) <= DUPLICATE_SECONDS))
        if self.cap > 0:
            counts = self._artist_counts(self._others(path, replaced))
            art = self.artist[a]
            ok &= ~((art >= 0) & (art == self.artist[b]) & (counts[np.maximum(art, 0)] + 2 > self.cap))
        return ok

    def jumps(self, path: list[int]) -> np.ndarray:
        p = np.asarray(path)
        return self.dist[p[:-1], p[1:]] if len(p) > 1 else np.zeros(0)

    def _first(self, cands: np.ndarray, path: list[int], replaced: Sequence[int]) -> int | None:
        """The first allowed of ``cands`` (in rank order), if any."""
        if not len(cands):
            return None
        hit = np.flatnonzero(self._allowed(cands, path, replaced))
        return int(cands[hit[0]]) if len(hit) else None

    def _moves(self, path: list[int], movable: list[bool], key: np.ndarray,
               better: np.ndarray) -> np.ndarray:
        """Per path position, the pool row a single swap there would take (-1: none).

        ``key`` and ``better`` are [pool, interior positions]: the rank of each candidate
        there (lowest first, ties by pool order) and whether it would improve the path.
        The rules are evaluated for every position at once from counts over the whole path,
        minus what the song being replaced contributes, so one position's answer is what
        ``_allowed`` gives for it alone.
        """
        here = np.asarray(path, np.int64)
        inner = here[1:-1]
        ok = better & np.asarray(movable[1:-1], bool)[None, :]
        in_path = np.zeros(len(self.pool), bool)
        in_path[here] = True
        ok &= ~in_path[:, None]
        if self.cap > 0:
            art = self.artist
            counts = self._artist_counts(here)[np.maximum(art, 0)]
            same_artist = counts[:, None] - (art[:, None] == art[inner][None, :])
            ok &= ~((art >= 0)[:, None] & (same_artist >= self.cap))
        if self.n_texts:
            hits = self.clash[:, here]
            ok &= (hits.sum(axis=1)[:, None] - self.clash[:, inner]) == 0
        if self.copies is not None:
            rows = np.flatnonzero(ok.any(axis=1) & self.close)
            if len(rows):
                self.copies.judge(rows, here)
                same = self.copies.same[np.ix_(rows, here)].sum(axis=1)[:, None]
                ok[rows] &= (same - self.copies.same[np.ix_(rows, inner)]) == 0
        ranked = np.where(ok, key, np.inf)
        best = np.argmin(ranked, axis=0)
        out = np.full(len(path), -1, np.int64)
        found = np.isfinite(ranked[best, np.arange(len(inner))])
        out[1:-1][found] = best[found]
        return out

    def _single_moves(self, path: list[int], movable: list[bool], gmax: float) -> np.ndarray:
        """``_moves`` for lowering the larger of the two jumps around each position."""
        here = np.asarray(path, np.int64)
        old = np.maximum(self.dist[here[:-2], here[1:-1]], self.dist[here[1:-1], here[2:]])
        local = np.maximum(self.dist[:, here[:-2]], self.dist[:, here[2:]])
        return self._moves(path, movable, local, (local < old - _EPS) & (local <= gmax + _EPS))

    def _pair_floor(self, prev: int, nxt: int) -> float:
        """The smallest largest jump any two distinct pool songs between ``prev`` and ``nxt``
        could give, whatever the rules: a pair search that cannot beat it is skipped. The
        same gap is attacked round after round, so the answer is kept."""
        key = (prev, nxt)
        floor = self._floors.get(key)
        if floor is None:
            cost = np.maximum(np.maximum(self.dist[:, prev][:, None], self.dist),
                              self.dist[:, nxt][None, :])
            np.fill_diagonal(cost, np.inf)
            floor = self._floors[key] = float(cost.min()) if cost.size else np.inf
        return floor

    def _pair(self, path: list[int], s: int, gmax: float) -> bool:
        """Replace path[s] and path[s+1] together when no single swap can shorten their jump."""
        prev, nxt = path[s - 1], path[s + 2]
        old = max(self.jumps(path[s - 1 : s + 3]))
        if self._pair_floor(prev, nxt) >= old - _EPS:
            return False  # no two songs of the pool, allowed or not, bridge this tighter
        replaced = (path[s], path[s + 1])
        near = min(len(self.pool), 96)

        def shortlist(anchor: int) -> np.ndarray:
            ranked = np.argsort(self.dist[:, anchor], kind="stable")[: 4 * near]
            return ranked[self._allowed(ranked, path, replaced)][:near]

        first, second = shortlist(prev), shortlist(nxt)
        if not len(first) or not len(second):
            return False
        cost = np.maximum(
            np.maximum(self.dist[first, prev][:, None], self.dist[np.ix_(first, second)]),
            self.dist[second, nxt][None, :],
        ).ravel()
        flat = np.flatnonzero((cost < old - _EPS) & (cost <= gmax + _EPS))
        flat = flat[np.argsort(cost[flat], kind="stable")]
        a, b = first[flat // len(second)], second[flat % len(second)]
        for i in np.flatnonzero(self._pairs_allowed(a, b, path, replaced)):
            if self.copies is None or not self.copies[int(a[i]), int(b[i])]:
                path[s], path[s + 1] = int(a[i]), int(b[i])
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
            singles = self._single_moves(path, movable, gmax) if len(path) > 2 else None
            for i in np.argsort(-d, kind="stable"):
                i = int(i)
                for s in (i, i + 1):
                    if 0 < s < len(path) - 1 and singles is not None and singles[s] >= 0:
                        path[s] = int(singles[s])
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
        """Lower the mean jump with single swaps that keep every jump under the current maximum.

        Positions are visited in order and each sees the swaps made before it; the table of
        best swaps is recomputed only after a swap (until then it is exact for the rest).
        """
        if len(path) < 3:
            return
        gmax = float(self.jumps(path).max())
        for _ in range(sweeps):
            changed = False
            s = 1
            while s < len(path) - 1:
                here = np.asarray(path, np.int64)
                old = self.dist[here[:-2], here[1:-1]] + self.dist[here[1:-1], here[2:]]
                total = self.dist[:, here[:-2]] + self.dist[:, here[2:]]
                worst = np.maximum(self.dist[:, here[:-2]], self.dist[:, here[2:]])
                later = np.arange(1, len(path) - 1) >= s
                better = (total < old - _EPS) & (worst <= gmax + _EPS) & later[None, :]
                moves = self._moves(path, movable, total, better)
                hit = np.flatnonzero(moves >= 0)
                if not len(hit):
                    break
                s = int(hit[0])
                path[s] = int(moves[s])
                changed = True
                s += 1
            if not changed:
                break


def _renumbered(groups: np.ndarray) -> np.ndarray:
    """The same groups numbered 0..k-1 (int64), -1 kept: only equality between them counts."""
    out = np.full(len(groups), -1, np.int64)
    known = groups >= 0
    out[known] = np.unique(groups[known], return_inverse=True)[1].reshape(-1)
    return out


def _codes(keys: list[str]) -> np.ndarray:
    """One integer per distinct non-empty key, -1 for "" (unknown: never matches anything)."""
    seen: dict[str, int] = {}
    return np.array([seen.setdefault(k, len(seen)) if k else -1 for k in keys], np.int64)


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
    span: _Span | None = None,
) -> tuple[list[int], np.ndarray]:
    anchor_rows = _anchors(cat, start_id, end_id, length, waypoints)
    targets, layout = _targets(cat, anchor_rows, length, spherical=False)
    return _fill(cat, index, anchor_rows, targets, layout, max_per_artist, pool_size,
                 hide_duplicates, span)


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
    span = _span(cat, index, anchor_rows) if len(targets) else None
    rows, pool = _fill(cat, index, anchor_rows, targets, layout, max_per_artist, pool_size,
                       hide_duplicates, span)
    base_rows, base_pool = _baseline_rows(
        cat, index, start_id, end_id, length, waypoints, max_per_artist, pool_size,
        hide_duplicates, span,
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
