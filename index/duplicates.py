"""Near-duplicate songs: the same recording as another encode, cut, gain or with leading silence.

Cosine alone cannot tell them apart: on the dev corpus an MP3, an 80 % cut or a
louder copy with 0.5 s of silence sits up to ~0.05 from its original, as far
as two different tracks of one soundtrack. So cosine only *proposes*
candidates (a loose bar, ``CANDIDATE_COSINE``) and the audio fingerprint of
:mod:`analysis.audio_fingerprint` decides: the same recording agrees on
almost every fingerprint bit at one time offset, other music on about half.
The offset must also fit the durations: the shorter copy has to lie inside
the longer one (a cut or added silence), never hang off its end.

Analyses made before fingerprints existed have none; for a pair where either
side lacks one, a stricter rule stands in: near-identical embedding
(``FALLBACK_COSINE``), durations within ``FALLBACK_SECONDS`` and the same
key. It finds re-encodes of a whole track but not cuts; re-analysis fills
the fingerprint in.

Every cosine here is between *raw* embeddings, whatever similarity geometry
the catalogue uses (index.geometry): the bars below were measured on raw
embeddings and are facts about recordings, and centring would stretch each
pair's distance by the pair's own distance from the library mean. The raw
cosine is recovered exactly from the catalogue's vectors
(``Geometry.raw_cosines``), so candidates still come from the same index.

Everything here is pure: catalogue and index in, pairs and groups out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analysis import audio_fingerprint as afp
from index.catalogue import Catalogue
from index.faiss_index import SimilarityIndex

#: Pairs closer than this (raw cosine) are checked with fingerprints. The farthest copy
#: measured on the dev corpus sits at 0.9515 (docs/benchmarks.md); every pair
#: above the bar costs a fingerprint comparison (~1 ms), so it is not lower.
CANDIDATE_COSINE = 0.93
#: Fingerprint bit error rate at or below which two tracks are the same
#: recording. Measured: variants 0.02-0.13, distinct tracks >= 0.35.
MATCH_BIT_ERROR = 0.25
#: How far the shorter copy may reach past the longer one's ends (encoder
#: padding, header durations).
DURATION_SLACK_S = 2.0
#: A copy shorter than this share of the other is an excerpt, not a duplicate.
MIN_LENGTH_RATIO = 0.5
#: The fallback rule for analyses without a fingerprint.
FALLBACK_COSINE = 0.9993
FALLBACK_SECONDS = 3.0
#: Neighbours per track looked at when grouping a whole library.
NEIGHBOURS = 10

_CACHE_SIZE = 4096


@dataclass(frozen=True)
class Verdict:
    """Why two tracks are (or are not) one recording."""

    duplicate: bool
    method: str  # "fingerprint" or "fallback" (a side has no fingerprint)
    cosine: float
    bit_error_rate: float | None = None
    offset_s: float | None = None


@dataclass(frozen=True)
class DuplicatePair:
    track_a: int
    track_b: int
    verdict: Verdict


@dataclass(frozen=True)
class DuplicateGroup:
    """One recording's copies; ``representative`` is the one to keep (see :func:`representative`)."""

    representative: int
    track_ids: tuple[int, ...]


def duration_fits(duration_a: float, duration_b: float, offset_s: float,
                  slack: float = DURATION_SLACK_S) -> bool:
    """True when, with ``b`` time = ``a`` time + ``offset_s``, the shorter copy lies inside the longer.

    Unknown durations (0) cannot contradict anything and pass.
    """
    if duration_a <= 0 or duration_b <= 0:
        return True
    if min(duration_a, duration_b) < MIN_LENGTH_RATIO * max(duration_a, duration_b):
        return False
    if duration_a <= duration_b:
        return offset_s >= -slack and offset_s + duration_a <= duration_b + slack
    return -offset_s >= -slack and duration_b - offset_s <= duration_a + slack


def _decoded(cat: Catalogue, row: int) -> afp.Fingerprint | None:
    """Row's decoded fingerprint, from a bounded cache on the catalogue (rebuilt, never mutated)."""
    if not cat.fingerprints or cat.fingerprints[row] is None:
        return None
    cache: OrderedDict[int, afp.Fingerprint | None] = cat.__dict__.setdefault(
        "_musegate_fp_cache", OrderedDict()
    )
    if row in cache:
        cache.move_to_end(row)
        return cache[row]
    try:
        fp: afp.Fingerprint | None = afp.decode(cat.fingerprints[row])  # type: ignore[arg-type]
    except ValueError:
        fp = None
    cache[row] = fp
    if len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return fp


def same_recording(cat: Catalogue, row_a: int, row_b: int) -> Verdict:
    """The verdict on one pair of catalogue rows (cached per catalogue: answers ask again)."""
    key = (min(row_a, row_b), max(row_a, row_b))
    verdicts: dict[tuple[int, int], Verdict] = cat.__dict__.setdefault("_musegate_dup_verdicts", {})
    hit = verdicts.get(key)
    if hit is not None:
        return hit
    verdict = _judge(cat, *key)
    if len(verdicts) > 8 * _CACHE_SIZE:
        verdicts.clear()
    verdicts[key] = verdict
    return verdict


