"""A new Subsonic caller's first exact answer, with the background warm on and off, one run.

    flock /tmp/musegate-bench.lock .venv/bin/python bench/gateway_first_answer.py \\
        [--write] [--quick] [--rounds N] [--concurrency N] [--large-only]

supysonic from PyPI with a generated library of 80 songs (20 artists × 2 albums
× 2 songs), every song in musegate's store with a synthetic analysis (as
bench/gateway_similar.py), and two musegates in front of it, started together:
the default (``subsonic_warm_songs = 200``), one with the warm off
(``subsonic_warm_songs = 0``: what a new caller got before) and one warming by search3
pages. Each round takes one caller never seen before (users created in supysonic for
the bench) per row, rows interleaved and rotating so that load drifting on the shared
machine hits every row alike:

* warm off: the caller logs in (``ping`` through musegate), then asks
  ``getSimilarSongs2`` (count 50): one ``getSong`` per returned song;
* warm on, right after login: the same, the warm still running meanwhile;
* warm on, once warm finished: login, wait until musegate's metrics say the warm
  ended (``musegate_subsonic_warm_running`` 0, one more run), then the same request;
* the last two again on a third musegate warming by ``search3`` pages
  (``subsonic_warm_pages = true``), after one unmeasured caller let it learn that
  supysonic's search3 entries equal its getSong answers.

Timed: the first getSimilarSongs2 only (the login is not). Also reported: how long
each warm took and how many songs it stored (musegate's own counters). Ratios are
p50 against the warm-off row of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402

from musegate.config import load_config  # noqa: E402
from tests.upstream_stub import run_musegate  # noqa: E402

SECTION = "## First answer of a new Subsonic caller"
# Settings of the warm-on musegates (--concurrency sets subsonic_warm_concurrency).
ON: dict[str, Any] = {}
PASSWORD = "benchpw"


@contextlib.asynccontextmanager
async def upstream(work: Path, users: int, artists: int = 20, albums: int = 2,
                   tracks: int = 2, seconds: float = 1.0) -> AsyncIterator[Any]:
    from tests.supysonic_server import Supysonic, generate_library

    music = generate_library(work / "music", artists=artists, albums=albums, tracks=tracks,
                             seconds=seconds)
    names = {"alice": "alicepw", **{f"new{i:03d}": PASSWORD for i in range(users)}}
    async with Supysonic.start(work, music, users=names) as server:
        yield server


async def seed_store(data_dir: Path, url: str) -> list[str]:
    """As bench/gateway.py's seed_store: every song listed by the adapter, analysed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_gateway", HERE / "gateway.py")
    assert spec is not None and spec.loader is not None
    bench_gateway = importlib.util.module_from_spec(spec)
    sys.modules["bench_gateway"] = bench_gateway
    spec.loader.exec_module(bench_gateway)
    up = bench_gateway.Upstream("supysonic", url, "", "", "",
                                {"u": "alice", "p": "alicepw", "v": "1.12.0", "c": "bench"})
    return await bench_gateway.seed_store(data_dir, up)


async def metric(s: aiohttp.ClientSession, gate: str) -> dict[str, float]:
    async with s.get(f"{gate}/musegate/metrics") as r:
        text = await r.text()
    out: dict[str, float] = {}
    for name, value in re.findall(r"^(musegate_subsonic_warm_\w+(?:\{[^}]*\})?) (\S+)$", text,
                                  re.MULTILINE):
        out[name] = float(value)
    return out


def runs(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("musegate_subsonic_warm_runs_total"))


async def first_answer(s: aiohttp.ClientSession, gate: str, user: str, seed: str,
                       wait_warm: bool) -> dict[str, float]:
    """Login as a new caller, optionally wait for the warm, then time the first answer."""
    auth = {"u": user, "p": PASSWORD, "v": "1.16.1", "c": "bench", "f": "json"}
    before = await metric(s, gate) if wait_warm else {}
    async with s.get(f"{gate}/rest/ping.view", params=auth) as r:
        assert (await r.json())["subsonic-response"]["status"] == "ok"
    warm: dict[str, float] = {}
    if wait_warm:
        while True:  # the bench may poll: nothing here is asserted on time
            now = await metric(s, gate)
            if runs(now) > runs(before) and now.get("musegate_subsonic_warm_running") == 0:
                break
            await asyncio.sleep(0.02)
        warm = {"seconds": now["musegate_subsonic_warm_seconds_total"]
                - before.get("musegate_subsonic_warm_seconds_total", 0.0),
                "songs": now["musegate_subsonic_warm_songs_total"]
                - before.get("musegate_subsonic_warm_songs_total", 0.0)}
    t0 = time.perf_counter()
    async with s.get(f"{gate}/rest/getSimilarSongs2.view",
                     params={**auth, "id": seed, "count": "50"}) as r:
        body = (await r.json())["subsonic-response"]
    elapsed = time.perf_counter() - t0
    assert body["status"] == "ok", body
    return {"ms": elapsed * 1000, "songs": len(body["similarSongs2"]["song"]),
            **{f"warm_{k}": v for k, v in warm.items()}}


