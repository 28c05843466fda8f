"""Incremental reload right after a bulk import: the code before change numbers against this one.

    flock /tmp/musegate-bench.lock nice .venv/bin/python bench/reload.py [--tracks 100000]

Each case runs in its own process with its own tree on ``sys.path`` (``--before``,
default the commit before the store took change numbers, exported with ``git archive``;
then this tree), on its own store written the way a bulk import writes it: N synthetic
analyses (bench/scale.py's clustered vectors), 50k per transaction, right before the
server starts. Then, as bench/scale.py's ``million`` does: a writer starts (index and
CSLS radii loaded from files both cases share, so neither builds them), one analysis
changes, the writer reloads; a replica starts, the writer changes another analysis, the
replica reloads. Each reload reports how many rows it read from the store. The before
case is the baseline of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402
from radii import export  # noqa: E402

MARKER = "## Incremental reload after a bulk import (`bench/reload.py`): {n:,} tracks"
MACHINE = "2-core VM, 24 GiB, shared with other jobs"
BEFORE = "985845d"  # main as branch hnsw2 started: reloads re-read 60 s of writes
CACHE = Path.home() / ".cache" / "musegate" / "bench-reload"

# Run inside the tree under test (its code first on sys.path); prints one JSON line.
DRIVER = r'''
import asyncio, json, shutil, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])  # the tree under test, nothing else
import numpy as np
from analysis.store import LibraryStore, TrackRecord
from analysis.types import TrackAnalysis
from musegate import library
from musegate.config import load_config
from musegate.services import LibraryService

n, data, cache, prime = int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]), sys.argv[6] == "prime"

def clustered_vectors(n, seed=0, clusters=2000):  # bench/scale.py's library
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, 200)).astype(np.float32)
    out = np.empty((n, 200), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        m = centres[rng.integers(0, clusters, stop - start)]
        m += rng.standard_normal(m.shape).astype(np.float32) * 0.6
        out[start:stop] = m / np.linalg.norm(m, axis=1, keepdims=True)
    return out

def analysis(v, version, tempo=120.0):
    return TrackAnalysis(embedding=v, tags=np.full(50, 0.05, np.float32), tempo=tempo, key="A",
                         scale="minor", key_strength=0.5, energy=0.5, loudness=-12.0,
                         duration=200.0, patches=32, version=version)

def counting(store, read):
    original = store.analysed_chunks
    async def chunks(*args, **kwargs):
        async for chunk in original(*args, **kwargs):
            read[-1] += len(chunk)
            yield chunk
    store.analysed_chunks = chunks

async def main():
    config = load_config(None, env={}, overrides={"data_dir": str(data)})
    version = library.analyzer_settings(config).version
    vectors = clustered_vectors(n)
    out = {}
    records = [TrackRecord(source="bench", upstream_id=f"id{i}", path=f"/music/{i}.flac",
                           size=1000 + i, mtime=1.0, title=f"title {i}", artist=f"artist {i % 5000}",
                           album=f"album {i % 50000}", duration=200.0, raw={"id": f"id{i}"})
               for i in range(n)]
    async with await LibraryStore.open(config.db_path) as store:
        t = time.perf_counter()
        await store.sync_source("bench", records)
        ids = sorted(r.id for r in (await store.tracks_of_source("bench")).values())
        for start in range(0, n, 50_000):
            await store.write_results([(ids[i], analysis(vectors[i], version))
                                       for i in range(start, min(n, start + 50_000))])
        out["write"] = time.perf_counter() - t
    for name in ("musegate.index", "musegate.index.radii"):
        if (cache / name).exists():
            shutil.copyfile(cache / name, data / name)
    read = [0]
    async with await LibraryStore.open(config.db_path) as store:
        service = LibraryService(store, config)
        t = time.perf_counter()
        await service.refresh(force=True)
        out["start"] = time.perf_counter() - t
        out["start_status"] = f"index {service.snapshot.index_status}; radii {service.snapshot.radius_status}"
        for name in ("musegate.index", "musegate.index.radii"):
            if not (cache / name).exists():
                shutil.copyfile(data / name, cache / name)
        if prime:
            print(json.dumps(out))
            return
        counting(store, read)
        read.append(0)
        await store.write_results([(ids[0], analysis(vectors[7], version, 121.0))])  # a new vector
        t = time.perf_counter()
        assert await service.refresh()
        out["writer_reload"] = time.perf_counter() - t
        out["writer_read"] = read[-1]
        out["writer_status"] = f"{service.snapshot.index_status}; radii {service.snapshot.radius_status}"
        del service
    async with await LibraryStore.open(config.db_path, read_only=True) as store:
        replica = LibraryService(store, config.replace(role="replica"))
        await replica.refresh(force=True)
        counting(store, read)
        read.append(0)
        async with await LibraryStore.open(config.db_path) as writer:
            await writer.write_results([(ids[1], analysis(vectors[8], version, 122.0))])
        t = time.perf_counter()
        assert await replica.refresh()
        out["replica_reload"] = time.perf_counter() - t
        out["replica_read"] = read[-1]
        out["replica_status"] = f"{replica.snapshot.index_status}; radii {replica.snapshot.radius_status}"
    import analysis.store as m; out["code"] = m.__file__
    print(json.dumps(out))

asyncio.run(main())
'''


def run_case(tree: Path, n: int, tmp: Path, name: str) -> dict[str, object]:
    """One case in its own process; "prime" only writes, starts and keeps the files."""
    data = tmp / f"data-{name}"
    data.mkdir()
    cache = CACHE / str(n)
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tree), "", str(n), str(data), str(cache), name],
        cwd=tree, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)})
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{name} failed")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name}: {got}", flush=True)
    shutil.rmtree(data)
    return got


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    n = args.tracks
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        old = export(args.before, tmp / "before")
        if not (CACHE / str(n) / "musegate.index.radii").exists():
            run_case(old, n, tmp, "prime")  # builds the index and radii both cases load
        before = run_case(old, n, tmp, "before")
        after = run_case(REPO, n, tmp, "after")
    rows = [
        ("write the library (scan + analyses, 50k per transaction)", "write", None),
        ("writer start (index and radii loaded from files)", "start", "start_status"),
        ("writer reload after one changed analysis", "writer_reload", "writer_status"),
        ("replica reload after the writer changed one analysis", "replica_reload",
         "replica_status"),
    ]
    lines = ["| step | before s | this code s | × before | rows read before / now |",
             "| --- | ---: | ---: | ---: | --- |"]
    for label, key, _status in rows:
        read_key = key.replace("_reload", "_read")
        read = (f"{before[read_key]:,} / {after[read_key]:,}" if read_key != key else "")
        lines.append(f"| {label} | {before[key]:.1f} | {after[key]:.1f} | "
                     f"{after[key] / before[key]:.2f}× | {read} |")
    states = "\n".join(f"- {name}: start {case['start_status']}; writer reload "
                       f"{case['writer_status']}; replica reload {case['replica_status']}"
                       for name, case in (("before", before), ("this code", after)))
    section = f"""{MARKER.format(n=n)}

{datetime.now(UTC):%Y-%m-%d}, {MACHINE} ({machine()}).
Command: `flock /tmp/musegate-bench.lock nice .venv/bin/python bench/reload.py --tracks {n}`

{n:,} synthetic analyses written in bulk just before the server starts (the case after
an import, where the 60 s re-read margin of the code before covered most of the
store); "before" is commit {args.before} (reloads read every row committed within 60 s
of the newest one they had seen), "this code" reads the rows numbered past the store's
change number it had seen. Same run, before first; each case in its own process on
its own store.

{chr(10).join(lines)}

{states}
"""
    print(section)
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", MARKER.format(n=n), section)
        print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
