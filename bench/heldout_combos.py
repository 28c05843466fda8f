"""Combinations of quality levers on top of the shipped CSLS re-rank, tuning split only.

    .venv/bin/python bench/heldout_combos.py [--no-write] [--only FAMILY]

bench/heldout_levers.py tried each lever alone and found CSLS with k=20 best (shipped:
index/hubness.py). This bench tries them *together with* CSLS, and re-rankings it did
not try, each as one family whose weight or size is chosen leave-one-soundtrack-out
(LOSO: every tuning soundtrack is scored with the member best on the other 15), so no
parameter ever sees the soundtrack it is scored on:

* CSLS itself: neighbourhood k × strength β (rank by cos − β·r(y); β=1 is CSLS), and k
  as a share of the library (the tuning+dev column then uses a k twice as large);
* CSLS on the centred embedding with the stored 50 tag scores or the stored scalar
  features (tempo, energy, loudness, key) weighted in, concatenated or fused as scores;
* CSLS on mean+std pooled patch embeddings (would need a re-analysis: the store keeps
  only the mean);
* CSLS fused with mutual proximity or shared-nearest-neighbour similarity;
* other hubness normalisers: inverted softmax, Sinkhorn scaling, CSLS applied twice,
  k-reciprocal re-ranking (Jaccard of reciprocal neighbourhoods), other radius shapes
  (k-th neighbour, median), a penalty on how often a track already is in a top 10;
* fusion of two geometries: centred + partially whitened, centred + raw, rank (Borda)
  fusion, a radius averaged over several k, the centring prior × k;
* a within-soundtrack covariance normalisation (WCCN) *learned* from labelled
  soundtracks: the one lever here that is trained, so it is scored on a clean
  protocol of its own (fit on half the tuning soundtracks, search a library of the
  other half only) and on the dev corpus with a fit on the whole tuning split.

The kept-aside final split of bench/heldout.py is never read. Figures: tuning p@5
(16 soundtracks, 96 tracks), the tuning queries in a tuning+dev library (188 tracks,
the dev soundtracks as distractors), dev-corpus p@10, hubness (k-occurrence skew and
share never in a top k).
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
from scipy.special import logsumexp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import corpus_dir, machine, read_manifest, write_section  # noqa: E402
from heldout import logit, unit  # noqa: E402
from heldout_analyses import load as load_analysis  # noqa: E402
from heldout_analyses import version as analyses_version  # noqa: E402
from heldout_corpus import out_dir as heldout_dir  # noqa: E402
from heldout_corpus import read_heldout  # noqa: E402
from heldout_levers import _knn_sims, csls, loso, measure, mp_gauss, paired, whiten_power  # noqa: E402

from index.geometry import fit_geometry  # noqa: E402
from index.hubness import K as SHIPPED_K  # noqa: E402

MARKER = "## Held-out quality: combinations on top of CSLS"


@dataclass
class Tracks:
    """One set of tracks as the store would hold them (plus the patch std, which it does not)."""

    labels: np.ndarray
    emb: np.ndarray  # [N, 200] mean of the 32 sampled patches (what the store keeps)
    std: np.ndarray  # [N, 200] std of those patches (not stored: needs a re-analysis)
    tags: np.ndarray  # [N, 50] mean tag scores (stored)
    feats: np.ndarray  # [N, 6] log2 tempo, energy, loudness, key on the circle of fifths ×2, minor
    full: np.ndarray  # [N, 200] mean of every patch of the track (AudioMuse-AI's embedding)

    def __post_init__(self) -> None:
        self.v = fit_geometry(self.emb.astype(np.float32)).apply(
            self.emb.astype(np.float32)).astype(np.float64)
        self.cos = self.v @ self.v.T

    def take(self, idx: np.ndarray) -> Tracks:
        return Tracks(self.labels[idx], self.emb[idx], self.std[idx], self.tags[idx],
                      self.feats[idx], self.full[idx])


def load_tracks(paths: list[Path], labels: list[str]) -> Tracks:
    ver = analyses_version()
    keep, emb, std, tags, feats, full = [], [], [], [], [], []
    for i, p in enumerate(paths):
        r = load_analysis(p, ver)
        if r is None:
            continue
        keep.append(i)
        emb.append(r["samp_emb"].mean(0))
        std.append(r["samp_emb"].std(0))
        tags.append(r["samp_tags"].mean(0))
        full.append(r["full_emb"].mean(0))
        f = r["feats"]  # tempo, energy, loudness, key, minor, key strength, duration
        ang = 2 * np.pi * ((int(f[3]) * 7) % 12) / 12 if f[3] >= 0 else 0.0
        feats.append([np.log2(max(float(f[0]), 1.0)), f[1], f[2], np.cos(ang) * f[5],
                      np.sin(ang) * f[5], f[4] * f[5]])
    a = lambda x: np.asarray(x, np.float64)  # noqa: E731
    return Tracks(np.asarray(labels)[keep], a(emb), a(std), a(tags), a(feats), a(full))


def joined(a: Tracks, b: Tracks) -> Tracks:
    return Tracks(np.concatenate([a.labels, np.char.add("other:", b.labels.astype(str))]),
                  *(np.concatenate([getattr(a, f), getattr(b, f)])
                    for f in ("emb", "std", "tags", "feats", "full")))


# ---- pieces --------------------------------------------------------------------------


def centre(x: np.ndarray) -> np.ndarray:
    u = unit(x)
    return unit(u - u.mean(0))


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def cos_of(*parts: np.ndarray) -> np.ndarray:
    x = unit(np.hstack(parts))
    return x @ x.T


def csls_beta(s: np.ndarray, k: int, beta: float) -> np.ndarray:
    r = _knn_sims(s, k).mean(1)
    return 2 * s - beta * (r[:, None] + r[None, :])


def snn(s: np.ndarray, k: int) -> np.ndarray:
    """Shared nearest neighbours: the share of x's k nearest that are also y's."""
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    nn = np.argsort(-t, axis=1)[:, :k]
    a = np.zeros_like(s)
    np.put_along_axis(a, nn, 1.0, 1)
    return a @ a.T / k


def inverted_softmax(s: np.ndarray, beta: float) -> np.ndarray:
    """Smith et al. 2017: score β·cos − log Σ_x exp(β·cos(x, y)), the target's normaliser."""
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    return beta * s - logsumexp(beta * t, axis=1)[None, :]


