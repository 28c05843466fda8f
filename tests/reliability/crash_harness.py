"""Run ``musegate analyze`` as a real process and kill -9 it at seeded moments.

A "moment" is a number of committed analyses: the harness polls the database
(read-only, as a second process would) until the run has committed that many,
then sends SIGKILL to the whole process group (the CLI and its spawned
analysis workers). Moments at or below what an earlier run already saved kill
the next run while it is still starting (imports, scan, model load).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.secret_watch import watch_log_file

POLL = 0.02
PROCESS_DEADLINE = 600.0  # a run that neither reaches its moment nor ends is a failure


@dataclass
class Snapshot:
    analyses: dict[int, bytes]  # track id -> embedding blob
    tracks: int
    failures: int
    integrity: str


@dataclass
class CrashReport:
    kills: int = 0
    moments: list[int] = field(default_factory=list)
    lost: int = 0
    changed: int = 0
    duplicates: int = 0
    integrity: list[str] = field(default_factory=list)
    orphans: int = 0
    runs: int = 0


def snapshot(db: Path) -> Snapshot:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT track_id, embedding FROM analyses").fetchall()
        tracks = con.execute("SELECT count(*) FROM tracks").fetchone()[0]
        dup_paths = con.execute(
            "SELECT count(*) FROM (SELECT path FROM tracks GROUP BY path HAVING count(*) > 1)"
        ).fetchone()[0]
        failures = con.execute("SELECT count(*) FROM failures").fetchone()[0]
        integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) and dup_paths == 0
    return Snapshot(dict(rows), tracks, failures, integrity)


def committed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM analyses").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # not created yet, or the schema is being written
        return 0


def analyze_command(data_dir: Path, music: Path) -> list[str]:
    return [sys.executable, "-m", "cli", "--data-dir", str(data_dir), "analyze", str(music),
            "--workers", "1", "--mode", "fast", "--no-progress"]


def _group_gone(pgid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(POLL)
    return False


def serve_command(data_dir: Path, music: Path, port: int) -> list[str]:
    """``musegate serve`` on a folder: its scheduler scans and analyses at start."""
    return [sys.executable, "-m", "cli", "--data-dir", str(data_dir), "serve",
            "--host", "127.0.0.1", "--port", str(port)]


def run_until(cmd: list[str], db: Path, moment: int | None, log: Path,
              env: dict[str, str], total: int | None = None) -> tuple[bool, bool]:
    """Start ``cmd``; SIGKILL it once ``moment`` analyses are committed (None: let it end,
    or for a server (``total`` given) stop it with SIGTERM once ``total`` are committed).

    Returns (killed, workers_gone): whether the kill happened before the run ended on its
    own, and whether every process of the run (spawned workers included) was gone after.
    """
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + PROCESS_DEADLINE
    killed = False
    try:
        while proc.poll() is None:
            if moment is not None and committed(db) >= moment:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            if moment is None and total is not None and committed(db) >= total:
                proc.send_signal(signal.SIGTERM)
                total = None
            if time.monotonic() > deadline:
                raise AssertionError(f"analyze neither reached {moment} nor ended: see {log}")
            time.sleep(POLL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if not killed:
        assert proc.returncode == 0, f"analyze exited {proc.returncode}: see {log}"
    # the workers read their jobs from the dead parent's pipe: they must end by themselves
    gone = _group_gone(proc.pid, time.monotonic() + 60)
    return killed, gone


def crash_run(tmp: Path, music: Path, n_tracks: int, kills: int, seed: int,
              serve_port: int | None = None) -> CrashReport:
    """Kill the run ``kills`` times at seeded moments, resuming each time, then let it finish.

    With ``serve_port`` the run is ``musegate serve`` (scheduled analysis at start, index
    saved as analyses arrive) instead of ``musegate analyze``.
    """
    data = tmp / "data"
    db = data / "musegate.db"
    log = tmp / "analyze.log"
    watch_log_file(log)
    env = {**os.environ, "MUSEGATE_WRITE_BATCH": "1", "MUSEGATE_LOG_LEVEL": "DEBUG",
           "MUSEGATE_ANALYSIS_MODE": "fast",
           "OMP_NUM_THREADS": "1"}
    rng = np.random.default_rng(seed)
    moments = sorted(int(m) for m in rng.choice(np.arange(1, n_tracks), size=kills,
                                                replace=kills >= n_tracks))
    report = CrashReport(moments=moments)
    before = Snapshot({}, 0, 0, "ok")
    if serve_port is None:
        cmd = analyze_command(data, music)
    else:
        cmd = serve_command(data, music, serve_port)
        env["MUSEGATE_LIBRARY_PATH"] = str(music)
    for moment in [*moments, None]:
        killed, gone = run_until(cmd, db, moment, log, env,
                                 total=n_tracks if serve_port is not None else None)
        report.runs += 1
        report.kills += killed
        report.orphans += not gone
        if not db.exists():
            continue
        now = snapshot(db)
        report.integrity.append(now.integrity)
        report.lost += sum(1 for t in before.analyses if t not in now.analyses)
        report.changed += sum(1 for t, e in before.analyses.items()
                              if t in now.analyses and now.analyses[t] != e)
        before = now
    final = snapshot(db)
    assert final.tracks == n_tracks, final.tracks
    report.duplicates = final.tracks - len({*final.analyses})
    assert len(final.analyses) == n_tracks and final.failures == 0, (len(final.analyses),
                                                                    final.failures)
    return report
