"""Similarity quality on music nobody tuned on: every lever, leave-one-soundtrack-out.

    nice -n 10 .venv/bin/python bench/heldout_analyses.py   # analyse (cached, resumable)
    .venv/bin/python bench/heldout.py                        # tuning split + dev corpus
    .venv/bin/python bench/heldout.py --final                # the kept-aside split, ONCE

Sets: the held-out soundtracks of bench/heldout_corpus.py (6 tracks each; ``tuning``
and ``final`` parts fixed before anything was measured) and the dev corpus (three
soundtracks the defaults were tuned on). Every track's analyses come from
bench/heldout_analyses.py's cache: musegate's sampled analysis as the analyzer runs
it, and every patch of the whole track (AudioMuse-AI's full-track musicnn), whose
per-patch outputs also give the "more patches" and pooling levers.

A configuration is (patches, geometry, std weight, tag weight, feature weight,
hubness reduction). Geometry is fitted on the library being searched (as a real
library would fit it: no labels). Weights are the tuned part, so the headline
figure is leave-one-soundtrack-out (LOSO): for each tuning soundtrack, the
configuration that did best on the other soundtracks' queries is scored on its own
queries. ``--final`` fixes the configuration on the whole tuning split and scores
the final split once (a marker file refuses a second run without ``--again``).

Metrics: same-soundtrack precision@5 (held-out; 5 = every other track of the
soundtrack) and @10 (dev corpus), k-occurrence skewness and the share of tracks in
nobody's top 5 / top 10 (hubness).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import corpus_dir, machine, read_manifest, write_section  # noqa: E402
from heldout_analyses import load as load_analysis  # noqa: E402
from heldout_analyses import version as analyses_version  # noqa: E402
from heldout_corpus import out_dir as heldout_dir  # noqa: E402
from heldout_corpus import read_heldout  # noqa: E402

from analysis.sampling import PATCH_SECONDS, SamplingPlan, excerpt_spans  # noqa: E402

MARKER = "## Held-out quality"


# ---- the vectors of one set of tracks ------------------------------------------------


@dataclass
class Library:
    labels: np.ndarray
    mean: dict[str, np.ndarray]  # patches plan -> [N, 200] mean embedding
    std: dict[str, np.ndarray]  # patches plan -> [N, 200] std of patch embeddings
    tags: dict[str, np.ndarray]  # patches plan -> [N, 50] mean tag scores
    feats: np.ndarray  # [N, k] scalar features of the sampled analysis

    def take(self, idx: np.ndarray) -> Library:
        return Library(self.labels[idx], {k: v[idx] for k, v in self.mean.items()},
                       {k: v[idx] for k, v in self.std.items()},
                       {k: v[idx] for k, v in self.tags.items()}, self.feats[idx])


def _grid(duration: float, n_patches: int, segments: int) -> np.ndarray:
    """Indices, on the full plan's patch grid, of a sampled plan with ``segments`` patches."""
    spans = excerpt_spans(duration, SamplingPlan(segments=segments))
    if spans is None:
        return np.arange(n_patches)
    return np.clip([round(s / PATCH_SECONDS) for s, _ in spans], 0, n_patches - 1)


def build_library(paths: list[Path], labels: list[str]) -> Library:
    ver = analyses_version()
    rows = [load_analysis(p, ver) for p in paths]
    keep = [i for i, r in enumerate(rows) if r is not None]
    if len(keep) < len(rows):
        print(f"  {len(rows) - len(keep)} of {len(rows)} tracks not analysed yet: left out",
              file=sys.stderr)
    rows = [rows[i] for i in keep]
    out: dict[str, dict[str, list[np.ndarray]]] = {"mean": {}, "std": {}, "tags": {}}

    def add(plan: str, emb: np.ndarray, tags: np.ndarray) -> None:
        out["mean"].setdefault(plan, []).append(emb.mean(0))
        out["std"].setdefault(plan, []).append(emb.std(0))
        out["tags"].setdefault(plan, []).append(tags.mean(0))

    feats = []
    for r in rows:
        add("sampled 32", r["samp_emb"], r["samp_tags"])
        n = len(r["full_emb"])
        for seg in (16, 64):
            g = _grid(float(r["feats"][6]), n, seg)
            add(f"sampled {seg}", r["full_emb"][g], r["full_tags"][g])
        add("full track", r["full_emb"], r["full_tags"])
        f = r["feats"]  # tempo, energy, loudness, key, minor, key strength, duration
        ang = 2 * math.pi * ((int(f[3]) * 7) % 12) / 12 if f[3] >= 0 else 0.0  # circle of fifths
        feats.append([math.log2(max(float(f[0]), 1.0)), f[1], f[2], math.cos(ang) * f[5],
                      math.sin(ang) * f[5], f[4] * f[5]])
    stack = {k: {p: np.asarray(v, np.float64) for p, v in d.items()} for k, d in out.items()}
    return Library(np.asarray(labels)[keep], stack["mean"], stack["std"], stack["tags"],
                   np.asarray(feats, np.float64))