def sinkhorn(s: np.ndarray, beta: float, rounds: int = 10) -> np.ndarray:
    """exp(β·cos) scaled to be doubly stochastic (log domain): every track's total as
    a neighbour is the same."""
    t = beta * s.copy()
    np.fill_diagonal(t, -np.inf)
    a = np.zeros(len(s))
    b = np.zeros(len(s))
    for _ in range(rounds):
        a = -logsumexp(t + b[None, :], axis=1)
        b = -logsumexp(t + a[:, None], axis=0)
    return t + a[:, None] + b[None, :]


def k_reciprocal(s: np.ndarray, k1: int, lam: float) -> np.ndarray:
    """Zhong et al. 2017 re-ranking: Jaccard distance of the (expanded) k-reciprocal
    neighbourhoods, weighted by exp(−d), mixed with the original distance by λ."""
    n = len(s)
    t = s.copy()
    np.fill_diagonal(t, np.inf)
    order = np.argsort(-t, axis=1)
    fw = [set(order[i, :k1 + 1].tolist()) for i in range(n)]
    half = [set(order[i, :round(k1 / 2) + 1].tolist()) for i in range(n)]
    v = np.zeros_like(s)
    for i in range(n):
        r = {j for j in fw[i] if i in fw[j]}
        grown = set(r)
        for j in r:
            cand = {c for c in half[j] if j in half[c]}
            if len(cand & r) > 2 / 3 * len(cand):
                grown |= cand
        cols = np.array(sorted(grown))
        w = np.exp(-(2 - 2 * s[i, cols]))
        v[i, cols] = w / w.sum()
    inter = np.minimum(v[:, None, :], v[None, :, :]).sum(2)
    union = np.maximum(v[:, None, :], v[None, :, :]).sum(2)
    jaccard = 1 - inter / np.maximum(union, 1e-12)
    return -((1 - lam) * jaccard + lam * (2 - 2 * s))