ROWS = ("off", "login", "warmed", "pages_login", "pages_warmed")


async def run(rounds: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in ROWS}
    with tempfile.TemporaryDirectory(prefix="musegate-bench-first-") as tmp:
        work = Path(tmp)
        async with upstream(work / "upstream", len(ROWS) * rounds + 1) as server:
            seeds = await seed_store(work / "musegate", server.url)
            rng = np.random.default_rng(0)
            # Three musegates on copies of the same store, running side by side.
            import shutil
            for copy in ("musegate-off", "musegate-pages"):
                shutil.copytree(work / "musegate", work / copy)
            async with run_musegate(work / "musegate", server.url, source="subsonic",
                                 overrides=ON) as on, \
                    run_musegate(work / "musegate-off", server.url, source="subsonic",
                                 overrides={"subsonic_warm_songs": 0}) as off, \
                    run_musegate(work / "musegate-pages", server.url, source="subsonic",
                                 overrides={**ON, "subsonic_warm_pages": True}) as pages, \
                    aiohttp.ClientSession() as s:
                user = iter(f"new{i:03d}" for i in range(len(ROWS) * rounds + 1))
                # One caller first, unmeasured: the pages musegate learns that supysonic's
                # search3 entries equal its getSong answers (20 compared), as a running one has.
                await first_answer(s, pages.url, next(user), seeds[0], True)
                gates = {"off": (off.url, False), "login": (on.url, False),
                         "warmed": (on.url, True), "pages_login": (pages.url, False),
                         "pages_warmed": (pages.url, True)}
                for i in range(rounds):
                    seed = seeds[int(rng.integers(len(seeds)))]
                    order = list(ROWS[i % len(ROWS):] + ROWS[:i % len(ROWS)])
                    for key in order:
                        gate, wait = gates[key]
                        rows[key].append(await first_answer(s, gate, next(user), seed, wait))
                        # let a warm still running end before the next caller is timed
                        while (await metric(s, gate)).get("musegate_subsonic_warm_running",
                                                           0) != 0:
                            await asyncio.sleep(0.02)
                    print(f"  round {i + 1}/{rounds}: " + ", ".join(
                        f"{k} {v[-1]['ms']:.1f} ms" for k, v in rows.items()), flush=True)
    return {"rows": rows, "rounds": rounds, "songs": len(seeds)}


LARGE_ROWS = ("off", "played", "other")


async def play(s: aiohttp.ClientSession, server_url: str, user: str, song: str) -> None:
    """The caller plays a song (straight at the server, as in an earlier session)."""
    params = {"u": user, "p": PASSWORD, "v": "1.12.0", "c": "bench", "id": song,
              "format": "raw"}
    async with s.get(f"{server_url}/rest/stream.view", params=params) as r:
        await r.read()
        assert r.status == 200, r.status


async def run_large(rounds: int) -> dict[str, Any]:
    """A library larger than the warm's budget: does the plan pick the songs asked for?

    600 songs (50 artists × 4 albums × 3), budget 200 (the default). Each caller first
    plays a song (its album becomes the most recent one: supysonic's ``recent`` list is
    global), then logs in through musegate; after the warm finished they ask a mix
    seeded by the song they played (what the plan bets on) or by another song drawn at
    random; warm off is the baseline, seeded by the played song.
    """
    rows: dict[str, list[dict[str, float]]] = {k: [] for k in LARGE_ROWS}
    with tempfile.TemporaryDirectory(prefix="musegate-bench-first-large-") as tmp:
        work = Path(tmp)
        async with upstream(work / "upstream", (len(LARGE_ROWS) + 1) * rounds, artists=50,
                            albums=4, tracks=3, seconds=0.5) as server:
            seeds = await seed_store(work / "musegate", server.url)
            rng = np.random.default_rng(1)
            import shutil
            shutil.copytree(work / "musegate", work / "musegate-off")
            async with run_musegate(work / "musegate", server.url, source="subsonic",
                                 overrides=ON) as on, \
                    run_musegate(work / "musegate-off", server.url, source="subsonic",
                                 overrides={"subsonic_warm_songs": 0}) as off, \
                    aiohttp.ClientSession() as s:
                user = iter(f"new{i:03d}" for i in range((len(LARGE_ROWS) + 1) * rounds))
                for i in range(rounds):
                    played = seeds[int(rng.integers(len(seeds)))]
                    other = seeds[int(rng.integers(len(seeds)))]
                    order = list(LARGE_ROWS[i % 3:] + LARGE_ROWS[:i % 3])
                    for key in order:
                        name = next(user)
                        await play(s, server.url, name, played)
                        gate = off.url if key == "off" else on.url
                        seed = other if key == "other" else played
                        rows[key].append(await first_answer(s, gate, name, seed, key != "off"))
                    print(f"  large round {i + 1}/{rounds}: " + ", ".join(
                        f"{k} {v[-1]['ms']:.1f} ms" for k, v in rows.items()), flush=True)
                others = await others_during_warm(s, on.url, user, seeds, rounds)
    return {"rows": rows, "rounds": rounds, "songs": len(seeds), "others": others}


