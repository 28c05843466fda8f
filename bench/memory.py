"""Resident memory of an idle `musegate serve` holding N analysed tracks.

    .venv/bin/python bench/memory.py [--sizes 10000,100000,1000000] [--no-write]

For each size a store is filled with N synthetic tracks and analyses through
analysis/store.py (the real schema and the same write path the analyzer uses,
in batches), then a real `musegate serve` process is started on it with the
folder source pointing at an empty folder (the synthetic tracks belong to
another source, so its start-up scan leaves them alone). Once ``/ready``
answers 200 and the start-up scan has finished (``/api/progress``), the
process's VmRSS and VmHWM are read from /proc/<pid>/status. Each size is
started twice: the first start builds the FAISS index and saves it, the
second (the everyday restart) loads it from the file. With ``--requests K`` the
restarted server then answers K similar-songs requests (``/api/similar``, seeds
spread over the library, one by artist name) and its RSS is read again: the first
request builds the playlist rules' per-catalogue key caches, which stay.

The baseline in the same run is the same server on an empty store, so the
per-track figure is (RSS - empty RSS) / N. The stores are cached in
~/.cache/musegate/bench-memory/ (keyed by size and analysis version), since
writing 1M analyses takes minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchlib import machine, write_section  # noqa: E402

from analysis.store import LibraryStore, TrackRecord  # noqa: E402
from analysis.types import EMBEDDING_DIM, TAG_COUNT, TrackAnalysis  # noqa: E402

CACHE = Path.home() / ".cache" / "musegate" / "bench-memory"
BATCH = 5_000
SEED = 20261203
KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
START_TIMEOUT = 1800.0


def analysis_version() -> str:
    from musegate.config import load_config
    from musegate.library import analyzer_settings

    return analyzer_settings(load_config(env={})).version


def _records(start: int, stop: int) -> list[TrackRecord]:
    """Track rows shaped like a Subsonic scan: metadata plus the raw song object it came from."""
    out = []
    for i in range(start, stop):
        artist, album = f"Synthetic Artist {i // 120}", f"Synthetic Album {i // 12}"
        title = f"Synthetic song number {i} (album version)"
        raw = {"id": f"s{i:07d}", "parent": f"al{i // 12}", "isDir": False, "title": title,
               "album": album, "artist": artist, "track": i % 12 + 1, "year": 1990 + i % 30,
               "genre": "Electronic", "coverArt": f"al-{i // 12}", "size": 8_000_000 + i,
               "contentType": "audio/flac", "suffix": "flac", "duration": 180 + i % 200,
               "bitRate": 900, "path": f"{artist}/{album}/{i % 12 + 1:02d} {title}.flac",
               "albumId": f"al{i // 12}", "artistId": f"ar{i // 120}", "type": "music"}
        out.append(TrackRecord(
            source="bench-synthetic", upstream_id=raw["id"], path=raw["path"],
            size=raw["size"], mtime=1.0, title=title, artist=artist, album=album,
            genre="Electronic", year=raw["year"], duration=float(raw["duration"]), raw=raw,
        ))
    return out


def _analyses(rng: np.random.Generator, centres: np.ndarray, n: int, version: str
              ) -> list[TrackAnalysis]:
    """Embeddings around Gaussian cluster centres and features in the ranges real ones have."""
    labels = rng.integers(0, len(centres), n)
    emb = (centres[labels] + 0.4 * rng.standard_normal((n, EMBEDDING_DIM))).astype(np.float32)
    tags = rng.random((n, TAG_COUNT), dtype=np.float32) ** 3
    return [
        TrackAnalysis(
            embedding=emb[j], tags=tags[j], tempo=float(rng.uniform(60, 180)),
            key=KEYS[int(rng.integers(12))], scale="minor" if rng.random() < 0.5 else "major",
            key_strength=float(rng.random()), energy=float(rng.random()),
            loudness=float(rng.uniform(-30, -5)), duration=float(rng.uniform(120, 360)),
            patches=8, version=version,
        )
        for j in range(n)
    ]


async def _fill(path: Path, n: int, version: str) -> None:
    rng = np.random.default_rng(SEED)
    centres = rng.standard_normal((max(50, n // 200), EMBEDDING_DIM))
    async with await LibraryStore.open(path) as store:
        await store.sync_source("bench-synthetic", _records(0, n))
        known = await store.tracks_of_source("bench-synthetic")
        track_ids = [known[u].id for u in sorted(known)]  # zero-padded ids: numeric order
        for start in range(0, n, BATCH):
            chunk = track_ids[start : start + BATCH]
            rows = _analyses(rng, centres, len(chunk), version)
            await store.write_results(list(zip(chunk, rows, strict=True)))


def store_for(n: int, version: str) -> Path:
    """A cached store with n synthetic analyses of ``version`` (built once)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"n{n}-{version.replace('/', '_')}.db"
    if not path.exists():
        t0 = time.monotonic()
        tmp = path.with_suffix(".partial")
        for extra in ("", "-wal", "-shm"):
            Path(str(tmp) + extra).unlink(missing_ok=True)
        asyncio.run(_fill(tmp, n, version))
        tmp.rename(path)
        print(f"  wrote {n:,} synthetic analyses in {time.monotonic() - t0:.0f} s", flush=True)
    return path


