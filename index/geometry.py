"""The library's own geometry: how stored embeddings become the vectors every feature compares.

Raw musicnn embeddings share a large common component (every track is "music"
to a network trained on a million songs): on the dev corpus the mean of the
unit embeddings has length 0.86 and half of all pairs score above 0.76. The
tracks nearest that common direction are "hubs" that turn up in everybody's
neighbours while others are never recommended. Subtracting the library's own
mean embedding removes the component and lets the directions that tell this
library's tracks apart decide (docs/benchmarks.md, "Similarity geometry":
k-occurrence skew 0.56 → −0.02, precision@10 0.623 → 0.643, no song but an exact
copy of another left out of every top 10). CSLS and mutual proximity on top of
centring moved precision by −0.003 / +0.005 there; both rescore with per-track
neighbourhood statistics, which no inner-product index can hold. CSLS ships
anyway, as a re-rank of similar songs' top candidates (index.hubness,
``hubness = csls``): on soundtracks never tuned on it raised precision@5
0.290 → 0.315 on top of centring. Shrunk whitening (a scratch measurement)
lowered precision.

The fit needs only the embeddings the store already holds — no re-analysis.
It is applied once, where the catalogue is built (``Catalogue.from_rows``), so
similar songs, paths, alchemy, clustering, the sonic fingerprint, mixes, the
map and duplicate detection all compare the same vectors. The fit is stored
with the analyses (``LibraryStore.save_geometry``) so restarts and replicas
use the very same one, and it is refitted only when the library's mean has
moved by more than ``MEAN_DRIFT``: between refits a new track is mapped with
the old mean, so vectors already in an HNSW graph do not move.

Duplicate detection keeps its thresholds on the *raw* cosine, on purpose: they
are measured facts about recordings (an MP3 of a song sits within 0.0007 of
it), and centring stretches each pair's distance by the tracks' own distance
from the mean, so a single mapped threshold would be right for some tracks and
wrong for others. :meth:`Geometry.raw_cosines` recovers the raw cosine exactly
from the centred vectors and the mean, so no second copy of the vectors is kept.

Pure functions; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Setting values (``[index] geometry``): "centred" ships, "raw" is the unit embedding as analysed.
METHODS = ("centred", "raw")
DEFAULT_METHOD = "centred"

#: The mean is shrunk towards zero by n / (n + MEAN_PRIOR_TRACKS): a handful of
#: tracks is a poor estimate of what a library has in common (two tracks centred
#: on their own mean point in opposite directions); a large library gets the full mean.
#: Dev corpus (92 tracks), similar_tracks precision@10 / skewness by prior: 0: 0.643 / 0.00,
#: 2: 0.643 / -0.04, 5: 0.643 / -0.02, 10: 0.637 / 0.06, 20: 0.638 / 0.09.
MEAN_PRIOR_TRACKS = 5

#: Refit once the library's (shrunk) mean is this far from the fitted one. Measured
#: on the dev corpus (with prior 10): a fit on a random 90 % of it drifts 0.015-0.018 and agrees with
#: the full fit on 99 % of every top 10; 80 % drifts 0.03 (98 %), 60 % 0.055 (96 %).
MEAN_DRIFT = 0.02


@dataclass(frozen=True)
class Geometry:
    """A fitted transform: ``apply`` maps raw embeddings [N, D] to the unit vectors features use.

    ``mean`` is None for the raw geometry. ``fitted_on`` is how many tracks the fit saw;
    ``distance_scale`` how much longer distances between close tracks are here than raw.
    """

    method: str = "raw"
    mean: np.ndarray | None = None  # float32 [D], subtracted from the unit embedding
    fitted_on: int = 0
    distance_scale: float = 1.0

    def distance_for(self, raw_distance: float) -> float:
        """The 1 − cosine in this geometry that matches ``raw_distance`` between raw embeddings.

        For user settings stated on the raw scale (a mix's farthest song and its genre
        penalties, alchemy's distance from what is subtracted): the same number
        then admits about the same share of the library. Centring divides a track's
        vector by its distance from the mean while differences between tracks stay,
        so distances grow; by how much is measured on the library itself at fit time.
        """
        return float(raw_distance) * self.distance_scale

    def apply(self, embeddings: np.ndarray) -> np.ndarray:
        x = unit_rows(embeddings)  # a new array: centred and normalised in place below
        if self.mean is None or not len(x):
            return x
        x -= self.mean
        return unit_rows(x, out=x)

    def raw_terms(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row of transformed ``vectors`` [N, D]: (s, s·p) for :meth:`raw_from`.

        A raw unit embedding is ``x = s·v + m`` (v its transformed vector, s its
        distance from the mean m); ``|x| = 1`` gives ``s = −p + √(p² + 1 − |m|²)``
        with ``p = v·m``. Cached per catalogue, these make a raw cosine one
        multiply-add per pair (duplicate checks run on every playlist candidate).
        """
        v = np.atleast_2d(vectors)
        if self.mean is None:
            return np.ones(len(v)), np.zeros(len(v))
        m = self.mean.astype(np.float64)
        # float32 product accumulated per row: a float64 copy of the library would be
        # 1.6 KB a track for a moment (160 MB at 100k) on every reload
        p = (v.astype(np.float32, copy=False) @ self.mean.astype(np.float32)).astype(np.float64)
        scale = -p + np.sqrt(np.maximum(p * p + 1.0 - float(m @ m), 0.0))
        return scale, scale * p

    def raw_from(self, sims: np.ndarray, a: tuple[np.ndarray, np.ndarray],
                 b: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Raw cosines [A, B] from transformed cosines ``sims`` [A, B] and both sides' raw_terms:
        ``x_a·x_b = s_a s_b (v_a·v_b) + s_a p_a + s_b p_b + |m|²`` (exact)."""
        g = np.array(sims, np.float64).reshape(len(a[0]), len(b[0]))  # a copy, updated in place
        if self.mean is not None:
            mm = float(self.mean.astype(np.float64) @ self.mean.astype(np.float64))
            # in place: a path's candidate pool can be thousands of rows square
            g *= a[0][:, None]
            g *= b[0][None, :]
            g += a[1][:, None]
            g += (b[1] + mm)[None, :]
        return np.clip(g, -1.0, 1.0, out=g)

    def raw_cosines(self, a: np.ndarray, b: np.ndarray, sims: np.ndarray | None = None) -> np.ndarray:
        """Cosines between the *raw* embeddings behind transformed vectors ``a`` [A, D] and ``b`` [B, D]
        (see :meth:`raw_terms`). ``sims``, the [A, B] transformed cosines when already
        computed, saves the matrix product. Returns [A, B]; a 1-D ``a`` or ``b`` drops its axis.
        """
        va, vb = np.atleast_2d(a), np.atleast_2d(b)
        if sims is None:
            sims = va.astype(np.float64) @ vb.astype(np.float64).T
        g = self.raw_from(sims, self.raw_terms(va), self.raw_terms(vb))
        if np.ndim(a) == 1:
            g = g[0]
        if np.ndim(b) == 1:
            g = g[..., 0]
        return g

    def drift(self, embeddings: np.ndarray) -> float:
        """How far the mean a fit on ``embeddings`` would have lies from this one's."""
        return self._drift_from(_shrunk_mean(unit_rows(embeddings)))

    def _drift_from(self, fresh: np.ndarray) -> float:
        mine = self.mean if self.mean is not None else np.zeros_like(fresh)
        return float(np.linalg.norm(fresh.astype(np.float64) - mine))

    def stale(self, embeddings: np.ndarray, method: str = DEFAULT_METHOD) -> bool:
        """Whether the library ``embeddings`` [N, D] should get a new fit (or another method)."""
        if method != self.method:
            return True
        if self.mean is None:
            return False
        if len(embeddings) and np.shape(embeddings)[1] != len(self.mean):
            return True  # another model: another embedding space
        return self.drift(embeddings) > MEAN_DRIFT

    def stale_by_mean(self, raw_mean: np.ndarray | None, n: int,
                      method: str = DEFAULT_METHOD) -> bool:
        """:meth:`stale` from the mean of the library's unit raw embeddings (``raw_mean``, None
        when empty) and its size: what an incremental reload has without the raw rows."""
        if method != self.method:
            return True
        if self.mean is None:
            return False
        fresh = (np.zeros(len(self.mean), np.float32) if raw_mean is None or not n
                 else (np.asarray(raw_mean, np.float64) * (n / (n + MEAN_PRIOR_TRACKS))))
        return self._drift_from(np.asarray(fresh, np.float32)) > MEAN_DRIFT

    def raw_mean(self, vectors: np.ndarray) -> np.ndarray | None:
        """The mean unit raw embedding behind transformed ``vectors`` [N, D] (None when empty):
        each raw unit embedding is ``s·v + m`` (see :meth:`raw_terms`), so this is one
        vector-matrix product, no copy of the library."""
        v = np.atleast_2d(vectors)
        if not len(v):
            return None
        if self.mean is None:
            return v.mean(axis=0, dtype=np.float64)
        scale, _ = self.raw_terms(v)
        total = scale.astype(np.float32) @ v.astype(np.float32, copy=False)
        return total.astype(np.float64) / len(v) + self.mean.astype(np.float64)


RAW = Geometry()


#: Rows normalised at a time: the norms' squared temporary is a block, not the library.
_ROW_BLOCK = 16384


def unit_rows(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to length 1 (zero rows stay zero), float32, into ``out`` when given
    (``out=x`` normalises a float32 array in place). Block by block, so loading a large
    library makes no [N, D] temporaries beyond the result; each row's value is the same."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    result = np.empty(x.shape, np.float32) if out is None else out
    for start in range(0, len(x), _ROW_BLOCK):
        rows = x[start : start + _ROW_BLOCK]
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        np.divide(rows, np.where(norms > 0, norms, 1.0), out=result[start : start + _ROW_BLOCK])
    return result


def _shrunk_mean(unit: np.ndarray) -> np.ndarray:
    n = len(unit)
    if not n:  # nothing analysed yet: a zero mean, the raw geometry until tracks arrive
        return np.zeros(unit.shape[1], np.float32)
    # float64 accumulation: the same rows give the same mean on every machine and run
    return (unit.mean(axis=0, dtype=np.float64) * (n / (n + MEAN_PRIOR_TRACKS))).astype(np.float32)


def fit_geometry(embeddings: np.ndarray, method: str = DEFAULT_METHOD) -> Geometry:
    """Fit ``method`` on a library's raw embeddings [N, D] (any scale; rows are normalised)."""
    if method not in METHODS:
        raise ValueError(
            f"unknown similarity geometry {method!r}: expected one of {', '.join(METHODS)}"
        )
    n = len(embeddings)
    if method == "raw":
        return Geometry("raw", None, n)
    unit = unit_rows(embeddings)
    mean = _shrunk_mean(unit)
    return Geometry(method, mean, n, _distance_scale(unit, mean))


#: Tracks (evenly spaced rows, so the choice is deterministic) whose pairs measure the scale.
SCALE_SAMPLE = 1500
#: Pair-distance quantiles compared: the close pairs that user distances are about.
SCALE_QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3)


def _distance_scale(unit: np.ndarray, mean: np.ndarray) -> float:
    """Median ratio of centred to raw pair-distance quantiles on a sample of the library.

    Dev corpus: 4.4-5.2 across these quantiles (median 4.9), about 1/s² for the
    median track's distance s from the mean, as the geometry predicts; measured
    rather than predicted because hub pairs (small s) stretch more.
    """
    n = len(unit)
    if n < 3:
        return 1.0
    rows = unit[np.unique(np.linspace(0, n - 1, min(n, SCALE_SAMPLE)).astype(np.int64))]
    cen = unit_rows(rows - mean)
    iu = np.triu_indices(len(rows), 1)
    d_raw = 1.0 - (rows.astype(np.float64) @ rows.T.astype(np.float64))[iu]
    d_cen = 1.0 - (cen.astype(np.float64) @ cen.T.astype(np.float64))[iu]
    q_raw = np.quantile(d_raw, SCALE_QUANTILES)
    q_cen = np.quantile(d_cen, SCALE_QUANTILES)
    ok = q_raw > 1e-9
    return float(np.median(q_cen[ok] / q_raw[ok])) if ok.any() else 1.0


def current_geometry(
    stored: Geometry | None, embeddings: np.ndarray, method: str = DEFAULT_METHOD
) -> Geometry:
    """The stored fit while it still suits the library, else a fresh one (the refit rule)."""
    if stored is not None and not stored.stale(embeddings, method):
        return stored
    return fit_geometry(embeddings, method)


def same_geometry(a: Geometry | None, b: Geometry | None) -> bool:
    """Equal transforms (vectors made by one are valid under the other)."""
    if a is None or b is None:
        return a is b
    if a.method != b.method:
        return False
    if a.mean is None or b.mean is None:
        return a.mean is None and b.mean is None
    return a.mean.shape == b.mean.shape and bool(np.array_equal(a.mean, b.mean))