# ---- geometry and scores (a few lines of numpy; the index's own is on branch geom2) ----


def unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def transform(x: np.ndarray, geom: str) -> np.ndarray:
    """raw | centre | whiten-P-S (centre, then principal direction i scaled by
    (var_i + S * mean var) ** (-P / 2))."""
    x = unit(x)
    if geom == "raw":
        return x
    c = x - x.mean(0)
    if geom == "centre":
        return unit(c)
    _, p, s = geom.split("-")
    var, vecs = np.linalg.eigh(c.T @ c / len(c))
    var = np.clip(var, 0, None)
    scale = (var + float(s) * max(var.mean(), 1e-12)) ** (-float(p) / 2)
    return unit(c @ (vecs * scale) @ vecs.T)


def _zscore_unit(x: np.ndarray) -> np.ndarray:
    sd = x.std(0)
    return unit((x - x.mean(0)) / np.where(sd > 0, sd, 1.0))


def logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(q / (1 - q))


@dataclass(frozen=True)
class Config:
    patches: str = "sampled 32"
    geom: str = "raw"
    w_std: float = 0.0
    w_tags: float = 0.0
    w_feats: float = 0.0
    hub: str = "none"  # none | csls | mp

    def label(self) -> str:
        parts = [self.patches, self.geom]
        if self.w_std:
            parts.append(f"std×{self.w_std:g}")
        if self.w_tags:
            parts.append(f"tags×{self.w_tags:g}")
        if self.w_feats:
            parts.append(f"features×{self.w_feats:g}")
        if self.hub != "none":
            parts.append({"csls": "CSLS k=10", "mp": "mutual proximity"}[self.hub])
        return ", ".join(parts)


def vectors(lib: Library, c: Config) -> np.ndarray:
    parts = [transform(lib.mean[c.patches], c.geom)]
    if c.w_std:
        parts.append(c.w_std * transform(lib.std[c.patches], "centre"))
    if c.w_tags:
        parts.append(c.w_tags * transform(logit(lib.tags[c.patches]), "centre"))
    if c.w_feats:
        parts.append(c.w_feats * _zscore_unit(lib.feats))
    return np.concatenate(parts, axis=1)


def scores(lib: Library, c: Config) -> np.ndarray:
    v = vectors(lib, c)
    s = v @ v.T
    if c.hub == "csls":  # 2 cos - r(x) - r(y), r = mean cosine to the 10 nearest
        t = s.copy()
        np.fill_diagonal(t, -np.inf)
        r = np.sort(t, axis=1)[:, -10:].mean(1)
        s = 2 * s - r[:, None] - r[None, :]
    elif c.hub == "mp":  # mutual proximity, Gaussian and independent
        from scipy.special import ndtr

        t = s.copy()
        np.fill_diagonal(t, np.nan)
        mu, sd = np.nanmean(t, 1), np.nanstd(t, 1)
        s = ndtr((s - mu[:, None]) / sd[:, None]) * ndtr((s - mu[None, :]) / sd[None, :])
    return s


def ranks(s: np.ndarray, k: int) -> np.ndarray:
    t = s.copy()
    np.fill_diagonal(t, -np.inf)
    return np.argsort(-t, axis=1, kind="stable")[:, :k]