def k_occurrence(s: np.ndarray, k: int) -> np.ndarray:
    """How often each track is in another's top ``k`` under ``s`` (its hubness)."""
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    return np.bincount(np.argsort(-t, axis=1)[:, :k].ravel(), minlength=len(s)).astype(np.float64)


def rank_score(s: np.ndarray) -> np.ndarray:
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    return -np.argsort(np.argsort(-t, axis=1), axis=1).astype(np.float64)


def prior_cos(x: np.ndarray, prior: int) -> np.ndarray:
    """The product's centring with another shrinkage prior (index.geometry.MEAN_PRIOR_TRACKS)."""
    u = unit(x)
    m = u.mean(0) * len(u) / (len(u) + prior)
    v = unit(u - m)
    return v @ v.T


# ---- the families ----------------------------------------------------------------------

Score = Callable[[Tracks], np.ndarray]
SHIPPED = f"centred + CSLS k={SHIPPED_K} (shipped)"


def families() -> dict[str, dict[str, Score]]:
    """Family -> {member: score function}; every family's first member is the shipped default,
    so a fold that finds nothing better keeps it."""
    shipped: Score = lambda t: csls(t.cos, SHIPPED_K)  # noqa: E731
    out: dict[str, dict[str, Score]] = {"references": {
        "full-track musicnn, raw (AudioMuse-AI)": lambda t: unit(t.full) @ unit(t.full).T,
        "centred": lambda t: t.cos,
        SHIPPED: shipped,
    }}

    def fam(name: str) -> dict[str, Score]:
        out[name] = {SHIPPED: shipped}
        return out[name]

    f = fam("CSLS k × strength")
    for k in (10, 15, 20, 25, 30):
        for b in (0.75, 1.0, 1.25, 1.5):
            if (k, b) != (SHIPPED_K, 1.0):
                f[f"CSLS k={k} β={b:g}"] = lambda t, k=k, b=b: csls_beta(t.cos, k, b)

    f = fam("CSLS k by library size")
    for share in (0.1, 0.15, 0.2, 0.25, 0.3):
        f[f"CSLS k={share:g}×tracks"] = (
            lambda t, share=share: csls(t.cos, max(1, round(share * len(t.labels)))))

    tag_codings: dict[str, Callable[[Tracks], np.ndarray]] = {
        "scores": lambda t: centre(t.tags), "logits": lambda t: centre(logit(t.tags)),
        "√scores": lambda t: centre(np.sqrt(t.tags))}
    f = fam("CSLS + the 50 tag scores")
    for coding, tv in tag_codings.items():
        for w in (0.1, 0.2, 0.3, 0.5):
            f[f"[centred, {w:g}×tag {coding}] + CSLS"] = (
                lambda t, w=w, tv=tv: csls(cos_of(t.v, w * tv(t)), SHIPPED_K))
        for w in (0.1, 0.2, 0.5):
            f[f"CSLS + {w:g}×CSLS(tag {coding})"] = (
                lambda t, w=w, tv=tv: shipped(t) + w * csls((tv(t)) @ tv(t).T, SHIPPED_K))

    f = fam("CSLS + tempo/energy/loudness/key")
    for cols, name in (((0, 1, 2, 3, 4, 5), "all"), ((1, 2), "energy, loudness"),
                       ((0,), "tempo"), ((3, 4, 5), "key")):
        for w in (0.05, 0.1, 0.2, 0.3):
            f[f"[centred, {w:g}×{name}] + CSLS"] = (
                lambda t, w=w, cols=cols: csls(cos_of(t.v, w * unit(zscore(t.feats[:, cols]))),
                                               SHIPPED_K))

    f = fam("CSLS + mean+std pooling (re-analysis)")
    for w in (0.25, 0.5, 0.75):
        for k in (10, 20):
            f[f"[centred, {w:g}×std] + CSLS k={k}"] = (
                lambda t, w=w, k=k: csls(cos_of(t.v, w * centre(t.std)), k))

    f = fam("CSLS + mutual proximity / shared neighbours")
    for w in (0.1, 0.2, 0.5, 1.0):
        f[f"CSLS + {w:g}×MP"] = lambda t, w=w: shipped(t) + w * mp_gauss(t.cos)
    f["MP, then CSLS k=20"] = lambda t: csls(mp_gauss(t.cos), SHIPPED_K)
    for k in (5, 10, 20):
        for w in (0.1, 0.3):
            f[f"CSLS + {w:g}×SNN k={k}"] = lambda t, k=k, w=w: shipped(t) + w * snn(t.cos, k)

    f = fam("other hubness normalisers")
    for b in (5, 10, 20):
        f[f"inverted softmax β={b}"] = lambda t, b=b: inverted_softmax(t.cos, b)
        f[f"Sinkhorn β={b}"] = lambda t, b=b: sinkhorn(t.cos, b)
    for k in (10, 20):
        f[f"radius = k-th neighbour's cosine, k={k}"] = (
            lambda t, k=k: 2 * t.cos - _knn_sims(t.cos, k)[:, -1][None, :])
        f[f"radius = median of the k nearest, k={k}"] = (
            lambda t, k=k: 2 * t.cos - np.median(_knn_sims(t.cos, k), 1)[None, :])
    for g in (0.01, 0.05):
        f[f"CSLS − {g:g}·log(1 + times in a CSLS top 10)"] = (
            lambda t, g=g: shipped(t) - g * np.log1p(k_occurrence(shipped(t), 10))[None, :])
    for k2 in (10, 20):
        f[f"CSLS k=20, then CSLS k={k2}"] = lambda t, k2=k2: csls(shipped(t) / 2, k2)
    for k1 in (5, 10):
        for lam in (0.3, 0.6):
            f[f"k-reciprocal k1={k1} λ={lam:g}"] = (
                lambda t, k1=k1, lam=lam: k_reciprocal(t.cos, k1, lam))
            f[f"k-reciprocal k1={k1} λ={lam:g} on CSLS"] = (
                lambda t, k1=k1, lam=lam: k_reciprocal(shipped(t) / 2, k1, lam))

    f = fam("fusion of two geometries")
    for a in (0.25, 0.5):
        for w in (0.25, 0.5, 1.0):
            f[f"CSLS + {w:g}×CSLS(whiten α={a:g})"] = (
                lambda t, a=a, w=w: shipped(t) + w * csls(
                    (lambda x: x @ x.T)(whiten_power(t.emb, a)), SHIPPED_K))
    for w in (0.25, 0.5):
        f[f"CSLS + {w:g}×CSLS(raw)"] = (
            lambda t, w=w: shipped(t) + w * csls(unit(t.emb) @ unit(t.emb).T, SHIPPED_K))
    f["Borda: CSLS + CSLS(whiten α=0.5)"] = lambda t: rank_score(shipped(t)) + rank_score(
        csls((lambda x: x @ x.T)(whiten_power(t.emb, 0.5)), SHIPPED_K))
    f["Borda: CSLS + MP"] = lambda t: rank_score(shipped(t)) + rank_score(mp_gauss(t.cos))
    for ks in ((10, 20, 30), (15, 20, 25), (20, 40)):
        f[f"radius averaged over k={ks}"] = (
            lambda t, ks=ks: 2 * t.cos - np.mean([_knn_sims(t.cos, k).mean(1) for k in ks], 0)[None, :])
    for prior in (0, 10):
        for k in (15, 20, 25):
            f[f"centring prior {prior}, CSLS k={k}"] = (
                lambda t, prior=prior, k=k: csls(prior_cos(t.emb, prior), k))
    return out


