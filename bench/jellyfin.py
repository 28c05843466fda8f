"""Jellyfin gateway: InstantMix through musegate versus the server's own mix, and pass-through cost.

    make bench                 # or: .venv/bin/python bench/jellyfin.py [--no-write] [--quick]

Jellyfin cannot be installed here, so the upstream is the test suite's fake
Jellyfin (tests/fakes/jellyfin.py) in its own process, holding a generated
library (2,000 songs, 100 artists, 200 albums, 20 genres; one 200 MB song for
the stream). musegate runs in front of it in another process (``source =
"jellyfin"``, run as ``musegate serve`` runs it, access log included) with a
synthetic analysis for every song (one embedding cluster per artist), so the
index is full and every mix is answered by musegate; nginx (one worker,
``proxy_buffering off``) in front of the same fake is the pass-through baseline.
Measured, in the same run:

1. ``GET /Items/{id}/InstantMix?limit=200`` for a song seed through musegate
   (FAISS neighbours + one ``/Items?Ids=`` call as the caller) versus the
   fake's native mix asked directly (random songs sharing a genre), p50/p99;
   album and genre seeds through musegate as well;
2. pass-through latency of ``GET /System/Ping`` and ``GET /Items`` (50 songs),
   direct / musegate / nginx;
3. throughput of a 200 MB ``/Audio/{id}/stream``, direct / musegate / nginx.

``--passthrough`` measures only 2 (ping) and 3 and prints them.

The fake is Python, so its own answers are slower than Jellyfin's would be;
the comparison that holds is what musegate adds on top of the same upstream.
Results are printed and written to docs/benchmarks.md (--no-write to skip).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import (  # noqa: E402
    free_port,
    gateway_bench_main,
    latency_rounds,
    machine,
    passthrough_tables,
    run_musegate_served,
    run_nginx,
    run_variants,
    stop_process,
    stream_repeats,
    stream_rounds,
)

from analysis.store import LibraryStore, TrackRecord  # noqa: E402
from musegate.config import load_config  # noqa: E402
from musegate.library import analyzer_settings  # noqa: E402
from tests.store_factory import synthetic_analysis  # noqa: E402

SECTION = "## Jellyfin gateway"
SONGS, ARTISTS, ALBUMS_PER_ARTIST, GENRES = 2000, 100, 2, 20
BIG = 200 * 1024 * 1024

# The fake in its own process: builds the library, prints it as JSON, serves until killed.
_FAKE = """
import asyncio, json, sys
from tests.fakes.jellyfin import FakeJellyfin
SONGS, ARTISTS, ALBUMS, GENRES, BIG, PORT = (int(a) for a in sys.argv[1:7])

async def main():
    fake = FakeJellyfin()
    fake.port = PORT
    fake.add_library("Music")
    songs = []
    for n in range(SONGS):
        artist = n % ARTISTS
        album = (n // ARTISTS) % ALBUMS
        genre = (artist * 7) % GENRES
        data = (b"\\x01" * BIG) if n == 0 else bytes(2048)
        sid = fake.add_song("Music", f"Song {n}", f"Artist {artist}", f"Album {artist}-{album}",
                            f"Genre {genre}", f"/media/{artist}/{album}/{n}.flac", 200.0, data)
        songs.append({"id": sid, "artist": f"Artist {artist}", "album": f"Album {artist}-{album}",
                      "genre": f"Genre {genre}"})
    _uid, token = fake.add_user("bench", "pw")
    key = fake.add_api_key("musegate")
    url = await fake.start()
    print(json.dumps({"url": url, "token": token, "key": key, "songs": songs}), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@contextlib.asynccontextmanager
async def run_fake(quick: bool) -> AsyncIterator[dict[str, Any]]:
    songs = 500 if quick else SONGS
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FAKE, str(songs), str(ARTISTS), str(ALBUMS_PER_ARTIST),
        str(GENRES), str(BIG), str(free_port()),
        stdout=asyncio.subprocess.PIPE, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
        limit=64 * 1024 * 1024,
    )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError("the fake Jellyfin did not start")
        yield json.loads(line)
    finally:
        await stop_process(proc)


async def seed_store(data_dir: Path, url: str, songs: list[dict[str, Any]]) -> None:
    """A synthetic analysis for every song: one embedding cluster per artist."""
    config = load_config(None, env={}, overrides={"data_dir": str(data_dir), "source": "jellyfin",
                                                  "upstream_url": url})
    version = analyzer_settings(config).version
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((ARTISTS, 200))
    source = f"jellyfin:{url}"
    store = await LibraryStore.open(config.db_path)
    try:
        await store.sync_source(source, [
            TrackRecord(source=source, upstream_id=s["id"], title=s["id"], artist=s["artist"],
                        album=s["album"], duration=200.0) for s in songs])
        known = await store.tracks_of_source(source)
        analyses = []
        for s in songs:
            c = int(s["artist"].split()[-1])
            emb = centres[c] + rng.standard_normal(200) * 0.3
            analyses.append((known[s["id"]].id or 0,
                             synthetic_analysis(emb, version, duration=200.0)))
        await store.write_results(analyses)
    finally:
        await store.close()


async def timed(call: Callable[[], Awaitable[Any]], n: int, warm: int = 5) -> tuple[float, float]:
    for _ in range(warm):
        await call()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.99 * len(samples)))]


