"""The rules every playlist obeys: no duplicate recordings, a cap per artist, best first.

Similar songs, paths, alchemy and the fingerprint all end the same way — a
ranked stream of candidates is thinned into a playlist — so the rules live
here once. A "duplicate" is the same recording in another encoding or cut
(a FLAC and an MP3 of one song, a remaster): users rarely want those offered
as "similar", and they would crowd out real neighbours, so they are hidden by
default (``hide_duplicates``); :mod:`index.duplicates` decides what is one
recording, and a same title and artist within 3 s counts too.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

import numpy as np

from index import duplicates, hubness
from index.catalogue import Catalogue, normalise_text
from index.faiss_index import SimilarityIndex
from index.text_column import TextColumn

# Measured on the dev corpus: the same recording as OGG and as 192k MP3 scores
# >= 0.9997 (10 of 10 pairs), while 90 % of songs' nearest *other* song is below
# 0.981 — but two versions of one synthetic piece in another key reach 0.999.
# Only the fallback for analyses without a fingerprint (index.duplicates) and
# song paths' precomputed duplicate matrix still use it.
DUPLICATE_COSINE = duplicates.FALLBACK_COSINE
DUPLICATE_SECONDS = 3.0


#: Called after a per-catalogue key cache was built (once per catalogue): the server
#: registers musegate.heap.release_free_memory, so the heap the build's temporaries
#: (a str per track) used goes back to the system instead of staying in the idle RSS.
on_cache_built: list[Callable[[], None]] = []


def _built() -> None:
    for hook in on_cache_built:
        hook()


@dataclass(frozen=True)
class Match:
    track_id: int
    similarity: float  # cosine to the query, best first (CSLS on the cosine scale: index.hubness)


def _text_groups(cat: Catalogue) -> np.ndarray:
    """int32 per row: rows whose normalised "title|artist" is the same share one number,
    -1 for a row without a title (never the same as anything). Cached on the catalogue
    (rebuilt, never mutated). The rules only compare keys, so the numbers are all they
    keep: 4 bytes a track, where the key strings stayed in the idle server once the first
    request had built them (~100 bytes a track as str, ~50 packed)."""
    cached = cat.__dict__.get("_musegate_text_groups")
    if cached is None or len(cached) != len(cat):
        artists = list(artist_keys(cat))  # one str per distinct artist, shared by its rows
        seen: dict[str, int] = {}
        cached = np.fromiter(
            (seen.setdefault(f"{t}|{a}", len(seen)) if t else -1
             for t, a in zip(map(normalise_text, cat.titles), artists, strict=True)),
            np.int32, len(cat))
        del seen, artists
        cat.__dict__["_musegate_text_groups"] = cached
        _built()
    return cached


def artist_keys(cat: Catalogue) -> TextColumn:
    """Normalised artist per row ("" = unknown, which is never capped: we cannot tell them
    apart): each distinct artist normalised once, held as slot codes (index.text_column)."""
    cached = cat.__dict__.get("_musegate_artist_keys")
    if cached is None or len(cached) != len(cat):
        cached = cat.artists.map(normalise_text)
        cat.__dict__["_musegate_artist_keys"] = cached
        _built()
    return cached


def duplicate_of(cat: Catalogue, row_a: int, row_b: int) -> bool:
    """Same recording (index.duplicates), or same title+artist within 3 s of duration."""
    if duplicates.is_duplicate(cat, row_a, row_b):
        return True
    groups = _text_groups(cat)
    return (
        int(groups[row_a]) >= 0
        and groups[row_a] == groups[row_b]
        and abs(float(cat.duration[row_a]) - float(cat.duration[row_b])) <= DUPLICATE_SECONDS
    )


class PlaylistBuilder:
    """Accepts candidates in rank order and keeps those the playlist rules allow.

    ``blockers`` are rows that are not in the playlist but whose duplicates must
    not enter it either (the seed songs, songs already played).
    ``counted`` rows are already in the playlist (path anchors): they count
    towards the artist cap and block their duplicates.
    """

    def __init__(
        self,
        cat: Catalogue,
        max_per_artist: int = 3,
        blockers: Iterable[int] = (),
        counted: Iterable[int] = (),
        hide_duplicates: bool = True,
    ) -> None:
        self.cat = cat
        self.max_per_artist = max_per_artist
        self.hide_duplicates = hide_duplicates
        self._artists = artist_keys(cat)
        self._texts = _text_groups(cat)
        self._used: set[int] = set()
        self._per_artist: dict[str, int] = {}
        self._by_text: dict[int, list[float]] = {}
        # vectors of every guarded row in a growing buffer: one GEMV per duplicate check
        self._guard_vecs = np.zeros((16, cat.vectors.shape[1]), np.float32)
        self._guard_rows = np.zeros(16, np.int64)
        self._n_guard = 0
        self.rows: list[int] = []
        for r in blockers:
            self._guard(int(r))
        for r in counted:
            self._guard(int(r))
            self._count_artist(int(r), +1)

    def _guard(self, row: int) -> None:
        self._used.add(row)
        if self._n_guard == len(self._guard_vecs):
            self._guard_vecs = np.concatenate([self._guard_vecs, np.zeros_like(self._guard_vecs)])
            self._guard_rows = np.concatenate([self._guard_rows, np.zeros_like(self._guard_rows)])
        self._guard_vecs[self._n_guard] = self.cat.vectors[row]
        self._guard_rows[self._n_guard] = row
        self._n_guard += 1
        group = int(self._texts[row])
        if group >= 0:
            self._by_text.setdefault(group, []).append(float(self.cat.duration[row]))

    def _count_artist(self, row: int, delta: int) -> None:
        artist = self._artists[row]
        if artist:
            self._per_artist[artist] = self._per_artist.get(artist, 0) + delta

    def allows(self, row: int) -> bool:
        if row in self._used:
            return False
        artist = self._artists[row]
        if artist and self.max_per_artist > 0 and self._per_artist.get(artist, 0) >= self.max_per_artist:
            return False
        if not self.hide_duplicates:
            return True
        key = int(self._texts[row])
        if key >= 0 and key in self._by_text:
            duration = float(self.cat.duration[row])
            if any(abs(duration - d) <= DUPLICATE_SECONDS for d in self._by_text[key]):
                return False
        if self._n_guard:
            sims = self._guard_vecs[: self._n_guard] @ self.cat.vectors[row]
            if duplicates.duplicate_among(self.cat, row, self._guard_rows[: self._n_guard], sims):
                return False
        return True

    def offer(self, row: int) -> bool:
        """Take ``row`` if the rules allow it; say whether it was taken."""
        if not self.allows(row):
            return False
        self._guard(row)
        self._count_artist(row, +1)
        self.rows.append(row)
        return True


def rank_order(track_ids: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Best first, ties by track id, so equal input gives equal output on every run."""
    return np.lexsort((track_ids, -np.round(sims.astype(np.float64), 6)))