# ---- the learned lever, on its own protocol ------------------------------------------


def within_scatter(v: np.ndarray, labels: np.ndarray) -> np.ndarray:
    c = np.zeros((v.shape[1],) * 2)
    for lab in np.unique(labels):
        x = v[labels == lab]
        x = x - x.mean(0)
        c += x.T @ x
    return c / len(v)


def wccn(c: np.ndarray, shrink: float) -> np.ndarray:
    var, vecs = np.linalg.eigh(c)
    var = np.clip(var, 0, None)
    return vecs * (var + shrink * var.mean()) ** -0.5 @ vecs.T


def learned(tune: Tracks, dev: Tracks, repeats: int = 20, seed: int = 0) -> list[str]:
    """WCCN fitted on 8 tuning soundtracks, the library the other 8 (p@5), ``repeats``
    random halvings; plus the dev corpus with a fit on all 16 and with a fit on dev only
    applied to the tuning split (which then is clean)."""
    rng = np.random.default_rng(seed)
    labs = np.unique(tune.labels)
    shrinks = (0.3, 1.0, 3.0)
    got: dict[str, list[float]] = {}
    for _ in range(repeats):
        perm = rng.permutation(labs)
        fit = np.isin(tune.labels, perm[: len(labs) // 2])
        a, b = tune.take(np.flatnonzero(fit)), tune.take(np.flatnonzero(~fit))
        c = within_scatter(a.v, a.labels)
        got.setdefault("full-track musicnn, raw", []).append(
            measure(unit(b.full) @ unit(b.full).T, b.labels, 5)[1]["p"])
        got.setdefault(SHIPPED, []).append(measure(csls(b.cos, SHIPPED_K), b.labels, 5)[1]["p"])
        for s in shrinks:
            x = unit(b.v @ wccn(c, s))
            got.setdefault(f"WCCN shrink {s:g} + CSLS", []).append(
                measure(csls(x @ x.T, SHIPPED_K), b.labels, 5)[1]["p"])
    out = ["| WCCN protocol | configuration | p@5 |", "| --- | --- | ---: |"]
    out += [f"| fit on 8 tuning soundtracks, library of the other 8 (mean of {repeats}) | {n} | "
            f"{np.mean(v):.3f} |" for n, v in got.items()]
    ct, cd = within_scatter(tune.v, tune.labels), within_scatter(dev.v, dev.labels)
    for s in shrinks:
        x = unit(dev.v @ wccn(ct, s))
        out.append(f"| fit on the 16 tuning soundtracks, dev corpus p@10 | WCCN shrink {s:g} + CSLS | "
                   f"{measure(csls(x @ x.T, SHIPPED_K), dev.labels, 10)[1]['p']:.3f} |")
    for s in shrinks:
        x = unit(tune.v @ wccn(cd, s))
        out.append(f"| fit on the 3 dev soundtracks, tuning p@5 | WCCN shrink {s:g} + CSLS | "
                   f"{measure(csls(x @ x.T, SHIPPED_K), tune.labels, 5)[1]['p']:.3f} |")
    return out


# ---- run -----------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--only", help="measure only the families whose name contains this")
    args = parser.parse_args()
    started = time.monotonic()
    held = read_heldout(heldout_dir())
    tune = load_tracks([p for p, _, s in held if s == "tuning"],
                       [lab for _, lab, s in held if s == "tuning"])
    rows = read_manifest(corpus_dir())
    dev = load_tracks([p for p, _ in rows], [lab for _, lab in rows])
    mixed = joined(tune, dev)
    nt = len(tune.labels)
    fams = families()
    full_pq = measure(fams["references"]["full-track musicnn, raw (AudioMuse-AI)"](tune),
                      tune.labels, 5)[0]
    full_mixed = measure(fams["references"]["full-track musicnn, raw (AudioMuse-AI)"](mixed),
                         mixed.labels, 5)[0][:nt]
    full_p, full_pm = float(full_pq.mean()), float(full_mixed.mean())
    lines = [
        "| family | configuration | tuning p@5 | vs full-track | skew@5 | never top 5 | "
        "tuning in tuning+dev p@5 | dev p@10 | dev skew@10 | dev never top 10 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    summary, all_pq, all_names = [], [], []
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
            if fam == "references" or name != SHIPPED:
                all_pq.append(pq)
                all_names.append(name)
            if fam == "references" or name != SHIPPED:
                lines.append(f"| {fam} | {name} | {m['p']:.3f} | {m['p'] / full_p - 1:+.1%} | "
                             f"{m['skew5']:.2f} | {m['never5']:.1%} | {mq.mean():.3f} | "
                             f"{dm['p']:.3f} | {dm['skew10']:.2f} | {dm['never10']:.1%} |")
                print(lines[-1], flush=True)
        if fam == "references":
            continue
        lo, picks, got = loso(np.stack(pqs), tune.labels)
        lom, _, _ = loso(np.stack(pqm), tune.labels)
        names = list(members)
        summary.append(
            f"- {fam} ({len(members)} members): LOSO p@5 **{lo:.3f}** ({lo / full_p - 1:+.1%} over "
            f"full-track {full_p:.3f}; {paired(got, full_pq, tune.labels)}); tuning+dev library "
            f"{lom:.3f} ({lom / full_pm - 1:+.1%} over {full_pm:.3f}); chosen: "
            + "; ".join(f"{names[i]} ×{n}" for i, n in sorted(picks.items(), key=lambda x: -x[1])))
        print(summary[-1], flush=True)
    lo, picks, got = loso(np.stack(all_pq), tune.labels)
    summary.append(
        f"- every configuration above at once ({len(all_pq)}): LOSO p@5 **{lo:.3f}** "
        f"({lo / full_p - 1:+.1%}; {paired(got, full_pq, tune.labels)}); chosen: " + "; ".join(
            f"{all_names[i]} ×{n}" for i, n in sorted(picks.items(), key=lambda x: -x[1])))
    print(summary[-1], flush=True)
    wlines = learned(tune, dev) if not args.only or args.only in "learned" else []
    print("\n".join(wlines))
    total = time.monotonic() - started
    print(f"total {total:.0f} s")
    if args.no_write or args.only:
        return 0
    section = "\n".join([
        MARKER + " (`bench/heldout_combos.py`, issue 11 target 6)",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (2-core VM, 24 GiB, shared with "
        f"other jobs); command: `.venv/bin/python bench/heldout_combos.py` ({total:.0f} s, "
        "analyses cached by `bench/heldout_analyses.py`). Tuning split only (96 tracks, 16 "
        "soundtracks, p@5) and the dev corpus (92 tracks, p@10); the final split is not read. "
        "Plain top 10 over all other tracks of the set; geometry fitted on the set, without "
        "labels. Each family's first member is the shipped default (its row is under "
        "\"references\"); LOSO chooses among the family's members on the other 15 soundtracks.",
        "",
        *lines,
        "",
        "Leave-one-soundtrack-out per family:",
        "",
        *summary,
        "",
        "The one trained lever, a within-soundtrack covariance normalisation (WCCN) learned "
        "from labelled soundtracks, scored where the soundtracks it was fitted on are not in "
        "the library searched:",
        "",
        *wlines,
    ])
    write_section(REPO / "docs" / "benchmarks.md", MARKER, section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
