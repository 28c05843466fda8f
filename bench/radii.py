"""Start-up of `musegate serve` at 100k tracks with the CSLS radii loaded from their file,
against the same restart computing them (the code before they were saved), in one run.

    flock /tmp/musegate-bench.lock .venv/bin/python bench/radii.py [--tracks 100000] [--rounds 2]

Real server processes (bench/memory.py's ``serve_once``: ready = ``/ready`` answers 200)
on a cached store of synthetic analyses, the folder source on an empty folder. A first
start builds and saves the index and the radii; then, interleaved ``--rounds`` times:

- before: the code of ``--before`` (default: the commit before the radii were saved,
  exported with ``git archive``), which loads the index and computes every radius;
- this code with the radii file removed (computes them, then saves them);
- this code with the file (loads the index and the radii).

Ratios are against "before" in the same round, so the other jobs' load mostly cancels.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402
from memory import analysis_version, serve_once, store_for  # noqa: E402

MARKER = "## CSLS radii saved beside the index: start-up (`bench/radii.py`)"
BEFORE = "71a0c47"  # main as branch `radii` started from: radii computed at every start


def export(commit: str, into: Path) -> Path:
    """The tree of ``commit`` as files (a throwaway copy, not a worktree)."""
    into.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    version = analysis_version()
    times: dict[str, list[float]] = {"before": [], "computed": [], "loaded": []}
    states: dict[str, set[str]] = {k: set() for k in times}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        old = export(args.before, tmp / "before")
        music = tmp / "music"
        music.mkdir()
        data = tmp / "data"
        data.mkdir()
        shutil.copyfile(store_for(args.tracks, version), data / "musegate.db")
        radii = data / "musegate.index.radii"
        first = serve_once(data, music)
        print(f"first start {first['ready_s']:.1f} s: {first['index']}", flush=True)
        kept = tmp / "radii"
        shutil.copyfile(radii, kept)
        for r in range(args.rounds):
            for case in (("before", "computed", "loaded") if r % 2 == 0
                         else ("loaded", "computed", "before")):
                radii.unlink(missing_ok=True)
                if case == "loaded":
                    shutil.copyfile(kept, radii)
                got = serve_once(data, music, old if case == "before" else REPO)
                times[case].append(got["ready_s"])
                states[case].add(f"index {got['index'].get('status')}, radii "
                                 f"{got['index'].get('radii', 'not reported (before)')}")
                print(f"round {r + 1} {case}: ready after {got['ready_s']:.1f} s, "
                      f"{got['index']}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = [
        ("before (radii computed at every start)", "before"),
        ("this code, radii file removed (computed, then saved)", "computed"),
        ("this code, radii loaded from their file", "loaded"),
    ]
    table = ["| restart | ready after (median) | each round | × before | index / radii |",
             "| --- | ---: | --- | ---: | --- |"]
    for label, key in rows:
        table.append(f"| {label} | {med[key]:.1f} s | "
                     f"{' / '.join(f'{t:.1f}' for t in times[key])} s | "
                     f"{med[key] / med['before']:.2f}× | {'; '.join(sorted(states[key]))} |")
    print("\n".join(table))
    if args.no_write:
        return 0
    section = "\n".join([
        MARKER,
        "",
        f"Measured {date.today().isoformat()} on {machine()} (2-core VM, 24 GiB, shared with "
        "other jobs); command: `flock /tmp/musegate-bench.lock .venv/bin/python bench/radii.py"
        f" --tracks {args.tracks} --rounds {args.rounds}`.",
        "",
        f"A real `musegate serve` restarting on {args.tracks:,} synthetic analyses "
        "(bench/memory.py's store; HNSW index loaded from its file in every case), ready = "
        "`/ready` answers 200. \"Before\" is the code of commit "
        f"{args.before} (every radius searched for at each start), run in the same rounds, "
        "in alternating order.",
        "",
        *table,
        "",
    ])
    write_section(REPO / "docs" / "benchmarks.md", MARKER, section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
