"""What one Subsonic call costs supysonic, by kind: why asking by album does not speed up a cold answer.

    .venv/bin/python bench/supysonic_call_costs.py [--rounds 2]

supysonic from PyPI with the library bench/gateway_similar.py uses (20 artists ×
2 albums × 2 songs), then, one call at a time and 8 in flight: 25 ``ping`` (the
cost of authenticating a call), 50 ``getSong`` and 25 ``getAlbum`` (the same 50
songs' Children, two per call). Prints milliseconds per batch and the ratio of
the album batch to the song batch in the same round (load from other jobs
cancels out). Prints only; the figures are quoted in docs/benchmarks.md's
"Exact Subsonic similarity answers".
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.supysonic_server import Supysonic, generate_library  # noqa: E402

AUTH = {"u": "alice", "p": "alicepw", "v": "1.12.0", "c": "bench", "f": "json"}


async def batch(s: aiohttp.ClientSession, url: str, endpoint: str, ids: list[str],
                in_flight: int) -> float:
    """Milliseconds for ``endpoint`` of every id, ``in_flight`` at a time."""
    sem = asyncio.Semaphore(in_flight)

    async def one(item: str) -> Any:
        async with sem, s.get(f"{url}/rest/{endpoint}.view", params={**AUTH, "id": item}) as r:
            body = (await r.json())["subsonic-response"]
            assert body["status"] == "ok", body

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in ids))
    return (time.perf_counter() - t0) * 1000


async def run(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="musegate-bench-calls-") as tmp:
        work = Path(tmp)
        music = generate_library(work / "music", artists=20, albums=2, tracks=2, seconds=1.0)
        async with Supysonic.start(work, music, users={"alice": AUTH["p"]}) as server, \
                aiohttp.ClientSession() as s:
            async with s.get(f"{server.url}/rest/search3.view",
                             params={**AUTH, "query": "", "songCount": "500"}) as r:
                songs = (await r.json())["subsonic-response"]["searchResult3"]["song"]
            albums = sorted({song["albumId"] for song in songs})[:25]
            wanted = [song["id"] for song in songs if song["albumId"] in albums]
            print(f"{len(wanted)} songs in {len(albums)} albums")
            for rnd in range(rounds):
                for in_flight in (1, 8):
                    ping = await batch(s, server.url, "ping", ["-"] * len(albums), in_flight)
                    song = await batch(s, server.url, "getSong", wanted, in_flight)
                    album = await batch(s, server.url, "getAlbum", albums, in_flight)
                    print(f"round {rnd} in flight {in_flight}: {len(albums)} ping {ping:.0f} ms, "
                          f"{len(wanted)} getSong {song:.0f} ms, {len(albums)} getAlbum "
                          f"{album:.0f} ms; getAlbum/getSong {album / song:.2f}×", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args().rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