async def run(quick: bool, passthrough_only: bool = False) -> dict[str, Any]:
    n = 30 if quick else 200
    r: dict[str, Any] = {"n": n, "repeats": stream_repeats(quick)}
    with tempfile.TemporaryDirectory() as tmp:
        async with run_fake(quick) as fake:
            songs = fake["songs"]
            r["songs"] = len(songs)
            if not passthrough_only:
                await seed_store(Path(tmp) / "data", fake["url"], songs)
            async with run_musegate_served(Path(tmp) / "data", fake["url"], {
                        "source": "jellyfin", "upstream_api_key": fake["key"]}) as gate, \
                    run_nginx(Path(tmp) / "nginx", fake["url"]) as nginx, \
                    (run_variants(Path(tmp) / "variants", fake["url"], {
                        "source": "jellyfin", "upstream_api_key": fake["key"]})
                     if passthrough_only else contextlib.nullcontext({})) as variants, \
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
                mg_url = gate.url
                logged = gate.access_lines()
                headers = {"Authorization": f'MediaBrowser Client="bench", Device="bench", '
                                            f'DeviceId="bench", Version="1", Token="{fake["token"]}"'}
                targets = {"direct": fake["url"], "musegate": mg_url}
                pids = {"musegate": gate.pid}
                if nginx:
                    targets["nginx"] = nginx.url
                    pids["nginx"] = nginx.pid
                for name, variant in variants.items():
                    targets[name] = variant.url
                    pids[name] = variant.pid
                r["targets"] = list(targets)
                r["ping"] = await latency_rounds(targets, "/System/Ping", max(n, 200) * 5,
                                                 headers=headers, pids=pids)
                print(f"ping: {r['ping']}", flush=True)
                r["stream"] = await stream_rounds(
                    targets, f"/Audio/{songs[0]['id']}/stream", r["repeats"],
                    params={"static": "true"}, headers=headers, pids=pids)
                print(f"stream: {r['stream']}", flush=True)
                r["access_lines"] = gate.access_lines() - logged
                if passthrough_only:
                    return r
                seeds = iter(s["id"] for s in songs[1:] * 10)
                counts: dict[str, list[int]] = {}

                async def get(base: str, path: str, label: str | None = None, **params: Any
                              ) -> None:
                    async with session.get(base + path, params=params, headers=headers) as resp:
                        body = await resp.read()
                        assert resp.status == 200, (resp.status, path, body[:200])
                    if label:
                        counts.setdefault(label, []).append(len(json.loads(body)["Items"]))

                async def mix(base: str, label: str) -> None:
                    await get(base, f"/Items/{next(seeds)}/InstantMix", label, limit=200)

                r["mix_musegate"] = await timed(lambda: mix(mg_url, "musegate"), n)
                r["mix_native"] = await timed(lambda: mix(fake["url"], "native"), n)
                async with session.get(fake["url"] + "/Items", headers=headers, params={
                        "IncludeItemTypes": "MusicAlbum", "Recursive": "true"}) as resp:
                    albums = [a["Id"] for a in (await resp.json())["Items"]]
                album_iter = iter(albums * 10)
                r["mix_album"] = await timed(lambda: get(
                    mg_url, f"/Albums/{next(album_iter)}/InstantMix", "album", limit=200), n // 2)
                genre_iter = iter([f"Genre {g}" for g in range(GENRES)] * 50)
                r["mix_genre"] = await timed(lambda: get(
                    mg_url, f"/MusicGenres/{next(genre_iter)}/InstantMix", "genre",
                    limit=200), n // 4)
                r["items_counts"] = {k: statistics.mean(v) for k, v in counts.items()}
                r["items"] = await latency_rounds(
                    targets, "/Items", n, headers=headers,
                    params={"IncludeItemTypes": "Audio", "Recursive": "true", "Limit": "50"},
                    warm=5)
    return r


def render_passthrough(r: dict[str, Any], command: str = "bench/jellyfin.py --passthrough"
                       ) -> str:
    """Ping latency and the 200 MB stream, direct / musegate / nginx (``--passthrough``)."""
    size_mb = round(r["stream"]["direct"]["bytes"] / 1024 / 1024)
    return "\n".join([
        f"Measured {date.today().isoformat()} on {machine()}, 2-core VM, 24 GiB, shared with "
        f"other jobs; command: `flock /tmp/musegate-bench.lock .venv/bin/python {command}`.",
        f"Upstream: the fake Jellyfin (aiohttp, its own process). musegate run as `musegate "
        f"serve` runs it (INFO log level, redacting access log: {r['access_lines']} lines "
        f"written). Latency: {max(r['n'], 200) * 5} sequential `GET /System/Ping` per target "
        "on one keep-alive connection after 20 warm-up ones, in 5 blocks taken in turn; "
        f"stream: {r['repeats']} downloads per target, taken in turn.", "",
        *passthrough_tables(r["ping"], r["stream"], size_mb, "`GET /System/Ping`",
                            "`/Audio/{id}/stream`"), ""])


def render(r: dict[str, Any]) -> str:
    def pp(key: Any) -> str:
        return f"{r[key][0]:.1f} / {r[key][1]:.1f}"

    c = r["items_counts"]
    size_mb = round(r["stream"]["direct"]["bytes"] / 1024 / 1024)
    lines = [
        f"{SECTION} (`make bench` → `bench/jellyfin.py`)",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; command: `make bench` "
        "(or `.venv/bin/python bench/jellyfin.py`).",
        "",
        f"Upstream: the test suite's fake Jellyfin (Python, its own process) with {r['songs']} "
        f"songs, every one analysed in musegate's store (synthetic embeddings). musegate in "
        f"its own process; {r['n']} sequential requests per row on one keep-alive connection, "
        "a new seed each time, after 5 warm-up requests; the caller's token check is cached "
        "after the first request, as in normal use.",
        "",
        "| request | p50 / p99 (ms) | songs per answer |",
        "| --- | ---: | ---: |",
        f"| InstantMix limit 200, song seed, musegate | {pp('mix_musegate')} | "
        f"{c.get('musegate', 0):.0f} |",
        f"| InstantMix limit 200, song seed, the fake's native mix (direct) | "
        f"{pp('mix_native')} | {c.get('native', 0):.0f} |",
        f"| InstantMix limit 200, album seed, musegate | {pp('mix_album')} | "
        f"{c.get('album', 0):.0f} |",
        f"| InstantMix limit 200, genre seed, musegate | {pp('mix_genre')} | "
        f"{c.get('genre', 0):.0f} |",
        "",
        "The native mix can only hold the songs of the seed's genre (100 per genre here), so it "
        "builds half as many BaseItemDtos. musegate's song mix is one FAISS query plus one "
        "`GET /Items?Ids=…` (200 ids) as the caller; most of its time is the upstream building "
        "those 200 DTOs. Album and genre seeds add two lookups (the seed item, its songs).",
        "",
        "Pass-through, direct / musegate / nginx in the same run:",
        "",
        *passthrough_tables(r["items"], r["stream"], size_mb, "`GET /Items` (50 songs)",
                            "`/Audio/{id}/stream`"),
        "",
        *passthrough_tables(r["ping"], r["stream"], size_mb, "`GET /System/Ping`",
                            "`/Audio/{id}/stream`")[:3],
        "",
        f"Ping: {max(r['n'], 200) * 5} requests per target, `/Items`: {r['n']}, in 5 blocks "
        f"taken in turn; stream: {r['repeats']} downloads per target, taken in turn. musegate "
        f"runs as `musegate serve` runs it (INFO log level, redacting access log).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    return gateway_bench_main(
        __doc__.split("\n", 1)[0], SECTION, run, render, quick_help="fewer songs and requests",
        passthrough=(lambda quick: run(quick, passthrough_only=True), render_passthrough),
    )


if __name__ == "__main__":
    sys.exit(main())
