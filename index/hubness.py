"""CSLS re-ranking: similar songs scored against each candidate's own neighbourhood.

Centring (index.geometry) removes what every track shares, but some tracks still
sit in dense regions and turn up in many lists ("hubs"). Cross-domain similarity
local scaling (Conneau et al., 2018) scores a candidate y for a query x as
``2·cos(x, y) − r(x) − r(y)``, where r is a track's mean cosine to its k nearest
neighbours: a track close to everything has a high r and must be *much* closer
to the query to win. r(x) is the same for every candidate of one query, so the
ranking needs only r(y), one float per track.

No inner-product index can hold r(y), so it is a re-rank: the index returns the
top candidates by cosine (``candidate_pool``), they are re-ordered by
``2·cos − r(y)``. A candidate outside that pool could in principle win on CSLS;
with the pool at four times the list and at least 100 it is a song far from the
query by cosine, whose r would have to be far below everyone else's.

r is computed for every track with the FAISS index itself, in batches
(:func:`neighbourhood_radius`: 0.6 s at 10k tracks, 15 s at 100k on a loaded
2-core VM). When a few tracks are added or changed, only theirs is computed
(:func:`carry_over`): the others keep the r they had, slightly stale (a new
neighbour could raise it, a removed one lower it) until a geometry refit or
until ``STALE_SHARE`` of the library has changed since the last full computation.
The writer saves them beside the index with a signature of what they were computed
from (index.radii_file), so a restart or a replica loads them instead.

Measured (docs/benchmarks.md, "CSLS re-ranking"): held-out soundtracks
precision@5 0.296 → 0.321 over centring alone; dev corpus unchanged.

Pure functions; the index is only searched.
"""

from __future__ import annotations

import numpy as np

from index.faiss_index import SimilarityIndex

#: Setting values (``hubness``): "csls" re-ranks similar songs, "none" keeps plain cosine.
METHODS = ("csls", "none")
DEFAULT_METHOD = "csls"

#: Neighbours that define a track's neighbourhood. 20, not 10: leave-one-soundtrack-out
#: chose k=20 in all 16 folds (p@5 0.323 vs 0.315, dev p@10 0.646 vs 0.641; bench/heldout_levers.py).
K = 20
#: Queries per index search while computing r: bounds the [batch, K+1] result arrays.
BATCH = 4096
#: Smallest candidate pool the re-rank draws from.
MIN_POOL = 100
#: Every track's r is recomputed once this share of the library was added, changed or
#: removed since the last full computation; below it only the changed tracks get theirs.
STALE_SHARE = 0.1


def candidate_pool(n: int) -> int:
    """How many cosine candidates a list of ``n`` is re-ranked from."""
    return max(4 * int(n), MIN_POOL)


def neighbourhood_radius(
    index: SimilarityIndex, ids: np.ndarray, vectors: np.ndarray, k: int = K
) -> np.ndarray:
    """r per row: the mean cosine of ``vectors[i]`` to its ``k`` nearest *other* indexed tracks.

    The track itself (found by its id ``ids[i]``) is left out, as in the measurements;
    a copy of it is not (it is a real neighbour in the index). float32 [N]; with
    fewer than two tracks indexed there is no neighbourhood and r is 0.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    out = np.zeros(len(ids), np.float32)
    others = min(int(k), len(index) - 1)
    if not len(ids) or others <= 0:
        return out
    v = np.ascontiguousarray(vectors, np.float32)
    for start in range(0, len(ids), BATCH):
        stop = min(start + BATCH, len(ids))
        sims, found = index.search(v[start:stop], others + 1)
        own = found == ids[start:stop, None]
        valid = found >= 0
        # drop the track itself; a track not indexed (or missed by HNSW) drops its last hit
        keep = valid & ~own
        no_self = ~own.any(axis=1)
        if no_self.any():
            last = keep[no_self].cumsum(axis=1) > others
            keep[no_self] &= ~last
        s = np.where(keep, sims, 0.0).astype(np.float64)
        count = keep.sum(axis=1)
        out[start:stop] = np.where(count > 0, s.sum(axis=1) / np.maximum(count, 1), 0.0)
    return out


def carry_over(
    old_ids: np.ndarray,
    old_radius: np.ndarray,
    new_ids: np.ndarray,
    fresh_ids: np.ndarray,
    fresh_radius: np.ndarray,
) -> np.ndarray:
    """r for ``new_ids``: ``fresh_radius`` where computed, else the old track's (stale) r."""
    out = np.zeros(len(new_ids), np.float32)
    old = {int(t): float(r) for t, r in zip(old_ids, old_radius, strict=True)}
    fresh = {int(t): float(r) for t, r in zip(fresh_ids, fresh_radius, strict=True)}
    for i, t in enumerate(np.asarray(new_ids, np.int64)):
        t = int(t)
        out[i] = fresh[t] if t in fresh else old.get(t, 0.0)
    return out


def query_radius(sims_best_first: np.ndarray, k: int = K) -> float:
    """r(x) of a query from its cosines to the library, best first, seeds left out."""
    top = np.asarray(sims_best_first, np.float64)[:k]
    return float(top.mean()) if len(top) else 0.0


def csls_similarity(sims: np.ndarray, radius: np.ndarray, query_r: float = 0.0) -> np.ndarray:
    """CSLS on the cosine scale: ``cos(x, y) − (r(y) − r(x)) / 2``.

    That is (2·cos − r(x) − r(y)) / 2 + r(x): the same order as CSLS (r(x) is one
    number per query), and a cosine wherever both songs' neighbourhoods are equally
    dense, so answers still read as "1 = identical" and stay sorted best first.
    Not clipped: the caller ranks on this and clips what it reports.
    """
    return np.asarray(sims, np.float64) - (np.asarray(radius, np.float64) - float(query_r)) / 2.0