async def others_during_warm(s: aiohttp.ClientSession, gate: str, users: Any,
                             seeds: list[str], rounds: int, calls: int = 20
                             ) -> dict[str, list[float]]:
    """What a warm costs everyone else: another user's pass-through calls during one.

    alice (known) sends ``calls`` sequential pass-through ``getSong`` through musegate
    right after a new caller logged in (their warm of 200 songs running meanwhile), and
    the same with nothing running; alternated, ``rounds`` times each.
    """
    auth = {"u": "alice", "p": "alicepw", "v": "1.16.1", "c": "bench-other", "f": "json"}
    out: dict[str, list[float]] = {"during": [], "idle": [], "overlap": []}

    async def series() -> list[float]:
        got = []
        for k in range(calls):
            t0 = time.perf_counter()
            async with s.get(f"{gate}/rest/getSong.view",
                             params={**auth, "id": seeds[k % len(seeds)]}) as r:
                await r.read()
            got.append((time.perf_counter() - t0) * 1000)
        return got

    for i in range(rounds):
        for key in (("during", "idle") if i % 2 == 0 else ("idle", "during")):
            if key == "during":
                before = await metric(s, gate)
                name = next(users)
                async with s.get(f"{gate}/rest/ping.view", params={
                        **auth, "u": name, "p": PASSWORD, "c": "bench"}) as r:
                    await r.read()
                out[key] += await series()
                now = await metric(s, gate)
                # 1 when the warm was still running after the last call: all were during it
                out["overlap"].append(float(now.get("musegate_subsonic_warm_running", 0) > 0
                                            or runs(now) == runs(before)))
                while (await metric(s, gate)).get("musegate_subsonic_warm_running", 0):
                    await asyncio.sleep(0.02)
            else:
                out[key] += await series()
    return out


