"""Patch plans under the shipped centred + CSLS k=20 ranking, tuning split only.

    .venv/bin/python bench/heldout_patches.py [--no-write]

bench/heldout.py measured more patches (16, 64, the whole track) with plain cosine and
with centring, where they did not help; bench/heldout_combos.py combined many levers
with CSLS but never the patch plan. This bench does: every plan below is read off the
cached full-track grid of bench/heldout_analyses.py (a sampled patch *is* the full
analysis's patch there, analysis/sampling.py), pooled by the mean as the store does,
centred (index.geometry) and ranked by CSLS with the shipped k. The plan is chosen
leave-one-soundtrack-out (LOSO: each tuning soundtrack is scored with the plan best on
the other 15), with the shipped 32-patch plan first so that ties keep it; then the plan
and CSLS's k (10 … 30) chosen together, in case more patches want another neighbourhood.

Plans: evenly spread single patches (12 … 96), the whole track, the same with the first
and last 5 % or 10 % of the track left out (intros, fade-outs, silence), and two or three
adjacent patches per excerpt. Each plan's analysis cost is its mean patches per track
times the per-patch cost of the sampled mode in docs/benchmarks.md "Analysis speed"
(0.368 s per track for 30.8 patches: decode, mel, network and features together); the
model alone is 4.1 ms per patch ("Model speed"), so this slightly overstates plans with
fewer, longer excerpts (less seeking) and understates nothing.

The final split of bench/heldout.py is never read.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import corpus_dir, machine, read_manifest, write_section  # noqa: E402
from heldout import unit  # noqa: E402
from heldout_analyses import load as load_analysis  # noqa: E402
from heldout_analyses import version as analyses_version  # noqa: E402
from heldout_combos import Tracks, joined  # noqa: E402
from heldout_corpus import out_dir as heldout_dir  # noqa: E402
from heldout_corpus import read_heldout  # noqa: E402
from heldout_levers import csls, loso, measure, paired  # noqa: E402

from analysis.sampling import PATCH_SECONDS, SamplingPlan, excerpt_spans  # noqa: E402
from index.hubness import K as SHIPPED_K  # noqa: E402

MARKER = "## Held-out quality: patch plans under CSLS"
#: docs/benchmarks.md "Analysis speed": sampled mode 0.368 s per track per core, 30.8 patches.
SECONDS_PER_PATCH = 0.368 / 30.8
SHIPPED_PLAN = "s32x1 (shipped)"
#: CSLS neighbourhoods tried with every plan (more patches could shift the best k).
KS = (10, 15, 20, 25, 30)


def plans() -> dict[str, SamplingPlan | None]:
    """Name -> plan (None: the whole track); the shipped plan first, so LOSO ties keep it."""
    out: dict[str, SamplingPlan | None] = {SHIPPED_PLAN: SamplingPlan()}
    for seg in (12, 16, 24, 40, 48, 64, 96):
        out[f"s{seg}x1"] = SamplingPlan(segments=seg)
    out["full track"] = None
    for skip in (0.05, 0.1):
        for seg in (32, 48, 64):
            out[f"s{seg}x1, skip {skip:.0%} each end"] = SamplingPlan(segments=seg, skip_edges=skip)
        out[f"full track, skip {skip:.0%} each end"] = SamplingPlan(
            mode="trim", segments=0, skip_edges=skip)
    for seg, pps in ((16, 2), (24, 2), (32, 2), (16, 3)):
        out[f"s{seg}x{pps}"] = SamplingPlan(segments=seg, patches_per_segment=pps)
    return out


#: The shipped plan with every excerpt moved by this many grid patches: same cost, other
#: patches. Not a plan anyone would ship; it shows how much of a plan's p@5 is which
#: patches it happened to land on.
SHIFTS = (-2, -1, 1, 2)


def plan_rows(plan: SamplingPlan | None, duration: float, n: int) -> np.ndarray:
    """Rows of the full-track patch grid that ``plan`` analyses (as the analyzer would)."""
    if plan is None:
        return np.arange(n)
    if plan.mode == "trim":  # every patch inside the kept part
        first = int(np.ceil(duration * plan.skip_edges / PATCH_SECONDS))
        last = int(np.floor(duration * (1 - plan.skip_edges) / PATCH_SECONDS)) - 1
        rows = np.arange(max(first, 0), min(last, n - 1) + 1)
        return rows if len(rows) else np.arange(n)
    spans = excerpt_spans(duration, plan)
    if spans is None:
        return np.arange(n)
    starts = np.array([round(s / PATCH_SECONDS) for s, _ in spans])
    rows = (starts[:, None] + np.arange(plan.patches_per_segment)[None, :]).ravel()
    return np.clip(rows, 0, n - 1)


def load_plans(paths: list[Path], labels: list[str]) -> tuple[dict[str, Tracks], dict[str, float]]:
    """Per plan the tracks as the store would hold them, and the mean patches per track."""
    ver = analyses_version()
    rs = [load_analysis(p, ver) for p in paths]
    keep = [i for i, r in enumerate(rs) if r is not None]
    rs = [rs[i] for i in keep]
    labs = np.asarray(labels)[keep]
    out, count = {}, {}
    todo: list[tuple[str, SamplingPlan | None, int]] = [(n, p, 0) for n, p in plans().items()]
    todo += [(f"s32x1 moved {d:+d} on the grid", SamplingPlan(), d) for d in SHIFTS]
    for name, plan, shift in todo:
        emb, std, tags, n = [], [], [], []
        for r in rs:
            rows = plan_rows(plan, float(r["feats"][6]), len(r["full_emb"]))
            if name == SHIPPED_PLAN:  # what the analyzer itself sampled
                assert np.array_equal(rows, r["samp_grid"]), "plan grid differs from the analyzer's"
            if shift and len(rows) < len(r["full_emb"]):
                rows = np.clip(rows + shift, 0, len(r["full_emb"]) - 1)
            emb.append(r["full_emb"][rows].mean(0))
            std.append(r["full_emb"][rows].std(0))
            tags.append(r["full_tags"][rows].mean(0))
            n.append(len(rows))
        a = lambda x: np.asarray(x, np.float64)  # noqa: E731
        full = a([r["full_emb"].mean(0) for r in rs])
        out[name] = Tracks(labs, a(emb), a(std), a(tags), np.zeros((len(rs), 6)), full)
        count[name] = float(np.mean(n))
    return out, count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    started = time.monotonic()
    held = read_heldout(heldout_dir())
    tune, tn = load_plans([p for p, _, s in held if s == "tuning"],
                          [lab for _, lab, s in held if s == "tuning"])
    rows = read_manifest(corpus_dir())
    dev, dn = load_plans([p for p, _ in rows], [lab for _, lab in rows])
    names = list(tune)
    t0 = tune[SHIPPED_PLAN]
    labels, nt = t0.labels, len(t0.labels)
    full_s = unit(t0.full) @ unit(t0.full).T
    full_pq, _ = measure(full_s, labels, 5)
    full_p = float(full_pq.mean())
    mixed0 = joined(t0, dev[SHIPPED_PLAN])
    full_pm = float(measure(unit(mixed0.full) @ unit(mixed0.full).T, mixed0.labels, 5)[0][:nt].mean())
    _, dfull = measure(unit(dev[SHIPPED_PLAN].full) @ unit(dev[SHIPPED_PLAN].full).T,
                       dev[SHIPPED_PLAN].labels, 10)
    lines = [
        "| patch plan | patches per track (tuning / dev) | analysis s per track (vs shipped) | "
        "centred: tuning p@5 | centred + CSLS: tuning p@5 | vs full-track | skew@5 | "
        "never top 5 | tuning in tuning+dev p@5 | dev p@10 | dev skew@10 | dev never top 10 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| full-track musicnn, raw (AudioMuse-AI reference) | {tn['full track']:.1f} / "
        f"{dn['full track']:.1f} | – | – | {full_p:.3f} | +0.0% | – | – | {full_pm:.3f} | "
        f"{dfull['p']:.3f} | {dfull['skew10']:.2f} | {dfull['never10']:.1%} |",
    ]
    pqs, pqm, dev_p = [], [], {}
    cost0 = (tn[SHIPPED_PLAN] + dn[SHIPPED_PLAN]) / 2
    for name in names:
        t, d = tune[name], dev[name]
        pc, _ = measure(t.cos, labels, 5)
        pq, m = measure(csls(t.cos, SHIPPED_K), labels, 5)
        _, dm = measure(csls(d.cos, SHIPPED_K), d.labels, 10)
        mx = joined(t, d)
        mq = measure(csls(mx.cos, SHIPPED_K), mx.labels, 5)[0][:nt]
        pqs.append(pq)
        pqm.append(mq)
        dev_p[name] = dm["p"]
        per = (tn[name] + dn[name]) / 2
        lines.append(
            f"| {name} | {tn[name]:.1f} / {dn[name]:.1f} | {per * SECONDS_PER_PATCH:.2f} "
            f"({per / cost0:.2f}×) | {pc.mean():.3f} | {m['p']:.3f} | {m['p'] / full_p - 1:+.1%} | "
            f"{m['skew5']:.2f} | {m['never5']:.1%} | {mq.mean():.3f} | {dm['p']:.3f} | "
            f"{dm['skew10']:.2f} | {dm['never10']:.1%} |")
        print(lines[-1], flush=True)
    summary = []
    plain = [n for n in names if "moved" not in n]
    families = {
        "every plan": plain,
        "plans at most the shipped cost (≤ 32 patches)": [
            n for n in plain if tn[n] <= tn[SHIPPED_PLAN] + 0.5],
        "plans with more patches than shipped": [SHIPPED_PLAN] + [
            n for n in plain if tn[n] > tn[SHIPPED_PLAN] + 0.5],
    }
    for fam, members in families.items():
        idx = [names.index(n) for n in members]
        lo, picks, got = loso(np.stack([pqs[i] for i in idx]), labels)
        lom, _, _ = loso(np.stack([pqm[i] for i in idx]), labels)
        summary.append(
            f"- {fam} ({len(members)} plans): LOSO p@5 **{lo:.3f}** ({lo / full_p - 1:+.1%} over "
            f"full-track {full_p:.3f}; {paired(got, full_pq, labels)}); tuning+dev library "
            f"{lom:.3f} ({lom / full_pm - 1:+.1%} over {full_pm:.3f}); chosen: " + "; ".join(
                f"{members[i]} ×{c}" for i, c in sorted(picks.items(), key=lambda x: -x[1])))
        print(summary[-1], flush=True)
    # the plan and CSLS's k chosen together (the shipped pair first)
    pairs, pair_pq = [], []
    for k in (SHIPPED_K, *[k for k in KS if k != SHIPPED_K]):
        for name in plain:
            pairs.append(f"{name}, k={k}")
            pair_pq.append(pqs[names.index(name)] if k == SHIPPED_K
                           else measure(csls(tune[name].cos, k), labels, 5)[0])
    lo, picks, got = loso(np.stack(pair_pq), labels)
    summary.append(
        f"- every plan × CSLS k ∈ {{{', '.join(map(str, KS))}}} ({len(pairs)} pairs): LOSO p@5 "
        f"**{lo:.3f}** ({lo / full_p - 1:+.1%}; {paired(got, full_pq, labels)}); chosen: "
        + "; ".join(f"{pairs[i]} ×{c}" for i, c in sorted(picks.items(), key=lambda x: -x[1]))
        + f"; best pair in-sample {pairs[int(np.argmax([p.mean() for p in pair_pq]))]} "
        f"{max(p.mean() for p in pair_pq):.3f}")
    print(summary[-1], flush=True)
    shifted = [pqs[names.index(n)].mean() for n in names if "moved" in n]
    summary.append(f"- the shipped plan moved by {', '.join(f'{d:+d}' for d in SHIFTS)} grid "
                   f"patches (same cost, other patches): p@5 {min(shifted):.3f} … {max(shifted):.3f} "
                   f"against {pqs[0].mean():.3f} unmoved")
    print(summary[-1])
    best = int(np.argmax([pqs[names.index(n)].mean() for n in plain]))
    best = names.index(plain[best])
    summary.append(f"- best plan in-sample (optimistic): {names[best]} {pqs[best].mean():.3f}, "
                   f"dev p@10 {dev_p[names[best]]:.3f}")
    print(summary[-1])
    total = time.monotonic() - started
    print(f"total {total:.0f} s")
    if args.no_write:
        return 0
    section = "\n".join([
        MARKER + " (`bench/heldout_patches.py`, issue 11 target 6)",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (2-core VM, 24 GiB, shared with "
        f"other jobs); command: `.venv/bin/python bench/heldout_patches.py` ({total:.0f} s, "
        "analyses cached by `bench/heldout_analyses.py`; every plan is read off the cached "
        "full-track patch grid, no re-analysis). Tuning split only (96 tracks, 16 soundtracks, "
        "p@5) and the dev corpus (92 tracks, p@10, plain top 10); the final split is not read. "
        "Every plan is mean-pooled, centred on the set (index.geometry, no labels) and ranked "
        f"by CSLS k={SHIPPED_K} as shipped; the \"centred\" column is without CSLS. Analysis "
        "cost: patches per track (mean of tuning and dev) × "
        f"{SECONDS_PER_PATCH * 1000:.1f} ms, the sampled mode's cost per patch in \"Analysis "
        "speed\" (0.368 s / 30.8 patches per track, one core). \"skip 5 % each end\": the "
        "excerpts are spread over the track without its first and last 5 %; \"sNx2\": N "
        "excerpts of two adjacent patches.",
        "",
        *lines,
        "",
        "Leave-one-soundtrack-out (the plan chosen on the other 15 soundtracks; the shipped "
        "plan first, so ties keep it):",
        "",
        *summary,
    ])
    write_section(REPO / "docs" / "benchmarks.md", MARKER, section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
