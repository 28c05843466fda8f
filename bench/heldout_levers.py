"""Quality levers not yet tried by bench/heldout.py, measured on the tuning split only.

    .venv/bin/python bench/heldout_levers.py [--no-write]

The analyses come from bench/heldout_analyses.py's cache (per-patch embeddings of
musegate's 32 sampled patches and of every patch of the track). The kept-aside final
split of bench/heldout.py is never read here: only the 16 tuning soundtracks (p@5)
and the dev corpus (p@10) are scored.

Levers, each one family of configurations:

* hubness reduction on top of the centred cosine: CSLS (k), local scaling
  (Zelnik-Manor: rank by d²/(σ_x σ_y), σ = distance to the k-th neighbour), NICDM,
  mutual proximity (Gaussian and empirical), and CSLS after local scaling;
* partial whitening, fitted on the library itself: PCA whitening with eigenvalue
  power α (0<α<1) and "all-but-the-top" (centre, drop the top D principal
  components);
* pooling of the patch embeddings: mean (musegate), max, GeM of the rectified
  embeddings, trimmed mean, median, mean of the ReLU'd embeddings (the network's own
  activation after the 200-d layer: the "different layer" lever that needs no new
  model outputs);
* set-to-set similarity of the patches (mean best-match patch cosine, both ways);
* query expansion (α-QE: the query averaged with its top-k, weighted by cos^α) and
  database-side augmentation (every track replaced by the same average), before
  CSLS; diffusion (manifold ranking) on the kNN graph.

Every family is scored leave-one-soundtrack-out (LOSO): each tuning soundtrack is
scored with the family member that did best on the other 15 soundtracks' queries.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import corpus_dir, machine, read_manifest, write_section  # noqa: E402
from heldout import hubness, per_query, ranks, unit  # noqa: E402
from heldout_analyses import load as load_analysis  # noqa: E402
from heldout_analyses import version as analyses_version  # noqa: E402
from heldout_corpus import out_dir as heldout_dir  # noqa: E402
from heldout_corpus import read_heldout  # noqa: E402

from index.geometry import fit_geometry  # noqa: E402

MARKER = "## Held-out quality: levers on the tuning split"


@dataclass
class PatchSet:
    """One set of tracks: labels and per-patch embeddings (sampled 32 and full track)."""

    labels: np.ndarray
    sampled: list[np.ndarray]  # [32, 200] per track
    full: list[np.ndarray]  # [n, 200] per track


def load_set(paths: list[Path], labels: list[str]) -> PatchSet:
    ver = analyses_version()
    keep, samp, full = [], [], []
    for i, p in enumerate(paths):
        r = load_analysis(p, ver)
        if r is None:
            continue
        keep.append(i)
        samp.append(r["samp_emb"].astype(np.float64))
        full.append(r["full_emb"].astype(np.float64))
    return PatchSet(np.asarray(labels)[keep], samp, full)


def joined(a: PatchSet, b: PatchSet) -> PatchSet:
    """One library holding both sets (b's labels prefixed, so no soundtrack is shared)."""
    return PatchSet(np.concatenate([a.labels, np.char.add("other:", b.labels.astype(str))]),
                    a.sampled + b.sampled, a.full + b.full)


def tuning_set() -> PatchSet:
    held = read_heldout(heldout_dir())
    return load_set([p for p, _, s in held if s == "tuning"],
                    [lab for _, lab, s in held if s == "tuning"])


def dev_set() -> PatchSet:
    rows = read_manifest(corpus_dir())
    return load_set([p for p, _ in rows], [lab for _, lab in rows])


# ---- pooling ---------------------------------------------------------------------------


def _trimmed(e: np.ndarray, share: float) -> np.ndarray:
    s = np.sort(e, axis=0)
    cut = int(len(s) * share)
    return s[cut: len(s) - cut].mean(0) if len(s) > 2 * cut else s.mean(0)


def _gem(e: np.ndarray, p: float) -> np.ndarray:
    return (np.maximum(e, 0.0) ** p).mean(0) ** (1.0 / p)


POOLS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda e: e.mean(0),
    "max": lambda e: e.max(0),
    "median": lambda e: np.median(e, 0),
    "trimmed 10%": lambda e: _trimmed(e, 0.1),
    "trimmed 25%": lambda e: _trimmed(e, 0.25),
    "mean of ReLU": lambda e: np.maximum(e, 0.0).mean(0),
    "GeM p=2 (ReLU)": lambda e: _gem(e, 2.0),
    "GeM p=3 (ReLU)": lambda e: _gem(e, 3.0),
    "mean + max": lambda e: np.concatenate([unit(e.mean(0)[None])[0], unit(e.max(0)[None])[0]]),
}