def _raw_terms(cat: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """The catalogue's per-row terms for raw cosines (cached: rebuilt, never mutated)."""
    cached = cat.__dict__.get("_musegate_raw_terms")
    if cached is None or len(cached[0]) != len(cat):
        cached = cat.geometry.raw_terms(cat.vectors)
        cat.__dict__["_musegate_raw_terms"] = cached
    return cached


def raw_cosines(cat: Catalogue, rows_a: np.ndarray, rows_b: np.ndarray,
                sims: np.ndarray | None = None) -> np.ndarray:
    """[A, B] cosines of the rows' raw embeddings (the scale every bar here is on); ``sims``
    are their cosines in the catalogue's geometry when already computed."""
    ra, rb = np.atleast_1d(rows_a), np.atleast_1d(rows_b)
    if sims is None:
        sims = cat.vectors[ra] @ cat.vectors[rb].T
    scale, offset = _raw_terms(cat)
    return cat.geometry.raw_from(sims, (scale[ra], offset[ra]), (scale[rb], offset[rb]))


def raw_cosine(cat: Catalogue, row_a: int, row_b: int) -> float:
    return float(raw_cosines(cat, np.array([row_a]), np.array([row_b]))[0, 0])


def _judge(cat: Catalogue, row_a: int, row_b: int) -> Verdict:
    cosine = raw_cosine(cat, row_a, row_b)
    da, db = float(cat.duration[row_a]), float(cat.duration[row_b])
    if row_a == row_b:
        return Verdict(True, "fingerprint", cosine, 0.0, 0.0)
    fa, fb = _decoded(cat, row_a), _decoded(cat, row_b)
    if fa is None or fb is None:
        same = (
            cosine >= FALLBACK_COSINE
            and (da <= 0 or db <= 0 or abs(da - db) <= FALLBACK_SECONDS)
            and int(cat.key[row_a]) == int(cat.key[row_b])
        )
        return Verdict(same, "fallback", cosine)
    if cosine < CANDIDATE_COSINE or not duration_fits(da, db, 0.0, slack=max(da, db)):
        # not even a candidate (or one copy is a mere excerpt): no fingerprint work
        return Verdict(False, "fingerprint", cosine)
    match = afp.compare(fa, fb)
    if match is None:
        return Verdict(False, "fingerprint", cosine)
    same = match.bit_error_rate <= MATCH_BIT_ERROR and duration_fits(da, db, match.offset_s)
    return Verdict(same, "fingerprint", cosine, match.bit_error_rate, match.offset_s)


def is_duplicate(cat: Catalogue, row_a: int, row_b: int) -> bool:
    """Cheap rejection by cosine first; the fingerprint only for close pairs."""
    if row_a == row_b:
        return True
    if raw_cosine(cat, row_a, row_b) < CANDIDATE_COSINE:
        return False
    return same_recording(cat, row_a, row_b).duplicate


def candidate_pairs(
    cat: Catalogue,
    index: SimilarityIndex,
    neighbours: int = NEIGHBOURS,
    min_cosine: float = CANDIDATE_COSINE,
    batch: int = 1024,
) -> list[tuple[int, int, float]]:
    """(row_a, row_b, raw cosine) with row_a < row_b for every pair within each other's top neighbours."""
    found: dict[tuple[int, int], float] = {}
    k = min(len(index), neighbours + 1)
    for start in range(0, len(cat), batch):
        rows = np.arange(start, min(len(cat), start + batch))
        sims, ids = index.search(cat.vectors[rows], k)
        for r, srow, irow in zip(rows, sims, ids, strict=True):
            keep = [(s, cat.row(int(t))) for s, t in zip(srow, irow, strict=True)
                    if t >= 0 and cat.has(int(t)) and int(t) != int(cat.ids[r])]
            if not keep:
                continue
            others = np.array([o for _, o in keep], np.int64)
            raw = raw_cosines(cat, np.array([r]), others, np.array([s for s, _ in keep])[None, :])
            for o, s in zip(others, raw[0], strict=True):
                if s >= min_cosine:
                    found[(min(int(r), int(o)), max(int(r), int(o)))] = float(s)
    return [(a, b, s) for (a, b), s in sorted(found.items())]


def confirmed_pairs(
    cat: Catalogue, candidates: Sequence[tuple[int, int, float]]
) -> list[DuplicatePair]:
    out = []
    for a, b, _ in candidates:
        verdict = same_recording(cat, a, b)
        if verdict.duplicate:
            out.append(DuplicatePair(int(cat.ids[a]), int(cat.ids[b]), verdict))
    return out


def representative(cat: Catalogue, rows: Sequence[int], quality: Mapping[int, float] | None = None) -> int:
    """The copy to keep: the longest (a cut is the lesser copy), then the best ``quality``
    (bitrate, say), then the lowest track id (the one the library had first)."""
    q = quality or {}

    def rank(r: int) -> tuple[float, float, int]:
        tid = int(cat.ids[r])
        return (-round(float(cat.duration[r]), 0), -float(q.get(tid, 0.0)), tid)

    return int(cat.ids[min(rows, key=rank)])


def group_pairs(
    cat: Catalogue, pairs: Sequence[DuplicatePair], quality: Mapping[int, float] | None = None
) -> list[DuplicateGroup]:
    """Union-find over confirmed pairs: copies of copies are one group. Biggest groups first."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p in pairs:
        ra, rb = find(p.track_a), find(p.track_b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for t in parent:
        members.setdefault(find(t), []).append(t)
    groups = [
        DuplicateGroup(representative(cat, cat.rows(ids), quality), tuple(sorted(ids)))
        for ids in members.values()
    ]
    return sorted(groups, key=lambda g: (-len(g.track_ids), g.track_ids[0]))


def find_duplicates(
    cat: Catalogue,
    index: SimilarityIndex,
    neighbours: int = NEIGHBOURS,
    quality: Mapping[int, float] | None = None,
) -> tuple[list[DuplicateGroup], list[DuplicatePair]]:
    """Every duplicate group of the library, with the confirmed pairs behind them."""
    pairs = confirmed_pairs(cat, candidate_pairs(cat, index, neighbours))
    return group_pairs(cat, pairs, quality), pairs


def duplicate_among(cat: Catalogue, row: int, others: np.ndarray, sims: np.ndarray | None = None) -> bool:
    """Is ``row`` a copy of any of ``others`` (rows)? ``sims`` (their cosines to ``row`` in the
    catalogue's geometry) saves a GEMV.

    Only others above the candidate cosine reach the fingerprint, so a playlist
    check costs one matrix-vector product and, rarely, a fingerprint comparison.
    """
    if not len(others):
        return False
    if sims is None:
        sims = cat.vectors[others] @ cat.vectors[row]
    others = np.asarray(others, np.int64)
    sims = raw_cosines(cat, np.array([row]), others, np.asarray(sims)[None, :])[0]
    return any(
        same_recording(cat, row, int(o)).duplicate
        for o in np.asarray(others)[sims >= CANDIDATE_COSINE]
        if int(o) != row
    )


class DuplicateLookup:
    """``lookup[i, j]`` / ``lookup[i, [j, ...]]``: are pool rows ``i`` and ``j`` copies of each other?

    For algorithms that test many pairs of one candidate pool (song paths): a
    pair is judged only when it is first asked about and only when close in
    cosine, so a search that tries a few hundred of a pool's thousands of close
    pairs pays for those alone.
    """

    def __init__(self, cat: Catalogue, rows: np.ndarray, gram: np.ndarray) -> None:
        """``gram``: the pool's cosines in the catalogue's geometry (rows × rows)."""
        self.cat = cat
        self.rows = np.asarray(rows, np.int64)
        self.pending = raw_cosines(cat, self.rows, self.rows, gram) >= CANDIDATE_COSINE  # not judged yet
        np.fill_diagonal(self.pending, False)
        self.same = np.eye(len(self.rows), dtype=bool)

    def __getitem__(self, key: tuple[int, object]) -> bool | np.ndarray:
        i, j = key
        cols = np.atleast_1d(np.asarray(j, np.int64))
        for c in cols[self.pending[i, cols]]:
            c = int(c)
            verdict = same_recording(self.cat, int(self.rows[i]), int(self.rows[c])).duplicate
            self.same[i, c] = self.same[c, i] = verdict
            self.pending[i, c] = self.pending[c, i] = False
        found = self.same[i, cols]
        return bool(found[0]) if np.ndim(j) == 0 else found

    def judge(self, cands: np.ndarray, others: np.ndarray) -> None:
        """Settle every still-pending close pair between pool rows ``cands`` and ``others``
        (``same`` is then exact on that submatrix)."""
        cands, others = np.asarray(cands, np.int64), np.asarray(others, np.int64)
        if not len(cands) or not len(others):
            return
        for i, j in zip(*np.nonzero(self.pending[np.ix_(cands, others)]), strict=True):
            a, b = int(cands[i]), int(others[j])
            if self.pending[a, b]:  # a repeated candidate may have been judged just now
                verdict = same_recording(self.cat, int(self.rows[a]), int(self.rows[b])).duplicate
                self.same[a, b] = self.same[b, a] = verdict
                self.pending[a, b] = self.pending[b, a] = False

    def copies_among(self, cands: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Per pool row in ``cands``: is it a copy of any pool row in ``others`` (a row is its
        own copy)? One submatrix for a whole candidate list; only its pending pairs are judged."""
        cands, others = np.asarray(cands, np.int64), np.asarray(others, np.int64)
        if not len(cands) or not len(others):
            return np.zeros(len(cands), bool)
        self.judge(cands, others)
        return self.same[np.ix_(cands, others)].any(axis=1)