def prepared_data(n: int, version: str, music: Path) -> Path:
    """A cached data directory with the store of ``n`` tracks and the index and CSLS radii
    its first start saved (built once, by this checkout's server), for restart-only runs."""
    path = CACHE / f"serve-n{n}-{version.replace('/', '_')}"
    if not (path / ".prepared").exists():
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        shutil.copyfile(store_for(n, version), path / "musegate.db")
        t0 = time.monotonic()
        serve_once(path, music)
        (path / ".prepared").write_text(f"{time.monotonic() - t0:.0f} s\n")
        print(f"  prepared {path} in {time.monotonic() - t0:.0f} s", flush=True)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM and friends in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Vm") or name.startswith("Rss"):
            parts = value.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[name] = int(parts[0]) * 1024
    return out


def heavy_modules(pid: int) -> list[str]:
    """Native libraries mapped into the process that only analysis needs."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    # Package directories, not names: numpy's bundled "scipy_openblas" is not SciPy.
    return [name for name in ("onnxruntime", "librosa", "numba", "llvmlite", "sklearn", "scipy")
            if f"/site-packages/{name}/" in maps]


def base_path() -> str:
    """Where musegate's own routes live (``/musegate`` by default): ``/ready`` is below it."""
    from musegate.config import load_config

    return load_config(env={}).base_path


def similar_requests(base: str, n: int, count: int) -> list[float]:
    """``count`` similar-songs requests on a library of ``n`` synthetic tracks (seconds each)."""
    took = []
    for k in range(count):
        query = (f"artist=Synthetic+Artist+{(k * 37) % max(1, n // 120)}" if k == 1
                 else f"id=s{(k * 7919 + 11) % n:07d}")
        t0 = time.monotonic()
        status, body = _get(f"{base}/api/similar?{query}&n=20")
        took.append(time.monotonic() - t0)
        if status != 200 or not body.get("tracks"):
            raise RuntimeError(f"similar request {query} answered {status}: {body}")
    return took


