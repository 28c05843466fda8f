"""Library store cost at 100k tracks: first scan, unchanged rescan, status.

    .venv/bin/python bench/store.py [--tracks N]

A rescan of an unchanged library is the nightly common case; its baseline in the
same run is the first scan of the same records (which must write every row).
Prints only; no section in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.store import LibraryStore, TrackRecord  # noqa: E402


def records(n: int) -> list[TrackRecord]:
    return [
        TrackRecord(source="bench", upstream_id=f"id{i}", path=f"/music/{i}.flac", size=1000 + i,
                    mtime=1.0, title=f"title {i}", artist=f"artist {i % 500}",
                    album=f"album {i % 5000}", raw={"id": f"id{i}", "n": i})
        for i in range(n)
    ]


async def main(n: int) -> None:
    recs = records(n)
    with tempfile.TemporaryDirectory() as tmp:
        async with await LibraryStore.open(Path(tmp) / "bench.db") as store:
            t = time.perf_counter()
            await store.sync_source("bench", recs)
            first = time.perf_counter() - t
            t = time.perf_counter()
            await store.sync_source("bench", recs)
            rescan = time.perf_counter() - t
            t = time.perf_counter()
            await store.status("none", 3)
            status = time.perf_counter() - t
    print(f"{n:,} tracks: first scan {first:.2f} s, unchanged rescan {rescan:.2f} s "
          f"({rescan / first:.2f}× the first scan), status {status * 1000:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().tracks))
