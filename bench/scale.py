"""Scale-out and scale-up: analysis throughput on Dask vs the local pool, and a 1M-track library.

    flock /tmp/musegate-bench.lock .venv/bin/python bench/scale.py throughput [--tracks 24]
    flock /tmp/musegate-bench.lock .venv/bin/python bench/scale.py million [--tracks 1000000]

``throughput`` analyses the first N tracks of the dev corpus (real music) four
ways, each from cold processes as a first run would: the local pool with 1 and
2 processes, and a real ``dask scheduler`` with 1 and 2 ``dask worker``
processes (one thread each) on loopback. Ratios are against the local pool with
2 processes measured in the same run, so the load of other jobs on the machine
mostly cancels out.

``million`` needs no audio: synthetic clustered 200-d vectors for N tracks in a
real store. It measures the index the branch builds at that size (kind chosen
by ``hnsw_threshold``): build time, memory, single-query latency and recall
against exact search; and the store side: writing the library, an unchanged
rescan (the nightly case), the change check a server polls, the writer's start
(CSLS radii computed), restart (radii loaded from their file) and incremental
reload, and a replica's start and incremental reload.

Both print their section and write it to docs/benchmarks.md (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import REPO, corpus_dir, machine, read_manifest, write_section  # noqa: E402

from adapters.folder import FolderAdapter  # noqa: E402
from analysis.store import LibraryStore, TrackRecord  # noqa: E402
from musegate import library  # noqa: E402
from musegate.config import load_config  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
THROUGHPUT_MARKER = "## Scale-out: analysis on Dask workers"
MILLION_MARKER = "## Scale-up: a 1M-track library"
MACHINE = "2-core VM, 24 GiB, shared with other jobs"


# ---- throughput ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dask(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("dask")), *args]


@contextlib.contextmanager
def dask_cluster(workers: int, tmp: Path) -> Iterator[str]:
    """A scheduler and ``workers`` one-thread workers on loopback, as separate programs."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen(
        _dask("scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        for w in range(workers):
            procs.append(subprocess.Popen(
                _dask("worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                      "--host", "127.0.0.1", "--memory-limit", "0",
                      "--local-directory", str(tmp / f"w{w}")),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=120)
        yield address
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait()


async def _analyse(music: Path, data: Path, **settings: object) -> tuple[float, int, int]:
    config = load_config(None, env={}, overrides={"data_dir": str(data), **settings})
    async with await LibraryStore.open(config.db_path) as store:
        await library.scan(store, FolderAdapter(music))
        started = time.perf_counter()
        report = await library.analyse(store, config)
        return time.perf_counter() - started, report.analysed, report.failed


def throughput(n: int) -> str:
    tracks = [p for p, _ in read_manifest(corpus_dir())][:n]
    rows: list[tuple[str, float, int, int]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        music = tmp / "music"
        music.mkdir()
        for i, src in enumerate(tracks):
            (music / f"{i:03d}{src.suffix}").symlink_to(src)
        cases: list[tuple[str, dict[str, object], int]] = [
            ("local pool, 2 processes (baseline)", {"workers": 2}, 0),
            ("local pool, 1 process", {"workers": 1}, 0),
            ("Dask, 1 worker", {}, 1),
            ("Dask, 2 workers", {}, 2),
        ]
        for k, (label, settings, dask_workers) in enumerate(cases):
            data = tmp / f"data{k}"
            if dask_workers:
                with dask_cluster(dask_workers, tmp / f"dask{k}") as address:
                    seconds, ok, bad = asyncio.run(_analyse(
                        music, data, scheduler_address=address, workers=dask_workers))
            else:
                seconds, ok, bad = asyncio.run(_analyse(music, data, **settings))
            rows.append((label, seconds, ok, bad))
            print(f"{label}: {seconds:.1f} s, {ok} analysed, {bad} failed", flush=True)
    base = rows[0][1]
    table = "\n".join(
        f"| {label} | {seconds:.1f} | {ok / seconds:.2f} | {base / seconds:.2f}× | {bad} |"
        for label, seconds, ok, bad in rows
    )
    return f"""{THROUGHPUT_MARKER}

{datetime.now(UTC):%Y-%m-%d}, {MACHINE} ({machine()}).
Command: `flock /tmp/musegate-bench.lock .venv/bin/python bench/scale.py throughput --tracks {n}`

The first {n} tracks of the dev corpus (real music, 2–5 minutes each), sampled
analysis, every case from cold processes (a first run: worker start, model load
and JIT warm-up included; the Dask scheduler and workers were already running
and connected, as they are on lent machines). Speed-up is the baseline's time
divided by the case's, measured in the same run.

| executor | wall s | tracks/s | speed-up vs baseline | failed |
| --- | --- | --- | --- | --- |
{table}

On one 2-core machine Dask cannot beat the local pool: both use the same two
cores, and Dask adds a scheduler, a worker event loop and a network hop per
task. What it buys is machines: each extra worker host adds its own cores (see
docs/scale.md).
"""


# ---- a million tracks -------------------------------------------------------------------


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clustered_vectors(n: int, seed: int = 0, clusters: int = 2000) -> np.ndarray:
    """Unit vectors around ``clusters`` centres: a library of many styles, like real music."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, 200)).astype(np.float32)
    out = np.empty((n, 200), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        m = centres[rng.integers(0, clusters, stop - start)]
        m += rng.standard_normal(m.shape).astype(np.float32) * 0.6
        out[start:stop] = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out


def _latency(index: object, queries: np.ndarray, k: int,
             threads: int | None = None) -> tuple[float, float, np.ndarray]:
    """p50 and p95 ms of single queries; ``threads`` sets FAISS's OpenMP threads meanwhile."""
    import faiss

    before = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        return _timed(index, queries, k)
    finally:
        faiss.omp_set_num_threads(before)


def _timed(index: object, queries: np.ndarray, k: int) -> tuple[float, float, np.ndarray]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, ids = index.search(q, k)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
        found.append(ids[0])
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95)), np.array(found)


def _records(n: int) -> list[TrackRecord]:
    return [TrackRecord(source="bench", upstream_id=f"id{i}", path=f"/music/{i}.flac",
                        size=1000 + i, mtime=1.0, title=f"title {i}", artist=f"artist {i % 5000}",
                        album=f"album {i % 50000}", duration=200.0, raw={"id": f"id{i}"})
            for i in range(n)]


async def _store_side(n: int, vectors: np.ndarray, tmp: Path) -> dict[str, Any]:
    from analysis.types import TrackAnalysis
    from musegate.services import LibraryService

    config = load_config(None, env={}, overrides={"data_dir": str(tmp)})
    version = library.analyzer_settings(config).version
    out: dict[str, Any] = {}
    records = _records(n)
    tags = np.full(50, 0.05, np.float32)
    async with await LibraryStore.open(config.db_path) as store:
        t = time.perf_counter()
        await store.sync_source("bench", records)
        ids = np.array(sorted(r.id for r in (await store.tracks_of_source("bench")).values()))
        for start in range(0, n, 50_000):
            await store.write_results([
                (int(ids[i]), TrackAnalysis(embedding=vectors[i], tags=tags, tempo=120.0, key="A",
                                            scale="minor", key_strength=0.5, energy=0.5,
                                            loudness=-12.0, duration=200.0, patches=32,
                                            version=version))
                for i in range(start, min(n, start + 50_000))])
        out["write"] = time.perf_counter() - t
        t = time.perf_counter()
        await store.sync_source("bench", records)
        out["rescan"] = time.perf_counter() - t
        t = time.perf_counter()
        await store.signature(version)
        out["signature_ms"] = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        await store.data_version()
        out["data_version_ms"] = (time.perf_counter() - t) * 1000
    del records
    gc.collect()
    # The server's and a replica's load: every analysis into the catalogue, the index from
    # the file the writer saved; the CSLS radii computed at the first start (what every
    # start did before they were saved) and loaded from their file after that.
    def changed(track: int, tempo: float) -> list[tuple[int, TrackAnalysis]]:
        return [(track, TrackAnalysis(
            embedding=vectors[track % n], tags=tags, tempo=tempo, key="A", scale="minor",
            key_strength=0.5, energy=0.5, loudness=-12.0, duration=200.0, patches=32,
            version=version))]

    async with await LibraryStore.open(config.db_path) as store:
        service = LibraryService(store, config)
        rss = _rss_mib()
        t = time.perf_counter()
        await service.refresh(force=True)
        out["first_load"] = time.perf_counter() - t
        out["service_mib"] = _rss_mib() - rss
        assert service.snapshot.index_status == "loaded", service.snapshot.index_status
        print(f"  writer start: {out['first_load']:.0f} s, radii {service.snapshot.radius_status}",
              flush=True)
        del service
        gc.collect()
    async with await LibraryStore.open(config.db_path) as store:
        service = LibraryService(store, config)
        t = time.perf_counter()
        await service.refresh(force=True)
        out["restart"] = time.perf_counter() - t
        assert service.snapshot.radius_status == "loaded", service.snapshot.radius_status
        print(f"  writer restart: {out['restart']:.0f} s, radii loaded", flush=True)
        await store.write_results(changed(int(ids[0]), 121.0))
        t = time.perf_counter()
        assert await service.refresh()
        out["writer_reload"] = time.perf_counter() - t
        out["writer_reload_status"] = (f"{service.snapshot.index_status}; radii "
                                       f"{service.snapshot.radius_status}")
        print(f"  writer reload: {out['writer_reload']:.1f} s, {out['writer_reload_status']}",
              flush=True)
        del service
        gc.collect()
    async with await LibraryStore.open(config.db_path, read_only=True) as store:
        replica = LibraryService(store, config.replace(role="replica"))
        t = time.perf_counter()
        await replica.refresh(force=True)
        out["replica_start"] = time.perf_counter() - t
        assert replica.snapshot.index_status == "loaded", replica.snapshot.index_status
        assert replica.snapshot.radius_status == "loaded", replica.snapshot.radius_status
        t = time.perf_counter()
        moved = await replica.refresh()
        out["idle_poll_ms"] = (time.perf_counter() - t) * 1000
        assert not moved
        async with await LibraryStore.open(config.db_path) as writer:
            await writer.write_results(changed(int(ids[1]), 122.0))
        t = time.perf_counter()
        moved = await replica.refresh()
        out["replica_reload"] = time.perf_counter() - t
        assert moved
        out["replica_reload_status"] = (f"{replica.snapshot.index_status}; radii "
                                        f"{replica.snapshot.radius_status}")
        print(f"  replica reload: {out['replica_reload']:.1f} s, {out['replica_reload_status']}",
              flush=True)
    return out


def million(n: int) -> str:
    from index.faiss_index import DEFAULT_HNSW_THRESHOLD, SimilarityIndex, hnsw_params
    from index.geometry import fit_geometry

    t = time.perf_counter()
    vectors = clustered_vectors(n)  # the raw embeddings the store holds
    # what the index holds: the vectors in the geometry the server fits on the same
    # embeddings (index.geometry), so the file saved below is the one it loads
    searched = fit_geometry(vectors).apply(vectors)
    gen = time.perf_counter() - t
    ids = np.arange(1, n + 1, dtype=np.int64)
    rng = np.random.default_rng(1)
    queries = searched[rng.choice(n, 200, replace=False)]
    print(f"{n:,} vectors in {gen:.1f} s", flush=True)

    rss = _rss_mib()
    t = time.perf_counter()
    exact = SimilarityIndex.build(ids, searched, hnsw_threshold=n + 1)
    flat_build = time.perf_counter() - t
    flat_mib = _rss_mib() - rss
    flat_p50, flat_p95, truth = _latency(exact, queries, 20)
    flat_one, flat_one95, _ = _latency(exact, queries, 20, threads=1)
    print(f"flat: build {flat_build:.1f} s, p50 {flat_p50:.1f} ms", flush=True)
    del exact
    gc.collect()

    rss = _rss_mib()
    t = time.perf_counter()
    index = SimilarityIndex.build(ids, searched)  # the kind the branch picks at this size
    build = time.perf_counter() - t
    mib = _rss_mib() - rss
    p50, p95, found = _latency(index, queries, 20)
    one, one95, _ = _latency(index, queries, 20, threads=1)
    recall = float(np.mean([len(set(a) & set(b)) / 20 for a, b in zip(found, truth, strict=True)]))
    kind, estimate = index.kind, index.memory_bytes() / 2**20
    print(f"{kind}: build {build:.1f} s, p50 {p50:.2f} ms, recall@20 {recall:.3f}", flush=True)

    with tempfile.TemporaryDirectory() as tmpdir:
        # Saved where the server looks for it: the store gives the same ids (1..n in order).
        t = time.perf_counter()
        index.save(Path(tmpdir) / "musegate.index")
        save = time.perf_counter() - t
        del index, searched
        gc.collect()
        store = asyncio.run(_store_side(n, vectors, Path(tmpdir)))
        db_mib = (Path(tmpdir) / "musegate.db").stat().st_size / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    hnsw = hnsw_params(n)
    return f"""{MILLION_MARKER}

{datetime.now(UTC):%Y-%m-%d}, {MACHINE} ({machine()}).
Command: `flock /tmp/musegate-bench.lock .venv/bin/python bench/scale.py million --tracks {n}`

{n:,} synthetic tracks: unit 200-d vectors around 2,000 cluster centres (no
audio), in a real store with neutral features; the index holds them in the
centred geometry the server fits on them (`geometry = centred`). Measured with the index code
on this branch (`index/faiss_index.py`: HNSW M={hnsw.m}, efConstruction {hnsw.ef_construction},
efSearch {hnsw.ef_search} at this size, above `hnsw_threshold` = {DEFAULT_HNSW_THRESHOLD:,}); single-query
latency over 200 queries, k = 20, first with FAISS's default OpenMP threads (one
per core: what the server does today), then with one thread. The exact index is
the same-run baseline for recall and speed.

| index | build s | memory MiB (RSS growth) | query p50 / p95 ms, default threads | query p50 / p95 ms, 1 thread | recall@20 |
| --- | --- | --- | --- | --- | --- |
| exact (IndexFlatIP), baseline | {flat_build:.1f} | {flat_mib:.0f} | {flat_p50:.1f} / {flat_p95:.1f} | {flat_one:.1f} / {flat_one95:.1f} | 1.000 |
| {kind} (what the branch builds at this size) | {build:.1f} | {mib:.0f} (estimate {estimate:.0f}) | {p50:.2f} / {p95:.2f} | {one:.2f} / {one95:.2f} | {recall:.3f} |

Query speed-up of {kind} over exact at the median: {flat_p50 / p50:.0f}× with default
threads, {flat_one / one:.0f}× with one thread. On this shared 2-core machine,
OpenMP's threads for a single query mostly wait for each other and for the other
jobs: one thread per single query is faster here.

| store at {n:,} tracks | figure |
| --- | --- |
| write the library (scan + analyses, 50k per transaction) | {store['write']:.0f} s; database {db_mib:.0f} MiB |
| unchanged rescan (`sync_source`, the nightly case) | {store['rescan']:.1f} s ({store['rescan'] / store['write']:.2f}× the first write) |
| change check the writer polls (`signature`: the store's change number) | {store['signature_ms']:.0f} ms |
| change check a replica polls (`PRAGMA data_version`) | {store['data_version_ms']:.2f} ms; idle refresh {store['idle_poll_ms']:.2f} ms |
| index file: save | {save:.1f} s |
| writer start, CSLS radii computed (every analysis into the catalogue, index loaded from its file; what every start cost before the radii were saved) | {store['first_load']:.0f} s, +{store['service_mib']:.0f} MiB RSS |
| writer restart (catalogue; index and CSLS radii loaded from their files) | {store['restart']:.0f} s ({store['restart'] / store['first_load']:.2f}× the start above) |
| writer reload after one changed analysis (incremental; index and radii files saved) | {store['writer_reload']:.1f} s — {store['writer_reload_status']} |
| replica start (catalogue; index and radii loaded from the writer's files) | {store['replica_start']:.0f} s |
| replica reload after the writer changed one analysis (incremental) | {store['replica_reload']:.1f} s — {store['replica_reload_status']} |

Peak RSS of the whole bench process: {peak:,.0f} MiB (it holds {n:,} vectors,
{n * 200 * 4 / 2**20:.0f} MiB, throughout; RSS growth figures are against that).
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("throughput", "million"))
    parser.add_argument("--tracks", type=int, default=None)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.part == "throughput":
        section, marker = throughput(args.tracks or 24), THROUGHPUT_MARKER
    else:
        section, marker = million(args.tracks or 1_000_000), MILLION_MARKER
    print(section)
    if not args.no_write:
        write_section(DOC, marker, section)
        print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
