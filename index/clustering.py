"""Clustering the library into named playlists.

No single clustering algorithm suits every library: k-means favours round,
equal clusters, a Gaussian mixture tolerates elongated ones, DBSCAN finds
dense pockets and leaves the rest as noise, spectral clustering follows
manifolds.  So a small, bounded search tries several algorithms and
parameters and keeps the one whose clusters are both well separated
(silhouette) and musically meaningful (each cluster leans on a few tags, and
the clusters lean on *different* tags).  The most distinct clusters then
become playlists, named after what sets them apart from the rest of the
library.

Everything expensive is bounded so that 10k tracks stay interactive: PCA
first, quadratic steps (silhouette, spectral) on a fixed-size subsample, a
fixed number of trials.  All randomness flows from ``seed``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.labels import MSD_LABELS
from index.catalogue import Catalogue, normalise_text

__all__ = ["ALGORITHMS", "ClusterPlaylist", "ClusteringResult", "cluster_playlists", "min_tracks"]

ALGORITHMS = ("kmeans", "minibatch_kmeans", "gmm", "dbscan", "spectral")

Progress = Callable[[float, str], None]

# Quadratic-cost steps never see more rows than this.
SILHOUETTE_SAMPLE = 2000
SPECTRAL_SAMPLE = 1500
GMM_SAMPLE = 5000
MIN_CLUSTER_SIZE = 3

# Score weights: silhouette lives in [-1, 1]; purity and diversity in [0, 1].
W_PURITY = 0.5
W_DIVERSITY = 0.5
W_NOISE = 0.5
W_SHORTFALL = 1.0

# Tag labels as they read inside a playlist name.
_DISPLAY = {
    "00s": "2000s",
    "90s": "90s",
    "80s": "80s",
    "70s": "70s",
    "60s": "60s",
    "rnb": "R&B",
    "Hip-Hop": "hip-hop",
    "House": "house",
    "Mellow": "mellow",
    "Progressive rock": "progressive rock",
    "female vocalist": "female vocals",
    "female vocalists": "female vocals",
    "male vocalists": "male vocals",
}
# Tags that say the same thing; only the first of a group may appear in one name.
_SAME = [
    {"female vocalist", "female vocalists"},
    {"electronic", "electronica", "electro"},
    {"chill", "chillout"},
    {"metal", "heavy metal"},
]
# Words that describe a mood rather than a genre read best first ("Mellow acoustic").
_MOODS = {"Mellow", "chill", "chillout", "beautiful", "sad", "happy", "sexy", "catchy",
          "party", "easy listening", "experimental"}


@dataclass
class ClusterPlaylist:
    name: str
    track_ids: list[int]
    tags: list[tuple[str, float]]  # dominant tags with their mean score in the cluster
    tempo: float  # median bpm of the cluster's tracks
    energy: float  # mean energy of the cluster's tracks


@dataclass
class ClusteringResult:
    playlists: list[ClusterPlaylist]
    algorithm: str
    params: dict
    silhouette: float
    score: float
    trials: list[dict] = field(default_factory=list)


def min_tracks(n_playlists: int) -> int:
    """Fewer tracks than this cannot give ``n_playlists`` playlists worth the name."""
    return max(20, MIN_CLUSTER_SIZE * 2 * max(1, n_playlists))


# --------------------------------------------------------------------------- search space


def _k_values(n_playlists: int, n_rows: int, count: int) -> list[int]:
    """Cluster counts to try: at least as many clusters as playlists, up to 2.5x so
    the selection can drop muddled ones."""
    hi = max(n_playlists + 1, int(round(n_playlists * 2.5)))
    hi = min(hi, n_rows // MIN_CLUSTER_SIZE)
    lo = max(2, min(n_playlists, hi))
    ks = np.unique(np.linspace(lo, hi, num=max(1, count)).round().astype(int))
    return [int(k) for k in ks]


def _dbscan_eps(features: np.ndarray, min_samples: int, count: int, rng: np.random.Generator
                ) -> list[float]:
    """Neighbourhood radii from the k-distance distribution, the usual DBSCAN heuristic,
    at a few quantiles so one of them suits the library's density."""
    from sklearn.neighbors import NearestNeighbors

    sample = features[_subsample(len(features), SILHOUETTE_SAMPLE, rng)]
    nn = NearestNeighbors(n_neighbors=min(min_samples + 1, len(sample))).fit(sample)
    dist, _ = nn.kneighbors(sample)
    kd = np.sort(dist[:, -1])
    quantiles = np.linspace(0.35, 0.9, num=max(1, count))
    return [float(q) for q in np.unique(np.quantile(kd, quantiles).round(6)) if q > 0]


