"""What a "Don't Stop The Music" answer costs: index/mixer.py's mix versus plain similar songs.

    .venv/bin/python bench/lyrion_mix.py [--sizes 10000,100000] [--no-write]

LMS's Music Similarity plugin asks for 5 songs after each queue, with 5 seeds
from the queue and up to 100 previous songs, and every rule switched on (its
defaults: shuffle, no repeated artist in 15 songs or album in 25, key
filtering, genre groups). The mix is timed on a synthetic clustered library
against the same run's baseline, ``similar_tracks`` for the same 5 seeds
(averaged into one query, n=5) — the per-call cost the gateway's other
protocols pay — so the ratio holds on a loaded machine. Medians of many calls,
one thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import date
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402

from index.catalogue import KEYS, Catalogue, CatalogueRow  # noqa: E402
from index.faiss_index import SimilarityIndex  # noqa: E402
from index.mixer import MixRules, TrackMeta, mix  # noqa: E402
from index.similar import similar_tracks  # noqa: E402

DIM = 200
GENRES = ("Rock", "Pop", "Jazz", "Metal", "Folk", "Dance", "Ambient", "Classical")
GROUPS = (frozenset({"Rock", "Metal"}), frozenset({"Pop", "Dance"}), frozenset({"Jazz", "Folk"}))


def library(n: int, seed: int) -> tuple[Catalogue, SimilarityIndex, dict[int, TrackMeta]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((64, DIM)).astype(np.float32)
    labels = rng.integers(0, 64, n)
    emb = centres[labels] * 0.35 + rng.standard_normal((n, DIM)).astype(np.float32)
    rows, meta = [], {}
    for i in range(n):
        tid = i + 1
        artist, album = f"artist {rng.integers(0, n // 10 + 1)}", f"album {rng.integers(0, n // 8 + 1)}"
        genre = GENRES[int(labels[i]) % len(GENRES)]
        rows.append(CatalogueRow(tid, emb[i], {"tempo": float(rng.uniform(60, 180)),
                                               "key": KEYS[int(rng.integers(0, 12))],
                                               "scale": "minor" if rng.random() < 0.5 else "major"},
                                 f"title {i}", artist, album, float(rng.uniform(90, 420))))
        meta[tid] = TrackMeta(artist=artist, album=album, title=f"title {i}",
                              genres=frozenset({genre}), duration=rows[-1].duration)
    cat = Catalogue.from_rows(rows)
    return cat, SimilarityIndex.build(cat.ids, cat.vectors), meta


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rules = MixRules(count=5, shuffle=True, no_repeat_artist=15, no_repeat_album=25,
                     filter_genre=True, genre_groups=GROUPS, exclude_xmas=True,
                     max_bpm_diff=0, filter_key=True)
    lines = []
    for n in (int(s) for s in args.sizes.split(",")):
        cat, index, meta = library(n, 7)
        picker = random.Random(1)
        queue = [int(cat.ids[picker.randrange(n)]) for _ in range(100)]
        seeds = queue[:5]
        rng = random.Random(2)
        base = median_ms(partial(similar_tracks, cat, index, seeds, 5, max_per_artist=3), args.calls)
        mixed = median_ms(partial(mix, cat, index, seeds, queue, meta, rules, rng), args.calls)
        got = mix(cat, index, seeds, queue, meta, rules, rng)
        assert len(got) == 5 and not set(got) & set(queue)
        line = (f"| {n:,} | {base:.2f} | {mixed:.2f} | {mixed / base:.1f}× |")
        print(line, flush=True)
        lines.append(line)
    section = "\n".join([
        "## Lyrion: Music Similarity mixes (`bench/lyrion_mix.py`)",
        "",
        f"{date.today().isoformat()}, {machine()}; 2-core VM, 24 GiB, shared with other jobs. "
        "Command: `flock /tmp/musegate-bench.lock .venv/bin/python bench/lyrion_mix.py`.",
        "",
        "One DSTM answer (`index.mixer.mix`: 5 seeds, 100 previous songs, count 5, the plugin's "
        "default rules) against the same run's `similar_tracks` for the same seeds (n=5), "
        f"median of {args.calls} calls, one thread, synthetic clustered library (exact index).",
        "",
        "| tracks | similar_tracks ms | mix ms | mix / similar |",
        "| ---: | ---: | ---: | ---: |",
        *lines,
    ])
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", "## Lyrion: Music Similarity mixes", section)
    print(section)


if __name__ == "__main__":
    main()