def serve_once(data_dir: Path, music: Path, repo: Path = REPO, requests: int = 0
               ) -> dict[str, object]:
    """Start `musegate serve`, wait until it is ready and idle, read its memory (and again
    after ``requests`` similar-songs requests), stop it."""
    port = _free_port()
    env = {**os.environ, "MUSEGATE_DATA_DIR": str(data_dir), "MUSEGATE_LIBRARY_PATH": str(music),
           "MUSEGATE_SOURCE": "folder", "MUSEGATE_HOST": "127.0.0.1", "MUSEGATE_PORT": str(port),
           "MUSEGATE_SCAN_CRON": "0 3 1 1 *", "MUSEGATE_LOG_LEVEL": "WARNING"}
    env.pop("MUSEGATE_CONFIG", None)
    started = time.monotonic()
    env["PYTHONPATH"] = str(repo)  # the checkout under test, ahead of the installed one
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env, cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}{base_path()}"
    try:
        while True:  # the server answers nothing until the library is loaded
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {proc.stderr.read().decode()}")
            if time.monotonic() - started > START_TIMEOUT:
                raise RuntimeError("serve did not become ready")
            try:
                status, body = _get(f"{base}/ready")
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
                continue
            if status == 200:
                break
            time.sleep(0.2)
        ready_s = time.monotonic() - started
        while True:  # and the start-up scan of the (empty) folder has finished
            _, progress = _get(f"{base}/api/progress")
            run = progress.get("run") or {}
            if run.get("status") not in ("scanning", "analysing", None):
                break
            time.sleep(0.2)
        mem = proc_status(proc.pid)
        _, status = _get(f"{base}/api/status")  # how the index and CSLS radii were obtained
        out: dict[str, object] = {
            "rss": mem["VmRSS"], "hwm": mem["VmHWM"], "ready_s": ready_s,
            "indexed": body.get("index_tracks"), "heavy": heavy_modules(proc.pid),
            "index": status.get("index", {})}
        if requests and body.get("index_tracks"):
            took = similar_requests(base, int(body["index_tracks"]), requests)
            after = proc_status(proc.pid)
            out.update(rss_after=after["VmRSS"], hwm_after=after["VmHWM"],
                       first_request_s=took[0], later_request_s=float(np.median(took[1:] or took)))
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mib(b: float) -> str:
    return f"{b / 2**20:,.0f} MiB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--label", default="", help="a note for the results line (e.g. a commit)")
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="run the server from this checkout (before/after figures)")
    parser.add_argument("--prepared", action="store_true",
                        help="restart only, from a data directory whose index and CSLS radii a "
                             "first start already saved (cached; built on first use): at 1M the "
                             "first start takes ~15 minutes")
    parser.add_argument("--prepare-only", action="store_true",
                        help="with --prepared: build the cached data directories, measure nothing")
    parser.add_argument("--requests", type=int, default=0,
                        help="after the restart, answer this many similar-songs requests and "
                             "read the idle RSS again")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    version = analysis_version()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        music = Path(tmp) / "music"
        music.mkdir()
        empty = Path(tmp) / "empty"
        empty.mkdir()
        base = serve_once(empty, music, args.repo)
        print(f"  empty store: {base}", flush=True)
        for n in sizes:
            data = Path(tmp) / f"n{n}"
            first: dict[str, object] | None = None
            if args.prepared:
                shutil.copytree(prepared_data(n, version, music), data)
            else:
                data.mkdir()
                shutil.copyfile(store_for(n, version), data / "musegate.db")
                first = serve_once(data, music, args.repo)
            if args.prepare_only:
                shutil.rmtree(data)
                continue
            again = serve_once(data, music, args.repo, args.requests)
            rows.append((n, first, again))
            print(f"  {n:,}: first start {first}; restart {again}", flush=True)
            shutil.rmtree(data)
    table = [
        "| tracks | idle RSS, first start (index built) | idle RSS, restart (index loaded) "
        "| peak RSS (VmHWM), restart | per track over the empty server | ready after (restart) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| 0 | {mib(base['rss'])} | — | {mib(base['hwm'])} | — | {base['ready_s']:.1f} s |",
    ]
    for n, first, again in rows:
        per = (again["rss"] - base["rss"]) / n
        built = mib(first["rss"]) if first else "— (prepared)"
        table.append(f"| {n:,} | {built} | {mib(again['rss'])} | {mib(again['hwm'])} "
                     f"| {per / 1024:.2f} KiB | {again['ready_s']:.1f} s |")
    if args.requests:
        table.append("")
        table.append(f"| tracks | idle RSS, restart | idle RSS after {args.requests} similar requests "
                     "| peak RSS after them | first request | later requests (median) |")
        table.append("| ---: | ---: | ---: | ---: | ---: | ---: |")
        for n, _, again in rows:
            if "rss_after" in again:
                table.append(f"| {n:,} | {mib(again['rss'])} | {mib(again['rss_after'])} "
                             f"| {mib(again['hwm_after'])} | {again['first_request_s']:.2f} s "
                             f"| {again['later_request_s'] * 1000:.0f} ms |")
    if args.prepare_only:
        return 0
    heavy = sorted({m for _, _, again in rows for m in again["heavy"]} | set(base["heavy"]))
    print("\n".join(table))
    print(f"analysis-only libraries mapped in the idle server: {heavy or 'none'}")
    if args.no_write:
        return 0
    section = "\n".join([
        "## Memory of an idle `musegate serve` (`bench/memory.py`)",
        "",
        f"Measured {date.today().isoformat()} on {machine()}; command: "
        f"`.venv/bin/python bench/memory.py --sizes {args.sizes}`"
        + (f" ({args.label})" if args.label else "") + ".",
        "",
        "A real `musegate serve` process on a store of N synthetic tracks and analyses "
        "(written through analysis/store.py: Subsonic-shaped raw song objects, 200-d clustered "
        "embeddings, 50 tag scores and the scalar features), the folder source on an empty "
        "folder. RSS is VmRSS from /proc/<pid>/status once `/ready` answers 200 and the "
        "start-up scan is done; the empty-store server in the same run is the baseline. "
        "Analysis-only native libraries mapped in the idle server: "
        + (", ".join(heavy) if heavy else "none (onnxruntime, librosa, numba are loaded only "
                                          "when an analysis runs)") + ".",
        "",
        *table,
        "",
    ])
    doc = REPO / "docs" / "benchmarks.md"
    write_section(doc, "## Memory of an idle `musegate serve`", section)
    print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