def per_query(nn: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    return (labels[nn[:, :k]] == labels[:, None]).mean(1)


def hubness(nn: np.ndarray, k: int) -> tuple[float, float]:
    counts = np.bincount(nn[:, :k].ravel(), minlength=len(nn)).astype(np.float64)
    sd = counts.std()
    skew = float(np.mean((counts - counts.mean()) ** 3) / sd**3) if sd > 0 else 0.0
    return skew, float(np.mean(counts == 0))


def measure(lib: Library, c: Config, k: int, queries: np.ndarray | None = None) -> dict[str, float]:
    nn = ranks(scores(lib, c), 10)
    pq = per_query(nn, lib.labels, k)
    s5, n5 = hubness(nn, 5)
    s10, n10 = hubness(nn, 10)
    return {"p": float(pq.mean() if queries is None else pq[queries].mean()),
            "skew5": s5, "never5": n5, "skew10": s10, "never10": n10}


# ---- what is compared -----------------------------------------------------------------

DEFAULT = Config()
FULL = Config(patches="full track")


def rows() -> dict[str, Config]:
    """Each lever alone on musegate's default, then on the centred default."""
    out = {
        "musegate default (32 sampled patches, raw cosine)": DEFAULT,
        "full-track musicnn, raw (AudioMuse-AI)": FULL,
        "full-track musicnn, centred": replace(FULL, geom="centre"),
    }
    for base_name, base in (("", DEFAULT), ("centred + ", replace(DEFAULT, geom="centre"))):
        if base_name:
            out["centred"] = base
        for g in ("whiten-0.5-1", "whiten-1-0.1", "whiten-1-1"):
            if base_name:
                out[f"whitened p={g.split('-')[1]} shrink={g.split('-')[2]}"] = replace(base, geom=g)
        for w in (0.5, 1.0):
            out[f"{base_name}mean+std pooling, std×{w:g}"] = replace(base, w_std=w)
        for w in (0.25, 0.5):
            out[f"{base_name}tag logits ×{w:g}"] = replace(base, w_tags=w)
        for w in (0.1, 0.25):
            out[f"{base_name}tempo/key/energy/loudness ×{w:g}"] = replace(base, w_feats=w)
        out[f"{base_name}CSLS k=10"] = replace(base, hub="csls")
        out[f"{base_name}mutual proximity"] = replace(base, hub="mp")
        for p in ("sampled 16", "sampled 64", "full track"):
            out[f"{base_name}{p} patches"] = replace(base, patches=p)
    return out


def grid() -> list[Config]:
    """The space LOSO chooses in (simplest first, so ties go to the simpler one)."""
    return [Config(p, g, ws, wt, wf, h) for p, g, ws, wt, wf, h in itertools.product(
        ("sampled 32", "full track"), ("raw", "centre", "whiten-0.5-1"),
        (0.0, 0.5), (0.0, 0.25), (0.0, 0.1), ("none", "csls"))]


def loso(lib: Library, k: int) -> tuple[float, dict[str, int], dict[str, float], dict[str, float]]:
    """LOSO over grid(): mean of the left-out soundtracks' precision, how often each
    configuration was chosen, and per left-out soundtrack the chosen one's and the
    default's precision."""
    cands = grid()
    pq = np.stack([per_query(ranks(scores(lib, c), k), lib.labels, k) for c in cands])
    base = per_query(ranks(scores(lib, DEFAULT), k), lib.labels, k)
    picks: dict[str, int] = {}
    got: dict[str, float] = {}
    was: dict[str, float] = {}
    for lab in np.unique(lib.labels):
        inside = lib.labels == lab
        best = int(np.argmax(pq[:, ~inside].mean(1)))  # first maximum: the simplest
        picks[cands[best].label()] = picks.get(cands[best].label(), 0) + 1
        got[str(lab)] = float(pq[best, inside].mean())
        was[str(lab)] = float(base[inside].mean())
    return float(np.mean(list(got.values()))), picks, got, was


def choose(lib: Library, k: int) -> tuple[Config, float]:
    """The grid's best configuration on the whole of ``lib`` (what --final scores)."""
    cands = grid()
    p = [per_query(ranks(scores(lib, c), k), lib.labels, k).mean() for c in cands]
    best = int(np.argmax(p))
    return cands[best], float(p[best])


# ---- run -----------------------------------------------------------------------------


def _fmt(m: dict[str, float]) -> str:
    return (f"{m['p']:.3f} | {m['skew5']:.2f} | {m['never5']:.1%} | {m['skew10']:.2f} | "
            f"{m['never10']:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--final", action="store_true",
                        help="also score the soundtracks kept aside (do this once)")
    parser.add_argument("--again", action="store_true", help="allow a second --final run")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    started = time.monotonic()
    held = read_heldout(heldout_dir())
    marker = heldout_dir() / "final-scored.txt"
    if args.final and marker.exists() and not args.again:
        print(f"the final split was already scored ({marker}):\n{marker.read_text()}"
              "pass --again to score it a second time (and say so where you report it)")
        return 2
    tune = build_library([p for p, _, s in held if s == "tuning"],
                         [lab for _, lab, s in held if s == "tuning"])
    dev_rows = read_manifest(corpus_dir())
    dev = build_library([p for p, _ in dev_rows], [lab for _, lab in dev_rows])
    sets = {"held-out tuning": (tune, 5), "dev corpus": (dev, 10)}
    sets = {n: v for n, v in sets.items() if len(v[0].labels)}
    table = {name: {s: measure(lib, c, k) for s, (lib, k) in sets.items()}
             for name, c in rows().items()}
    print(f"rows measured ({time.monotonic() - started:.0f} s)", flush=True)
    size = {s: (len(lib.labels), len(set(lib.labels.tolist()))) for s, (lib, _) in sets.items()}
    head = "| configuration | " + " | ".join(
        f"{s}: p@{k} | skew@5 | never top 5 | skew@10 | never top 10" for s, (_, k) in sets.items())
    lines = [head + " |", "| --- |" + " ---: |" * 5 * len(sets)]
    for name, per in table.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(per[s]) for s in sets) + " |")
    full_p = table["full-track musicnn, raw (AudioMuse-AI)"]["held-out tuning"]["p"]
    lo_p, picks, got, was = loso(tune, 5)
    loso_lines = [
        f"- LOSO precision@5 over {size['held-out tuning'][1]} tuning soundtracks, choosing among "
        f"{len(grid())} configurations: **{lo_p:.3f}** (same-run full-track musicnn {full_p:.3f}: "
        f"{lo_p / full_p - 1:+.1%}; default {table[next(iter(table))]['held-out tuning']['p']:.3f})",
        "- chosen: " + "; ".join(f"{c} ×{n}" for c, n in sorted(picks.items(), key=lambda x: -x[1])),
        "- per left-out soundtrack (chosen / default): " + ", ".join(
            f"{lab} {got[lab]:.2f}/{was[lab]:.2f}" for lab in got),
    ]
    checked = []
    for p in [p for p, _, _ in held] + [p for p, _ in dev_rows]:
        r = load_analysis(p)
        if r is not None and "pipeline_mean" in r:
            a, b = r["pipeline_mean"], r["samp_emb"].mean(0)
            checked.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    if checked:
        loso_lines.append(f"- check: on {len(checked)} tracks the analyzer's own pipeline "
                          "(analyse_file) and the sampled rows of the full-track batch give "
                          f"embeddings with cosine ≥ {min(checked):.5f}")
    best, best_p = choose(tune, 5)
    loso_lines.append(f"- best on the whole tuning split (in-sample, optimistic): {best.label()} "
                      f"{best_p:.3f}")
    final_lines: list[str] = []
    if args.final:
        allp = [p for p, _, _ in held]
        lib = build_library(allp, [lab for _, lab, _ in held])
        split = np.array([s for _, _, s in held])[[i for i, p in enumerate(allp)
                                                    if load_analysis(p) is not None]]
        q = split == "final"
        nf = int(q.sum())
        final_lines = [
            f"Final split, scored once ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC): "
            f"{nf} query tracks from {len(set(lib.labels[q].tolist()))} kept-aside soundtracks, "
            f"searched in the whole held-out library ({len(lib.labels)} tracks, "
            f"{len(set(lib.labels.tolist()))} soundtracks); configuration fixed on the tuning "
            f"split: **{best.label()}**.",
            "",
            "| configuration | final queries: p@5 | all held-out queries: p@5 | skew@5 | "
            "never top 5 | skew@10 | never top 10 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, c in (("musegate default", DEFAULT), ("full-track musicnn, raw", FULL),
                        ("chosen: " + best.label(), best)):
            mf = measure(lib, c, 5, q)
            ma = measure(lib, c, 5)
            final_lines.append(f"| {name} | {mf['p']:.3f} | " + _fmt(ma) + " |")
        marker.write_text(f"{datetime.now(UTC).isoformat()} {best.label()}\n")
        (marker.parent / "final-scored.md").write_text("\n".join(final_lines) + "\n")
    elif (marker.parent / "final-scored.md").exists():
        # a later run without --final keeps the one final figure in the docs
        final_lines = (marker.parent / "final-scored.md").read_text().splitlines()
    total = time.monotonic() - started
    print("\n".join(lines + [""] + loso_lines + [""] + final_lines))
    print(f"total {total:.0f} s")
    if args.no_write:
        return 0
    section = "\n".join([
        f"{MARKER} (`bench/heldout.py`, issue 11 target 6)",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (2-core VM, 24 GiB, shared with "
        "other jobs); command: `nice -n 10 .venv/bin/python bench/heldout_analyses.py && "
        f".venv/bin/python bench/heldout.py{' --final' if args.final else ''}` "
        f"(scoring {total:.0f} s; the analyses are cached per track).",
        "",
        "Sets: " + "; ".join(f"{s}: {n} tracks from {c} soundtracks" for s, (n, c) in size.items())
        + ". The held-out soundtracks are Debian game-music packages the dev corpus does not use "
        "(`bench/heldout_corpus.py`), 6 tracks each, split into tuning and final by a fixed "
        "rule before anything was measured. Geometry (centring, whitening) is fitted on the "
        "library searched, without labels. p@k: share of a track's k nearest from its own "
        "soundtrack (held-out k=5 is every other track of it). Skew / never: k-occurrence "
        "skewness and share of tracks in nobody's top k (hubness).",
        "",
        *lines,
        "",
        "Leave-one-soundtrack-out on the tuning split (each soundtrack scored with the "
        "configuration that did best on the others' queries):",
        "",
        *loso_lines,
        "",
        *final_lines,
    ])
    write_section(REPO / "docs" / "benchmarks.md", MARKER, section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
