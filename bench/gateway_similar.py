"""Exact Subsonic similarity answers: the per-user song cache against plain hydration, one run.

    .venv/bin/python bench/gateway_similar.py [--no-write] [--quick]

The similarity part of bench/gateway.py on its own (minutes instead of the full
pass-through run): supysonic from PyPI with the same generated library, every
song in musegate's store with a synthetic analysis, then ``getSimilarSongs2``
(count 50) through one musegate per visibility path, each started after the
previous one stopped: uncached ``hydrate`` by song (``subsonic_song_cache_seconds
= 0``, ``subsonic_song_fetch = "song"``: what every answer cost before, and what
the default's cold answer still costs), ``hydrate`` cold (nothing
cached: the cache off, songs asked by album, ``subsonic_song_fetch = "album"``) and warm, and ``folders``. Ratios
are p50 against the uncached row of the same run. Writes its own section of
docs/benchmarks.md (--no-write to skip).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))  # first: bench/analysis.py must not shadow the package

from benchlib import gateway_bench_main, machine  # noqa: E402

# bench/gateway.py by path: its module name would shadow musegate's own ``gateway`` package.
_spec = importlib.util.spec_from_file_location("bench_gateway", HERE / "gateway.py")
assert _spec is not None and _spec.loader is not None
bench_gateway = importlib.util.module_from_spec(_spec)
sys.modules["bench_gateway"] = bench_gateway
_spec.loader.exec_module(bench_gateway)

SECTION = "## Exact Subsonic similarity answers"


async def run(quick: bool) -> dict[str, Any]:
    n = 30 if quick else 100
    with tempfile.TemporaryDirectory(prefix="musegate-bench-sim-") as tmp:
        work = Path(tmp)
        async with bench_gateway.supysonic_upstream(work / "upstream") as upstream:
            seeds = await bench_gateway.seed_store(work / "musegate", upstream)
            sim = await bench_gateway.similar_modes(work / "musegate", upstream, seeds, n)
    return {"similar": sim, "n": n, "songs": len(seeds), "upstream": upstream.name}


def render(r: dict[str, Any]) -> str:
    sim = r["similar"]
    warm, cold, old = sim["warm"]["p50"], sim["cold"]["p50"], sim["uncached"]["p50"]
    return "\n".join([
        f"{SECTION} (`bench/gateway_similar.py`, issue 11)",
        "",
        f"Measured {date.today().isoformat()} on {machine()} (2-core VM, 24 GiB, shared with "
        "other jobs); command: "
        "`flock /tmp/musegate-bench.lock .venv/bin/python bench/gateway_similar.py`.",
        "",
        f"Upstream: {r['upstream']} with {r['songs']} songs, on loopback, each server in its "
        "own process; the client shares the same cores.",
        "",
        *bench_gateway.render_similar(sim, r["n"]),
        "",
        f"Exact answers: warm {warm:.1f} ms p50 ({old / warm:.0f}× faster than uncached); "
        f"cold (nothing of the caller's cached) {old:.1f} ms p50 by song (the default) and "
        f"{cold:.1f} ms p50 by album ({cold / old:.2f}× the by-song figure). Target (issue 11): "
        "≤ 20 ms p50, with every song exactly the caller's own `getSong` "
        "(tests/test_subsonic_song_cache.py, warm and cold): met warm, missed cold.",
        "",
        "Why cold stays slow on supysonic: its cost is per song it builds (a star, a rating "
        "and an average-rating query per Child), not per call: `bench/supysonic_call_costs.py` "
        "on the same setup measured one call at a time `ping` 12–22 ms, `getSong` 26–52 ms, "
        "`getAlbum` of a 2-song album 31–118 ms, and 25 `getAlbum` took 0.6–1.6× the time of "
        "the same 50 songs' `getSong` (4 rounds, 1 and 8 in flight), so asking by album "
        "does not make supysonic build fewer songs, and concurrency does not help a server "
        "that builds them on one interpreter. Asking by album halves the calls, which can only pay off where a call "
        "costs more than the songs in it (a server far away; not measured here): it is "
        "offered (`subsonic_song_fetch`), not the default. How "
        "long a cached song may lag behind changes made past musegate: docs/subsonic.md.",
        "",
    ])


def main() -> int:
    return gateway_bench_main(
        __doc__.split("\n", 1)[0], SECTION, run, render, quick_help="fewer requests (a smoke run)"
    )


if __name__ == "__main__":
    sys.exit(main())