def render(r: dict[str, Any], large_only: bool = False) -> str:
    rows = r["rows"]

    def p(key: str, q: float, field: str = "ms") -> float:
        return float(np.percentile([x[field] for x in rows[key]], q))

    lines: list[str] = []
    conc = ON.get("subsonic_warm_concurrency") or load_config(
        None, env={}).subsonic_warm_concurrency
    if not large_only:
        base = p("off", 50)
        labels = {
            "off": "warm off (`subsonic_warm_songs = 0`; before): login, then the first answer",
            "login": "warm on (default, by `getSong`), first answer right after login (warm "
                     "still running)",
            "warmed": "warm on (default, by `getSong`), first answer once the warm finished",
            "pages_login": "warm by `search3` pages (`subsonic_warm_pages = true`), right after "
                           "login",
            "pages_warmed": "warm by `search3` pages (`subsonic_warm_pages = true`), once the "
                            "warm finished",
        }
        lines += [
            f"{SECTION} (`bench/gateway_first_answer.py`, issue 11)",
            "",
            f"{date.today().isoformat()}, {machine()} (2-core VM, 24 GiB, shared with other jobs); "
            "command: `flock /tmp/musegate-bench.lock .venv/bin/python bench/gateway_first_answer.py`.",
            "",
            f"supysonic 0.7.9 with {r['songs']} songs on loopback; three musegates side by side "
            "on copies of the same store (warm off, warm by getSong — the default —, warm by "
            "search3 pages); each round one caller never seen before per row (rows interleaved, "
            "rotating), each logging in with `ping` through musegate and then asking "
            "`getSimilarSongs2` (count 50); only that first answer is timed. "
            f"{r['rounds']} rounds. Ratio: p50 against the warm-off row of the same run.",
            "",
            "| new caller's first answer | songs | p50 (ms) | p90 (ms) | p50 vs warm off |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for key in ROWS:
            lines.append(f"| {labels[key]} | {p(key, 50, 'songs'):.0f} | {p(key, 50):.1f} | "
                         f"{p(key, 90):.1f} | {p(key, 50) / base:.3f}× |")
        lines.append("")
        for key, how in (("warmed", "by `getSong`"), ("pages_warmed", "by `search3` pages")):
            lines.append(
                f"Warm of one new caller {how} (musegate's counters): "
                f"{p(key, 50, 'warm_seconds'):.2f} s p50 ({p(key, 10, 'warm_seconds'):.2f}–"
                f"{p(key, 90, 'warm_seconds'):.2f} s p10–p90) for {p(key, 50, 'warm_songs'):.0f} "
                f"songs, `subsonic_warm_concurrency = {conc}`.")
        lines.append("")
    large = r.get("large")
    if large:
        lr = large["rows"]

        def q(key: str, pct: float, field: str = "ms") -> float:
            return float(np.percentile([x[field] for x in lr[key]], pct))

        lbase = q("off", 50)
        llabels = {
            "off": "warm off: the first answer, seeded by the song the caller played last",
            "played": "warm on (default), once finished: seeded by the song played last",
            "other": "warm on (default), once finished: seeded by another song at random",
        }
        lines += [
            f"A library larger than the budget: {large['songs']} songs (50 artists × 4 albums "
            "× 3), `subsonic_warm_songs = 200` (the default), two musegates (warm on and off). "
            "Each new caller first plays a song (straight at supysonic, as in an earlier "
            "session; its album becomes the most recent), then logs in through musegate and, "
            "once the warm finished, asks a mix. "
            f"{large['rounds']} rounds, rows interleaved.",
            "",
            "| new caller's first answer | p50 (ms) | p90 (ms) | p50 vs warm off | warm s p50 "
            "| songs warmed |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key in LARGE_ROWS:
            warm_s = f"{q(key, 50, 'warm_seconds'):.2f}" if key != "off" else "–"
            warm_n = f"{q(key, 50, 'warm_songs'):.0f}" if key != "off" else "–"
            lines.append(f"| {llabels[key]} | {q(key, 50):.1f} | {q(key, 90):.1f} | "
                         f"{q(key, 50) / lbase:.3f}× | {warm_s} | {warm_n} |")
        lines.append("")
        others = large.get("others")
        if others:
            during, idle = np.asarray(others["during"]), np.asarray(others["idle"])
            lines += [
                "What a warm costs everyone else: another user (known, checked) sends 20 "
                "sequential pass-through `getSong` through musegate right after a new caller "
                "logged in (their warm of 200 songs running meanwhile), and the same with no "
                f"warm running; alternated, {large['rounds']} times each "
                f"({np.mean(others['overlap']) * 100:.0f} % of series ended with the warm "
                "still running).",
                "",
                "| another user's pass-through `getSong` | p50 (ms) | p90 (ms) | p50 vs idle |",
                "| --- | ---: | ---: | ---: |",
                f"| no warm running | {np.percentile(idle, 50):.1f} | "
                f"{np.percentile(idle, 90):.1f} | 1.000× |",
                f"| a new caller's warm running (`subsonic_warm_concurrency = {conc}`) | "
                f"{np.percentile(during, 50):.1f} | {np.percentile(during, 90):.1f} | "
                f"{np.percentile(during, 50) / np.percentile(idle, 50):.3f}× |",
                "",
            ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", action="store_true",
                        help="replace the section in docs/benchmarks.md (its hand-written "
                             "reading notes below the tables are lost: re-add them)")
    parser.add_argument("--quick", action="store_true", help="3 rounds (a smoke run)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds (default 12)")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="subsonic_warm_concurrency of the warm-on musegates (default: "
                             "musegate's default)")
    parser.add_argument("--large-only", action="store_true",
                        help="only the 600-song part (print, do not write)")
    args = parser.parse_args()
    if args.concurrency:
        ON["subsonic_warm_concurrency"] = args.concurrency
    rounds = args.rounds or (3 if args.quick else 12)

    if args.large_only:
        large = asyncio.run(run_large(max(3, rounds * 2 // 3)))
        print(render({"rows": {}, "rounds": 0, "songs": 0, "large": large}, large_only=True))
        return 0

    async def both() -> dict[str, Any]:
        result = await run(rounds)
        result["large"] = await run_large(max(3, rounds * 2 // 3))
        return result

    section = render(asyncio.run(both()))
    print(section)
    if args.write:
        write_section(REPO / "docs" / "benchmarks.md", SECTION, section)
        print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
