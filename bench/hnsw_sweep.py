"""HNSW efSearch by library size: the smallest setting that keeps recall@10 and @20 ≥ 0.99.

    flock /tmp/musegate-bench.lock nice .venv/bin/python bench/hnsw_sweep.py --tracks 1000000
    flock /tmp/musegate-bench.lock nice .venv/bin/python bench/hnsw_sweep.py --tracks 100000

The library is ``bench/scale.py``'s (unit 200-d vectors around 2,000 centres) in
the centred geometry the server fits on it, so the graph is the one a 1M-track
server searches. Building that graph takes minutes, so it is built once per
(size, M, efConstruction) and kept in ``~/.cache/musegate/bench-hnsw/``; every
efSearch is then a search-time parameter on the same graph. Queries are library
tracks (what a seed is), asked one at a time through ``SimilarityIndex.search``
as the server asks them (one FAISS thread per single query). The exact scan of
the same vectors is the same-run baseline for recall and speed, and the efSearch
the code shipped before (96) is the baseline row of the sweep.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import REPO, machine, write_section  # noqa: E402
from scale import clustered_vectors  # noqa: E402

from index.faiss_index import SimilarityIndex, hnsw_params  # noqa: E402
from index.geometry import fit_geometry  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
MARKER = "## HNSW efSearch by library size (`bench/hnsw_sweep.py`): {n:,} tracks"
MACHINE = "2-core VM, 24 GiB, shared with other jobs"
CACHE = Path.home() / ".cache" / "musegate" / "bench-hnsw"
BEFORE_EF = 96  # what every size searched with before efSearch followed the size
TARGET = 0.99


def _library(n: int) -> tuple[np.ndarray, np.ndarray]:
    raw = clustered_vectors(n)
    return np.arange(1, n + 1, dtype=np.int64), fit_geometry(raw).apply(raw)


def _graph(n: int, m: int, efc: int, ids: np.ndarray, vectors: np.ndarray) -> SimilarityIndex:
    path = CACHE / f"centred-{n}-M{m}-efc{efc}.index"
    index = SimilarityIndex.load(path, ids)
    if index is not None and index.kind == "hnsw":
        print(f"graph loaded from {path}", flush=True)
        return index
    started = time.perf_counter()
    index = SimilarityIndex.build(ids, vectors, hnsw_threshold=0, hnsw_m=m, ef_construction=efc)
    print(f"graph built in {time.perf_counter() - started:.0f} s, saved to {path}", flush=True)
    index.save(path)
    return index


def _truth(exact: SimilarityIndex, queries: np.ndarray, k: int) -> np.ndarray:
    return exact.search(queries, k)[1]  # a batch: every core, exact


def _single(index: SimilarityIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ms per query, ids found) asking one query at a time, as a request does."""
    for q in queries[:20]:
        index.search(q, k)
    times, found = [], []
    for q in queries:
        started = time.perf_counter()
        _, got = index.search(q, k)
        times.append(time.perf_counter() - started)
        found.append(got[0])
    return np.array(times) * 1000, np.array(found)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k
                          for a, b in zip(found, truth, strict=True)]))


def sweep(n: int, m: int, efc: int, efs: list[int], n_queries: int, seed: int = 7) -> str:
    ids, vectors = _library(n)
    rng = np.random.default_rng(seed)
    queries = np.ascontiguousarray(vectors[rng.choice(n, n_queries, replace=False)])
    exact = SimilarityIndex.build(ids, vectors, hnsw_threshold=n + 1)
    truth10, truth20 = _truth(exact, queries, 10), _truth(exact, queries, 20)
    flat_ms, _ = _single(exact, queries[:100], 20)
    flat_p50 = float(np.percentile(flat_ms, 50))
    print(f"exact: p50 {flat_p50:.2f} ms (100 queries)", flush=True)
    del exact
    graph = _graph(n, m, efc, ids, vectors)
    del vectors
    chosen = hnsw_params(n)
    rows = []
    for ef in sorted(set(efs) | {BEFORE_EF, chosen.ef_search}):
        graph.ef_search = ef
        ms10, got10 = _single(graph, queries, 10)
        ms20, got20 = _single(graph, queries, 20)
        r10, r20 = _recall(got10, truth10), _recall(got20, truth20)
        row = (ef, r10, r20, float(np.percentile(ms10, 50)), float(np.percentile(ms20, 50)),
               float(np.percentile(ms20, 95)))
        rows.append(row)
        print(f"efSearch {ef}: recall@10 {r10:.4f} @20 {r20:.4f}, p50 {row[3]:.3f} / "
              f"{row[4]:.3f} ms, p95@20 {row[5]:.3f} ms", flush=True)
    base = next(r for r in rows if r[0] == BEFORE_EF)
    ok = [r for r in rows if r[1] >= TARGET and r[2] >= TARGET]
    smallest = f"{ok[0][0]}" if ok else "none in the sweep"

    def label(ef: int) -> str:
        marks = [w for w, hit in ((" (before)", ef == BEFORE_EF),
                                  (" (default now)", ef == chosen.ef_search)) if hit]
        return f"{ef}{''.join(marks)}"

    table = "\n".join(
        f"| {label(ef)} | {r10:.4f} | {r20:.4f} | {p10:.3f} | {p20:.3f} | {p95:.3f} | "
        f"{p20 / base[4]:.2f}× | {flat_p50 / p20:.0f}× |"
        for ef, r10, r20, p10, p20, p95 in rows)
    return f"""{MARKER.format(n=n)}

{datetime.now(UTC):%Y-%m-%d}, {MACHINE} ({machine()}).
Command: `flock /tmp/musegate-bench.lock nice .venv/bin/python bench/hnsw_sweep.py --tracks {n}`

{n:,} synthetic tracks (`bench/scale.py`'s clustered vectors) in the centred geometry
the server searches; one HNSW graph (M={m}, efConstruction={efc}), built once and
cached, searched with each efSearch; {n_queries} library tracks (seed {seed}) as single queries
through `SimilarityIndex.search` (one FAISS thread), recall against the exact scan of
the same vectors. Exact scan in the same run: {flat_p50:.2f} ms p50 (k = 20, 100 queries).
Smallest efSearch with recall@10 and recall@20 ≥ {TARGET}: {smallest}; the code's
default at this size (`index.faiss_index.hnsw_params`): M={chosen.m},
efConstruction={chosen.ef_construction}, efSearch={chosen.ef_search}.

| efSearch | recall@10 | recall@20 | p50 ms k=10 | p50 ms k=20 | p95 ms k=20 | p50 × efSearch 96 | speed-up over exact |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{table}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=1_000_000)
    parser.add_argument("--m", type=int, default=None, help="default: the code's for the size")
    parser.add_argument("--ef-construction", type=int, default=None)
    parser.add_argument("--ef", default="64,96,128,160,192,256,320,384,512")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7, help="which library tracks ask")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    params = hnsw_params(args.tracks)
    section = sweep(args.tracks, args.m or params.m, args.ef_construction or params.ef_construction,
                    [int(x) for x in args.ef.split(",")], args.queries, args.seed)
    print(section)
    if not args.no_write:
        write_section(DOC, MARKER.format(n=args.tracks), section)
        print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