def select_neighbours(
    cat: Catalogue,
    index: SimilarityIndex,
    query: np.ndarray,
    n: int,
    max_per_artist: int = 3,
    blockers: Collection[int] = (),
    exclude_rows: Collection[int] = (),
    allowed: np.ndarray | None = None,
    accept: Callable[[int], bool] | None = None,
    hide_duplicates: bool = True,
    radius: np.ndarray | None = None,
) -> list[Match]:
    """The ``n`` best rows for ``query`` under the playlist rules.

    With an ``allowed`` mask (a mood filter, say) the allowed rows are scored
    exactly with one matrix product, since the ANN index cannot filter on tags;
    otherwise the index is asked for a growing candidate pool until ``n`` pass.
    With ``radius`` (per row, index.hubness) the pool, at least
    ``hubness.candidate_pool(n)``, is ranked by CSLS instead of cosine, and the
    matches report it on the cosine scale (:func:`index.hubness.csls_similarity`).
    """
    q = np.asarray(query, np.float32).reshape(-1)
    norm = float(np.linalg.norm(q))
    if norm > 0:
        q = q / norm
    skip = {int(r) for r in exclude_rows}
    matches: list[Match] = []
    builder = PlaylistBuilder(cat, max_per_artist, blockers=blockers,
                              hide_duplicates=hide_duplicates)
    if n <= 0 or not len(cat):
        return matches

    def consume(rows: np.ndarray, sims: np.ndarray) -> None:
        for r, s in zip(rows, sims, strict=True):
            r = int(r)
            if r in skip or (accept is not None and not accept(r)):
                continue
            if builder.offer(r):
                matches.append(Match(int(cat.ids[r]), float(s)))
                if len(matches) >= n:
                    return

    def ranking(rows: np.ndarray, sims: np.ndarray, query_r: float) -> np.ndarray:
        if radius is None:
            return sims
        return hubness.csls_similarity(sims, radius[rows], query_r)

    def own_radius(rows: np.ndarray, sims: np.ndarray) -> float:
        """r(x) from the query's cosines (any order), the seeds left out."""
        if radius is None:
            return 0.0
        mine = np.isin(rows, np.fromiter(blockers, np.int64, len(blockers)))
        return hubness.query_radius(np.sort(sims[~mine])[::-1])

    def reported(scores: np.ndarray) -> np.ndarray:
        return scores if radius is None else np.clip(scores, -1.0, 1.0)

    if allowed is not None:
        rows = np.flatnonzero(allowed)
        sims = cat.vectors[rows] @ q
        if radius is not None:
            pool_sims, pool_ids = index.search(q, min(len(index), hubness.K + len(blockers)))
            found = pool_ids[0] >= 0
            pool_rows = np.array([cat.row(int(t)) if cat.has(int(t)) else -1
                                  for t in pool_ids[0][found]], np.int64)
            query_r = own_radius(pool_rows, pool_sims[0][found])
        else:
            query_r = 0.0
        scores = ranking(rows, sims, query_r)
        order = rank_order(cat.ids[rows], scores)
        consume(rows[order], reported(scores[order]))
        return matches

    k = min(len(index), max(4 * n + len(blockers) + len(skip), 32))
    if radius is not None:
        k = min(len(index), max(k, hubness.candidate_pool(n) + len(blockers) + len(skip)))
    while True:
        sims, ids = index.search(q, k)
        found = ids[0] >= 0
        ids, sims = ids[0][found], sims[0][found]
        known = np.array([cat.has(int(t)) for t in ids], bool)
        ids, sims = ids[known], sims[known]
        rows = cat.rows(ids) if len(ids) else np.zeros(0, np.int64)
        scores = ranking(rows, sims, own_radius(rows, sims))
        order = rank_order(ids, scores)
        # Re-rank the whole pool each round so ties at the old pool edge resolve by id.
        matches.clear()
        builder = PlaylistBuilder(cat, max_per_artist, blockers=blockers,
                                  hide_duplicates=hide_duplicates)
        consume(rows[order], reported(scores[order]))
        if len(matches) >= n or k >= len(index):
            break
        k = min(len(index), k * 4)
    return matches
