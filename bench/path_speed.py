"""Song path speed and smoothness: this tree's song_path against an earlier commit's, same run.

    flock /tmp/musegate-bench.lock .venv/bin/python bench/path_speed.py [--before REV] [--pairs 30]

The earlier song_path is index/path.py as it was at ``--before`` (git show), loaded
beside this tree's, so both run on the same libraries, endpoints and machine load,
call by call in turn; AudioMuse-AI's nearest-per-step path (greedy_path_baseline)
is the floor both must beat. Libraries: 10k synthetic clustered songs with ~10-song
artists (bench/index.py's) in the raw geometry, the same in the centred geometry
(index.geometry, fitted on them), the same with duplicates shown, and the dev corpus
(cached analyses only) in the shipped geometry. Every path is checked for its
endpoints, its length and repeats; smoothness is the largest cosine step of a path,
the quantity song_path minimises.

Results are printed and written to docs/benchmarks.md (--no-write to skip).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import faiss  # noqa: E402
from benchlib import corpus_dir, machine, read_manifest, write_section  # noqa: E402

from index.catalogue import Catalogue  # noqa: E402
from index.faiss_index import SimilarityIndex  # noqa: E402
from index.geometry import fit_geometry  # noqa: E402
from index.path import greedy_path_baseline, song_path  # noqa: E402

MARKER = "## Song path speed"
#: index/path.py before this bench's work on it (branch `path`)
DEFAULT_BEFORE = "71a0c47"

# bench/index.py holds the synthetic libraries and the corpus analyses; its name is the
# index package's, so it is loaded under another one
_spec = importlib.util.spec_from_file_location("bench_index", REPO / "bench" / "index.py")
assert _spec is not None and _spec.loader is not None
bench_index = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_index)


def module_at(rev: str, path: str, name: str) -> ModuleType:
    """``path`` as it was at ``rev``, imported as module ``name`` (its imports resolve here)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="musegate-bench-"))
    file = folder / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@dataclass
class Tally:
    times: list[float]
    largest: list[float]
    mean: list[float]
    short: int = 0
    broken: int = 0  # wrong endpoints or a repeated song

    @classmethod
    def empty(cls) -> Tally:
        return cls([], [], [])

    def add(self, seconds: float, path, start: int, end: int, length: int) -> None:
        ids = path.track_ids
        self.times.append(seconds)
        self.largest.append(path.max_jump)
        self.mean.append(path.mean_jump)
        self.short += int(len(ids) < length)
        self.broken += int(ids[0] != start or ids[-1] != end or len(set(ids)) != len(ids))


@dataclass
class Case:
    name: str
    cat: Catalogue
    length: int
    max_per_artist: int
    hide_duplicates: bool = True


def run_case(case: Case, pairs: int, seed: int, methods: dict[str, Callable]) -> dict[str, Tally]:
    index = SimilarityIndex.build(case.cat.ids, case.cat.vectors)
    rng = np.random.default_rng(seed)
    ends = [rng.choice(len(case.cat), 2, replace=False) for _ in range(pairs)]
    tallies = {name: Tally.empty() for name in methods}
    kw = {"length": case.length, "max_per_artist": case.max_per_artist}
    for name, fn in methods.items():  # warm caches (text keys, raw terms) outside the clock
        fn(case.cat, index, int(case.cat.ids[ends[0][0]]), int(case.cat.ids[ends[0][1]]), **kw,
           **({} if name == "nearest" else {"hide_duplicates": case.hide_duplicates}))
    for a, b in ends:
        start, end = int(case.cat.ids[a]), int(case.cat.ids[b])
        for name, fn in methods.items():
            extra = {} if name == "nearest" else {"hide_duplicates": case.hide_duplicates}
            t0 = time.perf_counter()
            path = fn(case.cat, index, start, end, **kw, **extra)
            tallies[name].add(time.perf_counter() - t0, path, start, end, case.length)
    return tallies


def centred(cat: Catalogue) -> Catalogue:
    return cat.in_geometry(fit_geometry(cat.vectors))


