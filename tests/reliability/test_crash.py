"""Crash safety: ``musegate analyze`` and ``musegate serve`` killed with SIGKILL at seeded
moments over a generated library, resumed each time (see crash_harness.py).

After every kill: ``PRAGMA integrity_check`` is ok, no committed analysis is lost or
rewritten, no track or analysis is duplicated, and no worker process is left behind.
After the last run every track is analysed exactly once, none is recorded as failed,
and the index a restart loads is the store's. The index file itself is also killed
mid-save: whatever moment the kill lands on, the file on disk is the old or the new
index, never a torn one; the same holds for the CSLS radii file saved beside it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from analysis.store import LibraryStore
from index.faiss_index import _load_checked, load_or_build
from index.radii_file import load_radii
from musegate.config import load_config
from musegate.library import analyzer_settings
from tests.reliability.crash_harness import CrashReport, crash_run
from tests.supysonic_server import generate_library


def _library(tmp: Path, tracks: int) -> Path:
    per = 4
    return generate_library(tmp / "music", artists=max(1, tracks // per), albums=1, tracks=per,
                            seconds=4.0)


def _assert_clean(report: CrashReport, kills: int) -> None:
    assert report.kills >= 1 and report.runs == kills + 1
    assert report.lost == 0 and report.changed == 0 and report.duplicates == 0
    assert set(report.integrity) == {"ok"}
    assert report.orphans == 0, "worker processes outlived the killed run"
    print(f"\ncrash: {report}")


async def _index_matches_store(data: Path) -> None:
    config = load_config(None, env={}, overrides={"data_dir": str(data),
                                                     "analysis_mode": "fast"})
    store = await LibraryStore.open(config.db_path)
    try:
        ids, vectors = await store.embeddings(analyzer_settings(config).version)
    finally:
        await store.close()
    index, _status = load_or_build(config.index_path, ids, vectors)
    assert np.array_equal(np.sort(index.ids), np.sort(ids)) and len(ids) > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_analyze_killed_twice_loses_nothing(tmp_path: Path) -> None:
    music = _library(tmp_path, 8)
    report = crash_run(tmp_path, music, n_tracks=8, kills=2, seed=12)
    _assert_clean(report, 2)
    await _index_matches_store(tmp_path / "data")


@pytest.mark.reliability
@pytest.mark.asyncio
async def test_analyze_killed_twenty_times_loses_nothing(tmp_path: Path) -> None:
    music = _library(tmp_path, 40)
    report = crash_run(tmp_path, music, n_tracks=40, kills=20, seed=2012)
    _assert_clean(report, 20)
    await _index_matches_store(tmp_path / "data")


@pytest.mark.reliability
@pytest.mark.asyncio
async def test_serve_killed_during_scheduled_analysis_loses_nothing(tmp_path: Path) -> None:
    music = _library(tmp_path, 24)
    report = crash_run(tmp_path, music, n_tracks=24, kills=10, seed=1212,
                       serve_port=_free_port())
    _assert_clean(report, 10)
    await _index_matches_store(tmp_path / "data")


_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from index.faiss_index import SimilarityIndex
    path = sys.argv[1]
    rng = np.random.default_rng(0)
    n = 0
    while True:
        n += 1
        count = 20000 + (n % 2) * 5000          # alternate sizes: old and new differ
        vectors = rng.standard_normal((count, 200)).astype(np.float32)
        SimilarityIndex.build(np.arange(count, dtype=np.int64), vectors).save(path)
        print(count, flush=True)
""")


def _kill_saves(tmp: Path, kills: int, seed: int) -> list[str]:
    path = tmp / "index.faiss"
    rng = np.random.default_rng(seed)
    reasons = []
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline()  # one save finished: the next one is under way
            # scatter the kill over the next save (build, serialise, write, fsync, rename)
            time.sleep(float(rng.uniform(0.0, 0.4)))
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        index, reason = _load_checked(path, None, None)
        reasons.append(reason)
        assert index is not None and len(index) in (20000, 25000), reason
    return reasons


def test_index_file_survives_a_kill_mid_save(tmp_path: Path) -> None:
    assert set(_kill_saves(tmp_path, 3, seed=7)) == {"loaded"}


@pytest.mark.reliability
def test_index_file_survives_twenty_kills_mid_save(tmp_path: Path) -> None:
    assert set(_kill_saves(tmp_path, 20, seed=2012)) == {"loaded"}


# Two libraries whose radii the saver writes in turn; large enough (8-10 MB) that a kill
# often lands inside a write or its fsync, not between two saves.
_RADII_SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from index.radii_file import save_radii
    from tests.reliability.test_crash import radii_signatures
    path = sys.argv[1]
    signatures = radii_signatures()
    n = 0
    while True:
        n += 1
        sig = signatures[n % 2]
        save_radii(path, np.full(sig["count"], 0.25 + n % 2, np.float32), sig, changes=n % 2)
        print(sig["count"], flush=True)
""")


def radii_signatures() -> list[dict]:
    """The signatures of the saver's two libraries (only their sizes and digests differ)."""
    from index.geometry import RAW
    from index.radii_file import radii_signature

    out = []
    for count in (2_000_000, 2_500_000):
        ids = np.arange(count, dtype=np.int64)
        out.append(radii_signature(ids, np.zeros((count, 1), np.float32), RAW, "v", 10))
    return out


def _kill_radii_saves(tmp: Path, kills: int, seed: int) -> list[str]:
    path = tmp / "musegate.index.radii"
    signatures = radii_signatures()
    rng = np.random.default_rng(seed)
    reasons = []
    root = Path(__file__).resolve().parents[2]
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _RADII_SAVER, str(path)], cwd=root,
                                env={**os.environ, "PYTHONPATH": str(root)},
                                stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline()  # one save finished: the next one is under way
            time.sleep(float(rng.uniform(0.0, 0.2)))  # scatter the kill over the next saves
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
        loaded = [load_radii(path, sig) for sig in signatures]
        whole = [(saved, sig) for (saved, _), sig in zip(loaded, signatures, strict=True)
                 if saved is not None]
        reasons.append(" / ".join(reason for _, reason in loaded))
        # exactly one library's radii, whole: every value and the change count of that save
        assert len(whole) == 1, reasons[-1]
        saved, sig = whole[0]
        odd = sig is signatures[1]
        assert saved.changes == int(odd) and np.all(saved.radius == 0.25 + int(odd))
        assert all(r == "loaded" or r.startswith("stale") for _, r in loaded), reasons[-1]
    return reasons


def test_radii_file_survives_a_kill_mid_save(tmp_path: Path) -> None:
    _kill_radii_saves(tmp_path, 3, seed=7)


@pytest.mark.reliability
def test_radii_file_survives_twenty_kills_mid_save(tmp_path: Path) -> None:
    _kill_radii_saves(tmp_path, 20, seed=2012)
