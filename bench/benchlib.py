"""Helpers every benchmark shares: the dev corpus, the machine's name, docs/benchmarks.md.

A plain module beside the scripts (``python bench/x.py`` puts bench/ on the path):
the scripts cannot import each other, because bench/analysis.py's module name is
taken by the ``analysis`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import platform
import subprocess
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from analysis.model import MusicnnModel

REPO = Path(__file__).resolve().parents[1]
CORPUS_SCRIPT = REPO.parent / "shared" / "corpus" / "build-dev-corpus.sh"


def corpus_dir() -> Path:
    env = os.environ.get("MUSEGATE_CORPUS")
    default = Path(env) if env else Path.home() / ".cache" / "musegate" / "corpus"
    if (default / ".complete").exists():
        return default
    print("building the dev corpus (several minutes the first time) …", flush=True)
    out = subprocess.run(["bash", str(CORPUS_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def read_manifest(root: Path) -> list[tuple[Path, str]]:
    rows = (root / "manifest.tsv").read_text().splitlines()[1:]
    return [(root / r.split("\t")[0], r.split("\t")[1]) for r in rows if r.strip()]


def neighbours(matrix: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    if metric == "cosine":
        m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        score = m @ m.T
    else:
        d = ((matrix[:, None, :] - matrix[None, :, :]) ** 2).sum(-1)
        score = -d
    np.fill_diagonal(score, -np.inf)
    return np.argsort(-score, axis=1, kind="stable")[:, :k]


def cpu_name() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, cores and Python version, as each results section states them."""
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(doc: Path, marker: str, section: str) -> None:
    """Replace the section starting with ``marker`` (up to the next '## ') or append it."""
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    start = text.find(marker)
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip() + "\n\n" + (text[end + 1:] if end >= 0 else "")
    doc.write_text(text.rstrip() + "\n")


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not gone after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


def gateway_bench_main(
    description: str,
    marker: str,
    run: Callable[[bool], Awaitable[Any]],
    render: Callable[[Any], str],
    quick_help: str,
) -> int:
    """The command line the gateway benches share: run, print the section, write it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args()
    section = render(asyncio.run(run(args.quick)))
    print(section)
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", marker, section)
        print("written to docs/benchmarks.md")
    return 0


# ---- a pool of model workers, one per core, each pinned to its core ---------------

#: The network without dead-filter pruning, as AudioMuse-AI computes it (written by
#: analysis/export_musicnn.py next to the pruned one).
UNPRUNED_MODEL = REPO / "bench" / "models" / "msd_musicnn_unpruned.onnx"

_models: dict[str, MusicnnModel] = {}


def _init_pinned(core_queue: multiprocessing.Queue) -> None:
    core = core_queue.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    _models["pruned"] = MusicnnModel(threads=1)
    _models["unpruned"] = MusicnnModel(UNPRUNED_MODEL, threads=1)


def worker_model(unpruned: bool = False) -> MusicnnModel:
    """The model of this pinned worker process (loaded once by its initializer)."""
    assert _models, "only inside a pinned_model_pool worker"
    return _models["unpruned" if unpruned else "pruned"]


def pinned_model_pool(cores: int) -> ProcessPoolExecutor:
    """``cores`` spawned processes, each pinned to one core with a one-thread model, so a
    task's CPU time is one core's time (the unit the analysis results are given in)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    for c in range(cores):
        queue.put(c)
    return ProcessPoolExecutor(cores, mp_context=ctx, initializer=_init_pinned,
                               initargs=(queue,))