def pooled(ps: PatchSet, pool: str, patches: str = "sampled") -> np.ndarray:
    rows = ps.sampled if patches == "sampled" else ps.full
    return np.stack([POOLS[pool](e) for e in rows])


# ---- geometry --------------------------------------------------------------------------


def centred(x: np.ndarray) -> np.ndarray:
    """The product's centred geometry (index.geometry: shrunk mean, prior 5)."""
    if x.shape[1] != 200:
        return unit(unit(x) - unit(x).mean(0))
    return fit_geometry(x.astype(np.float32)).apply(x.astype(np.float32)).astype(np.float64)


def _pca(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = unit(x)
    c = u - u.mean(0)
    var, vecs = np.linalg.eigh(c.T @ c / len(c))
    order = np.argsort(var)[::-1]
    return c, np.clip(var[order], 0, None), vecs[:, order]


def whiten_power(x: np.ndarray, alpha: float) -> np.ndarray:
    """Centre, then scale principal direction i by var_i ** (-alpha/2) (alpha=1: full
    whitening). Directions with (numerically) no variance are dropped."""
    c, var, vecs = _pca(x)
    ok = var > var[0] * 1e-9
    scale = np.where(ok, np.maximum(var, 1e-300) ** (-alpha / 2), 0.0)
    return unit(c @ (vecs * scale) @ vecs.T)


def all_but_the_top(x: np.ndarray, d: int) -> np.ndarray:
    """Centre, then remove the projection on the top ``d`` principal components (Mu & Viswanath)."""
    c, _, vecs = _pca(x)
    top = vecs[:, :d]
    return unit(c - (c @ top) @ top.T)


# ---- scores (higher is better; rows are queries) --------------------------------------


def _knn_sims(s: np.ndarray, k: int) -> np.ndarray:
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    return -np.sort(-t, axis=1)[:, :k]


def csls(s: np.ndarray, k: int = 10) -> np.ndarray:
    r = _knn_sims(s, k).mean(1)
    return 2 * s - r[:, None] - r[None, :]


def local_scaling(s: np.ndarray, k: int) -> np.ndarray:
    """Zelnik-Manor & Perona: exp(-d²/(σ_x σ_y)), σ = distance to the k-th neighbour."""
    d = np.sqrt(np.maximum(2 - 2 * s, 0.0))
    sigma = np.sqrt(np.maximum(2 - 2 * _knn_sims(s, k)[:, -1], 1e-12))
    return np.exp(-(d**2) / (sigma[:, None] * sigma[None, :]))


def nicdm(s: np.ndarray, k: int) -> np.ndarray:
    """Non-iterative contextual dissimilarity: d / sqrt(μ_x μ_y), μ = mean distance to k nearest."""
    d = np.sqrt(np.maximum(2 - 2 * s, 0.0))
    mu = np.sqrt(np.maximum(2 - 2 * _knn_sims(s, k), 0.0)).mean(1)
    return -d / np.sqrt(mu[:, None] * mu[None, :])


def mp_gauss(s: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    t = s.copy()
    np.fill_diagonal(t, np.nan)
    mu, sd = np.nanmean(t, 1), np.nanstd(t, 1)
    return ndtr((s - mu[:, None]) / sd[:, None]) * ndtr((s - mu[None, :]) / sd[None, :])


def mp_empirical(s: np.ndarray) -> np.ndarray:
    """P(a random z is farther from x than y is) · P(… from y than x is), from the library."""
    n = len(s)
    t = s.copy()
    np.fill_diagonal(t, np.inf)  # a track is never "farther" than anyone from itself
    # share of z with s(x, z) < s(x, y), per x and y
    srt = np.sort(t, axis=1)
    below = np.stack([np.searchsorted(srt[i], s[i], side="left") for i in range(n)]) / (n - 1)
    return below * below.T


def qe(v: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """α-QE: each vector averaged with its top ``k`` neighbours, weighted by cos^α (self 1)."""
    s = v @ v.T
    np.fill_diagonal(s, -np.inf)
    nn = np.argsort(-s, axis=1)[:, :k]
    w = np.maximum(np.take_along_axis(s, nn, 1), 0.0) ** alpha
    return unit(v + np.einsum("nk,nkd->nd", w, v[nn]))


def chamfer(patches: list[np.ndarray], mean: np.ndarray) -> np.ndarray:
    """Mean over x's patches of the best cosine to any of y's patches, symmetrised.

    Patches are centred on the library's mean patch (``mean``) first, as the track
    vectors are."""
    sizes = [len(p) for p in patches]
    allp = unit(np.concatenate(patches) - mean)
    sims = allp @ allp.T
    edges = np.cumsum([0, *sizes])
    n = len(patches)
    out = np.zeros((n, n))
    for j in range(n):
        best = sims[:, edges[j]: edges[j + 1]].max(1)  # every patch's best match in track j
        out[:, j] = np.add.reduceat(best, edges[:-1]) / np.asarray(sizes)
    return (out + out.T) / 2


# ---- one configuration = a function of the set -----------------------------------------

Score = Callable[[PatchSet], np.ndarray]


def cos(v: np.ndarray) -> np.ndarray:
    return v @ v.T


def base(ps: PatchSet, pool: str = "mean", patches: str = "sampled", geom: str = "centre") -> np.ndarray:
    x = pooled(ps, pool, patches)
    if geom == "raw":
        return unit(x)
    if geom == "centre":
        return centred(x)
    kind, value = geom.split(" ")
    if kind == "alpha":
        return whiten_power(x, float(value))
    return all_but_the_top(x, int(value))


def full_track_reference(ps: PatchSet) -> np.ndarray:
    """AudioMuse-AI's way: the mean of every patch of the track, raw cosine."""
    return cos(base(ps, patches="full", geom="raw"))


def families() -> dict[str, dict[str, Score]]:
    """Lever family -> {member label: score function}. The first member of every family
    after the references is the shipped default (centred + CSLS k=10)."""
    ref = {
        "full-track musicnn, raw (AudioMuse-AI)": full_track_reference,
        "musegate raw (32 sampled patches)": lambda ps: cos(base(ps, geom="raw")),
        "centred": lambda ps: cos(base(ps)),
        "centred + CSLS k=10 (shipped)": lambda ps: csls(cos(base(ps))),
    }
    default = ref["centred + CSLS k=10 (shipped)"]
    hub: dict[str, Score] = {"centred + CSLS k=10 (shipped)": default}
    for k in (5, 15, 20, 30, 40):
        hub[f"centred + CSLS k={k}"] = lambda ps, k=k: csls(cos(base(ps)), k)
    for k in (3, 5, 7, 10, 15, 20):
        hub[f"centred + local scaling k={k}"] = lambda ps, k=k: local_scaling(cos(base(ps)), k)
    for k in (5, 10, 20):
        hub[f"centred + NICDM k={k}"] = lambda ps, k=k: nicdm(cos(base(ps)), k)
    hub["centred + MP Gaussian"] = lambda ps: mp_gauss(cos(base(ps)))
    hub["centred + MP empirical"] = lambda ps: mp_empirical(cos(base(ps)))
    hub["centred + MP Gaussian + CSLS"] = lambda ps: csls(mp_gauss(cos(base(ps))))
    hub["centred + local scaling k=7 + CSLS"] = lambda ps: csls(local_scaling(cos(base(ps)), 7))

    white: dict[str, Score] = {"centred + CSLS k=10 (shipped)": default}
    for a in (0.25, 0.5, 0.75):
        white[f"whiten α={a:g}"] = lambda ps, a=a: cos(base(ps, geom=f"alpha {a}"))
        white[f"whiten α={a:g} + CSLS"] = lambda ps, a=a: csls(cos(base(ps, geom=f"alpha {a}")))
        white[f"whiten α={a:g} + CSLS k=20"] = (
            lambda ps, a=a: csls(cos(base(ps, geom=f"alpha {a}")), 20))
    for d in (1, 2, 3, 5, 8, 12):
        white[f"all-but-the-top D={d}"] = lambda ps, d=d: cos(base(ps, geom=f"abtt {d}"))
        white[f"all-but-the-top D={d} + CSLS"] = lambda ps, d=d: csls(cos(base(ps, geom=f"abtt {d}")))

    pool: dict[str, Score] = {"centred + CSLS k=10 (shipped)": default}
    for name in POOLS:
        if name == "mean":
            continue
        pool[f"{name}, centred + CSLS"] = lambda ps, name=name: csls(cos(base(ps, name)))
    for name in ("median", "trimmed 10%"):
        pool[f"{name}, centred + CSLS k=20"] = lambda ps, name=name: csls(cos(base(ps, name)), 20)
    for name in ("mean", "max", "mean of ReLU", "GeM p=3 (ReLU)"):
        pool[f"full track {name}, centred + CSLS"] = (
            lambda ps, name=name: csls(cos(base(ps, name, "full"))))

    sets: dict[str, Score] = {"centred + CSLS k=10 (shipped)": default}

    def patch_mean(ps: PatchSet, which: str) -> np.ndarray:
        rows = ps.sampled if which == "sampled" else ps.full
        return unit(np.concatenate(rows)).mean(0)

    sets["patch chamfer (sampled)"] = lambda ps: chamfer(ps.sampled, patch_mean(ps, "sampled"))
    sets["patch chamfer (sampled) + CSLS"] = lambda ps: csls(chamfer(ps.sampled, patch_mean(ps, "sampled")))
    sets["patch chamfer (full track)"] = lambda ps: chamfer(ps.full, patch_mean(ps, "full"))
    for w in (0.5, 1.0):
        sets[f"centred cos + {w:g}×chamfer, CSLS"] = (
            lambda ps, w=w: csls(cos(base(ps)) + w * chamfer(ps.sampled, patch_mean(ps, "sampled"))))

    expand: dict[str, Score] = {"centred + CSLS k=10 (shipped)": default}
    for k in (1, 2, 3, 5):
        for a in (0.0, 3.0):
            expand[f"α-QE k={k} α={a:g} + CSLS"] = (
                lambda ps, k=k, a=a: csls(_qe_scores(base(ps), k, a)))
            expand[f"DBA k={k} α={a:g} + CSLS"] = (
                lambda ps, k=k, a=a: csls(cos(qe(base(ps), k, a))))
    for k in (5, 10, 20):
        for a in (0.5, 0.9, 0.99):
            expand[f"diffusion k={k} α={a:g}"] = (
                lambda ps, k=k, a=a: diffusion(cos(base(ps)), k, a))
    expand["diffusion k=10 α=0.9 + CSLS"] = lambda ps: csls(diffusion(cos(base(ps)), 10, 0.9))
    return {"references": ref, "hubness reduction": hub, "partial whitening": white,
            "pooling": pool, "patch set-to-set": sets, "query expansion": expand}


def diffusion(s: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Manifold ranking on the kNN graph (Zhou et al.; Iscen et al. for retrieval):
    W = max(cos, 0)^3 between mutual-or-one-way k nearest, symmetrised;
    F = (I − α D^-½ W D^-½)^-1, row i = query i's diffused scores."""
    n = len(s)
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    nn = np.argsort(-t, axis=1)[:, :k]
    w = np.zeros_like(s)
    rows = np.repeat(np.arange(n), k)
    w[rows, nn.ravel()] = np.maximum(s[rows, nn.ravel()], 0.0) ** 3
    w = np.maximum(w, w.T)
    d = w.sum(1)
    d = np.where(d > 0, d, 1.0) ** -0.5
    return np.linalg.inv(np.eye(n) - alpha * (d[:, None] * w * d[None, :]))


def _qe_scores(v: np.ndarray, k: int, alpha: float) -> np.ndarray:
    """Query side only: expanded queries against the unexpanded library."""
    return qe(v, k, alpha) @ v.T


# ---- measuring ---------------------------------------------------------------------------


def measure(s: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, dict[str, float]]:
    nn = ranks(s, 10)
    pq = per_query(nn, labels, k)
    s5, n5 = hubness(nn, 5)
    s10, n10 = hubness(nn, 10)
    return pq, {"p": float(pq.mean()), "skew5": s5, "never5": n5, "skew10": s10, "never10": n10}


def loso(pq: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, int], np.ndarray]:
    """pq [configs, queries]: mean over soundtracks of the left-out soundtrack's precision
    under the configuration best on the others (first maximum: ties go to the earlier);
    also how often each was chosen and the per-query precision LOSO gives."""
    got = np.zeros(pq.shape[1])
    picks: dict[int, int] = {}
    for lab in np.unique(labels):
        inside = labels == lab
        best = int(np.argmax(pq[:, ~inside].mean(1)))
        picks[best] = picks.get(best, 0) + 1
        got[inside] = pq[best, inside]
    return float(got.mean()), picks, got


def paired(got: np.ndarray, ref: np.ndarray, labels: np.ndarray, seed: int = 11) -> str:
    """Soundtracks better / equal / worse than ``ref``, and a 90 % bootstrap interval
    (soundtracks resampled) of the ratio of the means: how much of a gain is noise."""
    labs = np.unique(labels)
    g = np.array([got[labels == lab].mean() for lab in labs])
    r = np.array([ref[labels == lab].mean() for lab in labs])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(labs), (5000, len(labs)))
    ratio = g[pick].mean(1) / np.maximum(r[pick].mean(1), 1e-12) - 1
    lo, hi = np.quantile(ratio, [0.05, 0.95])
    return (f"{int((g > r).sum())}/{int((g == r).sum())}/{int((g < r).sum())} soundtracks "
            f"better/equal/worse than full-track, 90 % interval of the gain {lo:+.0%} … {hi:+.0%}")


def product_k(ks: tuple[int, ...] = (10, 15, 20)) -> list[str]:
    """CSLS neighbourhood sizes through the product's own similar songs (bench/csls.py's
    catalogues: the shrunk-mean geometry, the FAISS index, index.hubness radii, copies
    hidden, no artist cap): the one lever above that is a constant of the shipped code."""
    import importlib.util

    from index.faiss_index import SimilarityIndex
    from index.hubness import neighbourhood_radius

    spec = importlib.util.spec_from_file_location("bench_csls", REPO / "bench" / "csls.py")
    assert spec is not None and spec.loader is not None
    bc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bc)
    out = ["| set | CSLS k | similar_tracks precision | k-occurrence skewness | never in a list |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for name, (cat, labels, n) in (("held-out tuning, p@5", (*bc.heldout_catalogue(), 5)),
                                   ("dev corpus, p@10", (*bc.dev_catalogue(), 10))):
        index = SimilarityIndex.build(cat.ids, cat.vectors)
        for k in ks:
            cat.radius = neighbourhood_radius(index, cat.ids, cat.vectors, k)
            nn = bc.neighbour_lists(cat, index, n)
            p = float(np.mean([np.mean([labels[j] == labels[i] for j in row])
                               for i, row in enumerate(nn)]))
            skew, never, _ = bc.bench_index.hubness(nn, len(labels))
            out.append(f"| {name} | {k}{' (shipped)' if k == 10 else ''} | {p:.3f} | "
                       f"{skew:.2f} | {never:.1%} |")
            print(out[-1], flush=True)
        cat.radius = None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--only", help="measure only the families whose name contains this")
    args = parser.parse_args()
    started = time.monotonic()
    tune, dev = tuning_set(), dev_set()
    mixed = joined(tune, dev)
    nt = len(tune.labels)
    print(f"tuning {nt} tracks / {len(set(tune.labels))} soundtracks, "
          f"dev {len(dev.labels)} tracks", flush=True)
    fams = families()
    ref_full = fams["references"]["full-track musicnn, raw (AudioMuse-AI)"]
    full_pq, full_m = measure(ref_full(tune), tune.labels, 5)
    full_mixed = measure(ref_full(mixed), mixed.labels, 5)[0][:nt]
    full_p, full_pm = full_m["p"], float(full_mixed.mean())
    lines = [
        "| family | configuration | tuning p@5 | vs full-track | skew@5 | never top 5 | "
        "tuning in tuning+dev p@5 | vs full-track | dev p@10 | dev skew@10 | dev never top 10 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary = []
    all_pq, all_names = [], []
    for fam, members in fams.items():
        if args.only and args.only not in fam and fam != "references":
            continue
        pqs, pqm = [], []
        for name, fn in members.items():
            pq, m = measure(fn(tune), tune.labels, 5)
            _, dm = measure(fn(dev), dev.labels, 10)
            mq = measure(fn(mixed), mixed.labels, 5)[0][:nt]
            pqs.append(pq)
            pqm.append(mq)
            if fam == "references" or name != "centred + CSLS k=10 (shipped)":
                all_pq.append(pq)
                all_names.append(name)
            lines.append(f"| {fam} | {name} | {m['p']:.3f} | {m['p'] / full_p - 1:+.1%} | "
                         f"{m['skew5']:.2f} | {m['never5']:.1%} | {mq.mean():.3f} | "
                         f"{mq.mean() / full_pm - 1:+.1%} | {dm['p']:.3f} | "
                         f"{dm['skew10']:.2f} | {dm['never10']:.1%} |")
            print(lines[-1], flush=True)
        if fam != "references":
            lo, picks, got = loso(np.stack(pqs), tune.labels)
            lom, _, _ = loso(np.stack(pqm), tune.labels)
            names = list(members)
            summary.append(
                f"- {fam}: LOSO p@5 **{lo:.3f}** ({lo / full_p - 1:+.1%} over full-track "
                f"{full_p:.3f}; {paired(got, full_pq, tune.labels)}); in the tuning+dev "
                f"library {lom:.3f} ({lom / full_pm - 1:+.1%} over {full_pm:.3f}); chosen: "
                + "; ".join(f"{names[i]} ×{n}" for i, n in sorted(picks.items(), key=lambda x: -x[1])))
            print(summary[-1], flush=True)
    lo, picks, got = loso(np.stack(all_pq), tune.labels)
    summary.append(
        f"- every configuration above ({len(all_pq)}): LOSO p@5 **{lo:.3f}** "
        f"({lo / full_p - 1:+.1%}; {paired(got, full_pq, tune.labels)}); chosen: " + "; ".join(
            f"{all_names[i]} ×{n}" for i, n in sorted(picks.items(), key=lambda x: -x[1])))
    print(summary[-1])
    product = product_k() if not args.only else []
    total = time.monotonic() - started
    print(f"total {total:.0f} s")
    if args.no_write or args.only:
        return 0
    section = "\n".join([
        MARKER + " (`bench/heldout_levers.py`, issue 11 target 6)",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (2-core VM, 24 GiB, shared with "
        f"other jobs); command: `.venv/bin/python bench/heldout_levers.py` ({total:.0f} s, "
        "analyses cached by `bench/heldout_analyses.py`). Only the tuning split "
        f"({nt} tracks, {len(set(tune.labels))} soundtracks, p@5) and the dev "
        f"corpus ({len(dev.labels)} tracks, p@10) are scored; the final split is not read. "
        "Every row ranks all other tracks of the set (plain top 10, no playlist rules); "
        "the geometry is fitted on the set itself, without labels. \"tuning in tuning+dev\": "
        "the tuning queries searched in one library of both sets (188 tracks, the dev "
        "soundtracks as distractors), so a neighbourhood size k is tried on a second "
        "library size.",
        "",
        *lines,
        "",
        "Leave-one-soundtrack-out per family (each tuning soundtrack scored with the member "
        "best on the other 15):",
        "",
        *summary,
        "",
        "CSLS's neighbourhood size through the product's own similar songs (`similar_tracks`, "
        "as in \"CSLS re-ranking\"):",
        "",
        *product,
    ])
    write_section(REPO / "docs" / "benchmarks.md", MARKER, section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