def corpus_case() -> Case | None:
    """The dev corpus in the shipped geometry, from cached analyses only (None when absent)."""
    try:
        tracks = read_manifest(corpus_dir())
    except (OSError, SystemExit):
        return None
    paths = [p for p, _ in tracks]
    from analysis.model import model_version
    from analysis.pipeline import analysis_version
    from analysis.sampling import DEFAULT

    version = analysis_version(model_version(), DEFAULT)
    if len(bench_index._from_duplicates_cache(paths, version)) < len(paths) and not (
            bench_index.CACHE.exists()):
        return None
    rows, _, _ = bench_index.corpus_rows(paths, methods=("musegate",))
    labels = [lab for _, lab in tracks]
    raw = bench_index.corpus_catalogue(rows, labels, [p.stem for p in paths])
    return Case("dev corpus, shipped geometry", centred(raw), 12, 10_000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=DEFAULT_BEFORE,
                        help="git revision whose index/path.py is the baseline")
    parser.add_argument("--pairs", type=int, default=30, help="endpoint pairs per library")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    before = module_at(args.before, "index/path.py", "index_path_before")
    methods: dict[str, Callable] = {
        "after": song_path, "before": before.song_path, "nearest": greedy_path_baseline,
    }
    labels = {"after": "song_path (this tree)", "before": f"song_path at {args.before}",
              "nearest": "nearest per step (AudioMuse-AI)"}
    started = time.monotonic()
    syn = bench_index.synthetic_catalogue(10_000, bench_index.SEED + 7)
    cases = [
        Case("synthetic, raw geometry", syn, 25, 3),
        Case("synthetic, centred geometry", centred(syn), 25, 3),
        Case("synthetic, duplicates shown", syn, 25, 3, hide_duplicates=False),
    ]
    corpus = corpus_case()
    if corpus is not None:
        cases.append(corpus)
    table = [
        "| library | tracks | length | method | ms per path p50 | mean ms | × faster than before "
        "| mean step | largest step (mean over pairs) | largest step (worst pair) | short / broken |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    notes = []
    for case in cases:
        t = run_case(case, args.pairs, bench_index.SEED, methods)
        base_ms = 1000 * float(np.mean(t["before"].times))
        for name in ("after", "before", "nearest"):
            x = t[name]
            ms = 1000 * np.array(x.times)
            table.append(
                f"| {case.name} | {len(case.cat):,} | {case.length} | {labels[name]} | "
                f"{np.median(ms):.1f} | {ms.mean():.1f} | {base_ms / ms.mean():.2f} | "
                f"{np.mean(x.mean):.3f} | {np.mean(x.largest):.3f} | {np.max(x.largest):.3f} | "
                f"{x.short} / {x.broken} |"
            )
        a, b = np.array(t["after"].largest), np.array(t["before"].largest)
        g = np.array(t["nearest"].largest)
        notes.append(
            f"{case.name}: largest step lower than before on {int(np.sum(a < b - 1e-6))}, equal on "
            f"{int(np.sum(np.abs(a - b) <= 1e-6))}, higher on {int(np.sum(a > b + 1e-6))} of "
            f"{len(a)} pairs; never above nearest-per-step: {bool(np.all(a <= g + 1e-6))}"
        )
        print("\n".join(table[-3:]), flush=True)
        print(notes[-1], flush=True)
    wall = time.monotonic() - started
    print(f"total {wall:.0f} s")
    if args.no_write:
        return 0
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    section = "\n".join([
        f"{MARKER} (`bench/path_speed.py`)",
        "",
        f"Measured {date.today().isoformat()} on a 2-core VM, 24 GiB, shared with other jobs "
        f"({machine()}, faiss {faiss.__version__}); command: "
        f"`flock /tmp/musegate-bench.lock .venv/bin/python bench/path_speed.py --before "
        f"{args.before}` (commit {head} on branch `path`), {wall:.0f} s.",
        "",
        f"{args.pairs} random (seeded) endpoint pairs per library; this tree's song_path, the one "
        f"at {args.before} (index/path.py from git, loaded beside it) and AudioMuse-AI's "
        "nearest-per-step path get the same endpoints, length and playlist rules (at most 3 songs "
        "per artist on the synthetic libraries, no cap on the corpus) and run call by call in "
        "turn, so machine load falls on all three alike; \"× faster\" is the baseline's mean time "
        "over the method's. Steps are cosine distances between consecutive songs in the "
        "library's geometry. \"short\" counts paths shorter than asked, \"broken\" paths with "
        "wrong endpoints or a repeated song. The synthetic library is bench/index.py's 10k "
        "clustered vectors with ~10-song artists.",
        "",
        *table,
        "",
        *(f"- {n}" for n in notes),
        "",
    ])
    write_section(REPO / "docs" / "benchmarks.md", MARKER, section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
