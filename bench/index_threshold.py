"""Where the exact index stops being fast enough: flat vs HNSW by library size.

Run: ``.venv/bin/python bench/index_threshold.py`` (``--sizes 10000,20000,...``).

The threshold between the exact ``IndexFlatIP`` and the HNSW graph was set at
100k when 5 ms per query looked fine; the target is ≤1 ms per single query at
recall@10 ≥ 0.99. For each size this builds both kinds on the same clustered
synthetic vectors (``bench/index.py``'s generator, so figures compare with its
tables), then times single queries through ``SimilarityIndex.search`` exactly
as the server calls it, flat first (the baseline of the same run). The
smallest size where HNSW wins at recall ≥ 0.99 is where the default belongs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402

from index.faiss_index import DEFAULT_HNSW_THRESHOLD, SimilarityIndex  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_index", REPO / "bench" / "index.py")
assert _spec and _spec.loader
bench_index = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_index)

K = bench_index.K
MARKER = "## Index type by library size"


def measure(index: SimilarityIndex, queries: np.ndarray, truth: np.ndarray, ids: np.ndarray
            ) -> tuple[float, float]:
    """p50 ms of single queries and recall@10 against the exact answer."""
    for q in queries[:20]:
        index.search(q, K)
    times, hits = [], []
    for q, t in zip(queries, truth, strict=True):
        started = time.perf_counter()
        _, got = index.search(q, K)
        times.append(time.perf_counter() - started)
        hits.append(len(set(got[0].tolist()) & set(ids[t].tolist())) / K)
    return float(np.median(times) * 1000), float(np.mean(hits))


def case(n: int, n_queries: int) -> dict[str, float | int]:
    data, _ = bench_index.clustered(n + n_queries, bench_index.SEED + n, bench_index.clusters_for(n))
    base, queries = data[:n], np.ascontiguousarray(data[n:])
    truth = bench_index.exact_topk(base, queries, K)
    ids = np.arange(n, dtype=np.int64)
    flat = SimilarityIndex.build(ids, base, hnsw_threshold=n + 1)
    flat_ms, flat_recall = measure(flat, queries, truth, ids)
    del flat
    started = time.perf_counter()
    hnsw = SimilarityIndex.build(ids, base, hnsw_threshold=1)
    build = time.perf_counter() - started
    hnsw_ms, hnsw_recall = measure(hnsw, queries, truth, ids)
    return {"n": n, "flat_ms": flat_ms, "flat_recall": flat_recall, "hnsw_ms": hnsw_ms,
            "hnsw_recall": hnsw_recall, "hnsw_build": build,
            "hnsw_bytes": hnsw.memory_bytes() / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5000,10000,20000,50000,100000")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = [case(int(n), args.queries) for n in args.sizes.split(",")]
    lines = [
        MARKER, "",
        f"{date.today().isoformat()}, {machine()}; command: `.venv/bin/python bench/index_threshold.py`. "
        f"Single queries through `SimilarityIndex.search` as the server makes them (one FAISS "
        f"thread per single query), {args.queries} queries per size on `bench/index.py`'s "
        f"clustered synthetic vectors; the exact flat index is the same-run baseline. "
        f"Default threshold now: {DEFAULT_HNSW_THRESHOLD:,} tracks.", "",
        "| tracks | flat p50 ms | HNSW p50 ms | HNSW / flat | HNSW recall@10 | HNSW build s | "
        "HNSW bytes per track |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['flat_ms']:.3f} | {r['hnsw_ms']:.3f} | "
            f"{r['hnsw_ms'] / r['flat_ms']:.2f}× | {r['hnsw_recall']:.3f} | "
            f"{r['hnsw_build']:.1f} | {r['hnsw_bytes']:.0f} |")
    section = "\n".join(lines) + "\n"
    print(section, flush=True)
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", MARKER, section)


if __name__ == "__main__":
    main()