def _plan(algorithms: Sequence[str], n_playlists: int, features: np.ndarray, trials: int,
          seed: int) -> list[tuple[str, dict[str, Any]]]:
    """The bounded list of (algorithm, params) to try, in a fixed order."""
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown clustering algorithm(s) {unknown}; choose from {ALGORITHMS}")
    algos = list(dict.fromkeys(algorithms))
    if not algos:
        raise ValueError("algorithms must name at least one of " + ", ".join(ALGORITHMS))
    trials = max(len(algos), int(trials))
    per = [trials // len(algos) + (1 if i < trials % len(algos) else 0) for i in range(len(algos))]
    n = len(features)
    rng = np.random.default_rng(seed)
    plan: list[tuple[str, dict[str, Any]]] = []
    for algo, count in zip(algos, per, strict=True):
        if algo == "dbscan":
            min_samples = max(MIN_CLUSTER_SIZE, min(10, n // 50))
            for eps in _dbscan_eps(features, min_samples, count, rng):
                plan.append((algo, {"eps": eps, "min_samples": min_samples}))
        elif algo == "gmm":
            # with trials to spare, the larger half also tries full covariances
            ks = _k_values(n_playlists, n, count if count < 4 else (count + 1) // 2)
            configs = [(k, "diag") for k in ks] + [(k, "full") for k in ks]
            for k, cov in configs[: max(count, len(ks))]:
                plan.append((algo, {"n_components": k, "covariance_type": cov}))
        else:
            for k in _k_values(n_playlists, n, count):
                params: dict[str, Any] = {"n_clusters": k}
                if algo == "spectral":
                    params["n_neighbors"] = int(min(15, max(5, n // 100)))
                plan.append((algo, params))
    return plan


def _subsample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if n <= size:
        return np.arange(n)
    return np.sort(rng.choice(n, size=size, replace=False))


def _assign_nearest(features: np.ndarray, fitted_rows: np.ndarray, fitted_labels: np.ndarray,
                    ) -> np.ndarray:
    """Labels for every row from the centroids of a fit made on a subsample."""
    labels = np.full(len(features), -1, dtype=np.int64)
    labels[fitted_rows] = fitted_labels
    keep = np.unique(fitted_labels[fitted_labels >= 0])
    if not len(keep):
        return labels
    centroids = np.stack([features[fitted_rows[fitted_labels == c]].mean(axis=0) for c in keep])
    rest = np.setdiff1d(np.arange(len(features)), fitted_rows)
    if len(rest):
        d = ((features[rest, None, :] - centroids[None, :, :]) ** 2).sum(axis=2)
        labels[rest] = keep[np.argmin(d, axis=1)]
    return labels


def _fit(algo: str, params: dict[str, Any], features: np.ndarray, seed: int) -> np.ndarray:
    """Cluster labels (-1 = noise) for every row."""
    from sklearn.cluster import DBSCAN, KMeans, MiniBatchKMeans, SpectralClustering
    from sklearn.mixture import GaussianMixture

    n = len(features)
    rng = np.random.default_rng(seed)
    if algo == "kmeans":
        return KMeans(n_clusters=params["n_clusters"], n_init=3, random_state=seed
                      ).fit_predict(features)
    if algo == "minibatch_kmeans":
        return MiniBatchKMeans(n_clusters=params["n_clusters"], n_init=3, batch_size=1024,
                               random_state=seed).fit_predict(features)
    if algo == "gmm":
        rows = _subsample(n, GMM_SAMPLE, rng)
        gmm = GaussianMixture(n_components=params["n_components"],
                              covariance_type=params["covariance_type"], reg_covar=1e-4,
                              max_iter=100, random_state=seed).fit(features[rows])
        return gmm.predict(features)
    if algo == "dbscan":
        return DBSCAN(eps=params["eps"], min_samples=params["min_samples"]).fit_predict(features)
    if algo == "spectral":
        rows = _subsample(n, SPECTRAL_SAMPLE, rng)
        sc = SpectralClustering(n_clusters=params["n_clusters"], affinity="nearest_neighbors",
                                n_neighbors=min(params["n_neighbors"], len(rows) - 1),
                                assign_labels="cluster_qr", random_state=seed)
        return _assign_nearest(features, rows, sc.fit_predict(features[rows]))
    raise ValueError(f"unknown clustering algorithm {algo!r}")


# --------------------------------------------------------------------------- scoring


@dataclass
class _Stats:
    """Per-cluster tag profiles of one labelling, shared by scoring and selection."""

    clusters: np.ndarray  # cluster labels of usable clusters
    sizes: np.ndarray
    lift: np.ndarray  # [C, 50] mean tag z-score per cluster
    purity: np.ndarray  # [C] 0..1, how strongly the cluster leans on its top tags


def _tag_z(cat: Catalogue) -> np.ndarray:
    tags = cat.tags.astype(np.float64)
    std = tags.std(axis=0)
    return (tags - tags.mean(axis=0)) / np.where(std > 1e-6, std, 1.0)


def _stats(labels: np.ndarray, tag_z: np.ndarray) -> _Stats:
    valid = labels >= 0
    ids, counts = np.unique(labels[valid], return_counts=True)
    usable = ids[counts >= MIN_CLUSTER_SIZE]
    sizes = counts[counts >= MIN_CLUSTER_SIZE]
    if not len(usable):
        return _Stats(usable, sizes, np.zeros((0, tag_z.shape[1])), np.zeros(0))
    # cluster means in one pass: one-hot [C, N] @ [N, 50]
    onehot = (labels[None, :] == usable[:, None]).astype(np.float64)
    lift = onehot @ tag_z / sizes[:, None]
    top3 = np.sort(lift, axis=1)[:, -3:].mean(axis=1)
    purity = np.tanh(np.clip(top3, 0.0, None) / 1.5)
    return _Stats(usable, sizes, lift, purity)


def _diversity(lift: np.ndarray) -> float:
    """Mean pairwise cosine distance of the clusters' tag profiles, scaled to 0..1."""
    if len(lift) < 2:
        return 0.0
    norm = lift / np.maximum(np.linalg.norm(lift, axis=1, keepdims=True), 1e-9)
    sim = norm @ norm.T
    iu = np.triu_indices(len(lift), k=1)
    return float(np.clip((1.0 - sim[iu]).mean() / 2.0, 0.0, 1.0))


def _score(labels: np.ndarray, features: np.ndarray, tag_z: np.ndarray, n_playlists: int,
           sample: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import silhouette_score

    stats = _stats(labels, tag_z)
    noise = float((labels < 0).mean())
    sub = labels[sample]
    keep = np.isin(sub, stats.clusters)
    sil = -1.0
    if len(np.unique(sub[keep])) >= 2 and keep.sum() > len(np.unique(sub[keep])):
        sil = float(silhouette_score(features[sample][keep], sub[keep], metric="euclidean"))
    purity = float(np.average(stats.purity, weights=stats.sizes)) if len(stats.sizes) else 0.0
    diversity = _diversity(stats.lift)
    shortfall = max(0, n_playlists - len(stats.clusters)) / max(1, n_playlists)
    score = (sil + W_PURITY * purity + W_DIVERSITY * diversity - W_NOISE * noise
             - W_SHORTFALL * shortfall)
    return {"silhouette": round(sil, 6), "purity": round(purity, 6),
            "diversity": round(diversity, 6), "noise": round(noise, 6),
            "clusters": int(len(stats.clusters)), "score": round(score, 6)}


# --------------------------------------------------------------------------- naming


def _display(tag: str) -> str:
    return _DISPLAY.get(tag, tag.lower())


def _tempo_word(bpm: float) -> str:
    if bpm <= 0:
        return "free tempo"
    if bpm < 90:
        return "slow"
    if bpm < 115:
        return "mid-tempo"
    if bpm < 140:
        return "upbeat"
    return "fast"


def _energy_word(energy: float, low: float, high: float) -> str | None:
    """Only the extremes of this library are worth a word; the middle says nothing."""
    if energy <= low:
        return "calm"
    if energy >= high:
        return "high energy"
    return None


def _name_tags(lift: np.ndarray, count: int = 2) -> list[str]:
    """Tags that set the cluster apart (highest lift), skipping near-synonyms."""
    order = np.lexsort((np.arange(len(lift)), -lift))
    chosen: list[str] = []
    for i in order:
        tag = MSD_LABELS[i]
        if lift[i] <= 0 and chosen:
            break
        if any(tag in group and chosen_tag in group for group in _SAME for chosen_tag in chosen):
            continue
        words = set(normalise_text(tag).split())
        if any(words & set(normalise_text(c).split()) for c in chosen):
            continue
        chosen.append(tag)
        if len(chosen) == count:
            break
    return chosen


def _phrase(tags: list[str]) -> str:
    ordered = sorted(tags, key=lambda t: (t not in _MOODS, tags.index(t)))
    text = " ".join(_display(t) for t in ordered)
    return text[:1].upper() + text[1:]


def _unique_names(bases: list[list[str]], extras: list[list[str]]) -> list[str]:
    """Names made unique by adding one more distinguishing tag, then a counter."""
    names: list[str] = []
    used: set[str] = set()
    for parts, more in zip(bases, extras, strict=True):
        name = " · ".join(parts)
        if name.lower() in used:
            for tag in more:
                candidate = " · ".join([parts[0] + f", {_display(tag)}"] + parts[1:])
                if candidate.lower() not in used:
                    name = candidate
                    break
        base, i = name, 2
        while name.lower() in used:
            name, i = f"{base} ({i})", i + 1
        used.add(name.lower())
        names.append(name)
    return names


# --------------------------------------------------------------------------- selection


def _pick_diverse(stats: _Stats, n: int) -> list[int]:
    """Farthest-first over tag profiles: start with the purest cluster, then keep adding
    the one least like anything already chosen, so playlists do not repeat each other."""
    if not len(stats.clusters):
        return []
    norm = stats.lift / np.maximum(np.linalg.norm(stats.lift, axis=1, keepdims=True), 1e-9)
    # a little weight on size so tiny pure clusters do not crowd out real ones
    weight = stats.purity + 0.1 * np.log1p(stats.sizes) / np.log1p(stats.sizes.max())
    first = int(np.lexsort((stats.clusters, -weight))[0])
    chosen = [first]
    min_dist = 1.0 - norm @ norm[first]
    while len(chosen) < min(n, len(stats.clusters)):
        gain = np.where(np.isin(np.arange(len(norm)), chosen), -np.inf,
                        min_dist + 0.25 * weight)
        nxt = int(np.lexsort((stats.clusters, -gain))[0])
        chosen.append(nxt)
        min_dist = np.minimum(min_dist, 1.0 - norm @ norm[nxt])
    return chosen


def _ordered_tracks(cat: Catalogue, rows: np.ndarray, max_per_artist: int, max_songs: int
                    ) -> list[int]:
    """Most typical tracks first (closest to the cluster's mean sound), artist-capped."""
    centre = cat.vectors[rows].mean(axis=0)
    centre /= max(float(np.linalg.norm(centre)), 1e-9)
    sims = cat.vectors[rows] @ centre
    order = rows[np.lexsort((cat.ids[rows], -np.round(sims, 6)))]
    out: list[int] = []
    per_artist: dict[str, int] = {}
    for r in order:
        artist = normalise_text(cat.artists[r])
        if artist and max_per_artist > 0:
            if per_artist.get(artist, 0) >= max_per_artist:
                continue
            per_artist[artist] = per_artist.get(artist, 0) + 1
        out.append(int(cat.ids[r]))
        if len(out) >= max_songs:
            break
    return out


# --------------------------------------------------------------------------- entry point


def cluster_playlists(
    cat: Catalogue,
    n_playlists: int = 10,
    algorithms: Sequence[str] = ALGORITHMS,
    pca_components: int | None = 16,
    trials: int = 16,
    max_per_artist: int = 3,
    max_songs: int = 100,
    seed: int = 0,
    progress: Progress | None = None,
) -> ClusteringResult:
    """Search clusterings of the library and turn the most distinct clusters into playlists."""
    # scikit-learn is imported here, not at module level: the gateway imports this module
    # for its routes, and an idle server should not carry scikit-learn (bench/memory.py).
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning

    if n_playlists < 1:
        raise ValueError("n_playlists must be at least 1")
    if max_songs < 1:
        raise ValueError("max_songs must be at least 1")
    need = min_tracks(n_playlists)
    if len(cat) < need:
        raise ValueError(
            f"clustering into {n_playlists} playlists needs at least {need} analysed tracks; "
            f"the library has {len(cat)}"
        )

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(float(min(1.0, max(0.0, fraction))), message)

    report(0.0, "preparing embeddings")
    features = cat.vectors.astype(np.float32)
    if pca_components:
        comps = int(min(pca_components, features.shape[1], len(cat) - 1))
        features = PCA(n_components=comps, random_state=seed).fit_transform(features)
        features = features.astype(np.float32)
    tag_z = _tag_z(cat)
    sample = _subsample(len(cat), SILHOUETTE_SAMPLE, np.random.default_rng(seed))
    plan = _plan(algorithms, n_playlists, features, trials, seed)
    report(0.05, f"trying {len(plan)} clusterings")

    records: list[dict] = []
    best: tuple[float, int] | None = None
    labellings: dict[int, np.ndarray] = {}
    for i, (algo, params) in enumerate(plan):
        record: dict[str, Any] = {"algorithm": algo, "params": dict(params)}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", UserWarning)
                labels = np.asarray(_fit(algo, params, features, seed), dtype=np.int64)
            record.update(_score(labels, features, tag_z, n_playlists, sample))
        except (ValueError, np.linalg.LinAlgError) as exc:
            # one unlucky parameter set must not sink the whole search
            record["error"] = str(exc)
            labels = None
        records.append(record)
        if labels is not None and (best is None or record["score"] > best[0]):
            best = (record["score"], i)
            labellings = {i: labels}
        report(0.05 + 0.85 * (i + 1) / len(plan), f"{algo} {params}: "
               + (f"score {record['score']:.3f}" if "score" in record else "failed"))
    if best is None:
        raise ValueError("no clustering succeeded: " + "; ".join(r.get("error", "")
                                                                   for r in records))

    best_index = best[1]
    labels = labellings[best_index]
    winner = records[best_index]
    stats = _stats(labels, tag_z)
    chosen = _pick_diverse(stats, n_playlists)
    report(0.92, f"naming {len(chosen)} playlists")

    energy_low, energy_high = np.quantile(cat.energy, [0.25, 0.75]) if len(cat) else (0, 1)
    drafts: list[tuple[ClusterPlaylist, list[str], list[str]]] = []
    for c in chosen:
        rows = np.flatnonzero(labels == stats.clusters[c])
        mean_tags = cat.tags[rows].mean(axis=0, dtype=np.float64)
        tags = _name_tags(stats.lift[c], count=2)
        extra = [t for t in _name_tags(stats.lift[c], count=5) if t not in tags]
        tempos = cat.tempo[rows][cat.tempo[rows] > 0]
        tempo = float(np.median(tempos)) if len(tempos) else 0.0
        energy = float(cat.energy[rows].mean())
        parts = [_phrase(tags), _tempo_word(tempo)]
        energy_word = _energy_word(energy, float(energy_low), float(energy_high))
        if energy_word:
            parts.append(energy_word)
        top = np.lexsort((np.arange(len(mean_tags)), -stats.lift[c]))[:5]
        playlist = ClusterPlaylist(
            name="",
            track_ids=_ordered_tracks(cat, rows, max_per_artist, max_songs),
            tags=[(MSD_LABELS[t], round(float(mean_tags[t]), 4)) for t in top],
            tempo=round(tempo, 1),
            energy=round(energy, 4),
        )
        drafts.append((playlist, parts, extra))
    names = _unique_names([d[1] for d in drafts], [d[2] for d in drafts])
    playlists = []
    for (playlist, _, _), name in zip(drafts, names, strict=True):
        playlist.name = name
        playlists.append(playlist)
    report(1.0, "done")
    return ClusteringResult(
        playlists=playlists,
        algorithm=winner["algorithm"],
        params=dict(winner["params"]),
        silhouette=float(winner["silhouette"]),
        score=float(winner["score"]),
        trials=records,
    )
