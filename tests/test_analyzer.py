"""The analyzer end to end on generated audio: results, failures, resume after a kill."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from adapters.folder import FolderAdapter
from analysis.store import LibraryStore
from musegate import library
from musegate.config import load_config
from tests.conftest import SR, sine_mix, write_track
from tests.worker_probe import numeric_thread_counts

ROOT = Path(__file__).resolve().parents[1]


def config_for(tmp_path: Path, **overrides: object):
    return load_config(None, env={}, overrides={"data_dir": str(tmp_path / "data"),
                                                "workers": 2, **overrides})


async def test_analyse_library_with_bad_files(tmp_path: Path, small_library: Path) -> None:
    (small_library / "corrupt.flac").write_bytes(b"fLaC" + os.urandom(3000))
    (small_library / "empty.mp3").write_bytes(b"")
    (small_library / "garbage.ogg").write_bytes(os.urandom(5000))
    config = config_for(tmp_path)
    async with await LibraryStore.open(config.db_path) as store:
        await library.scan(store, FolderAdapter(small_library))
        report = await library.analyse(store, config)
        assert (report.total, report.analysed, report.failed) == (9, 6, 3)
        failures = {Path(t.path).name: reason for t, reason, _ in await store.failures()}
        assert set(failures) == {"corrupt.flac", "empty.mp3", "garbage.ogg"}
        assert all(reason for reason in failures.values())

        seed = await library.resolve_track(store, "low 0")
        shown = await store.get_analysis(seed.id)
        assert shown is not None
        assert shown.embedding.shape == (200,) and np.isfinite(shown.embedding).all()
        tags = np.array(shown.features["tags"])
        assert tags.shape == (50,) and (tags >= 0).all() and (tags <= 1).all()
        assert 0 <= shown.features["energy"] <= 1
        assert shown.features["duration"] == pytest.approx(12.0, abs=0.05)

        result = await library.similar(store, config, seed, 3)
        names = [t.title for t, _ in result.neighbours]
        assert seed.title not in names
        assert names[0] == "low 1"  # its own family is nearest
        sims = [s for _, s in result.neighbours]
        assert sims == sorted(sims, reverse=True)

        # a second run has nothing to do; failures are retried up to max_attempts
        again = await library.analyse(store, config)
        assert again.analysed == 0 and again.failed == 3
        status = await store.status(library.analyzer_settings(config).version, 3)
        assert (status.analysed, status.failed) == (6, 3)


def _count_analyses(db: Path) -> int:
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=5)
    try:
        return con.execute("SELECT count(*) FROM analyses").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        con.close()


def test_killed_run_loses_nothing_and_resumes(tmp_path: Path) -> None:
    music = tmp_path / "music"
    for i in range(24):
        write_track(music / f"t{i:02d}.wav", sine_mix([110.0 * (1 + i / 8)], 10.0, seed=i))
    data = tmp_path / "data"
    env = {**os.environ, "MUSEGATE_WORKERS": "2", "MUSEGATE_WRITE_BATCH": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "cli", "--data-dir", str(data), "analyze", str(music),
           "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    db = data / "musegate.db"
    deadline = time.monotonic() + 300
    while _count_analyses(db) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: parent and workers, no clean-up
    proc.wait()
    done_before = _count_analyses(db)
    assert 3 <= done_before < 24, proc.stdout.read().decode() if proc.stdout else ""

    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"analysed {24 - done_before} tracks" in out.stdout
    assert _count_analyses(db) == 24
    status = subprocess.run(
        [sys.executable, "-m", "cli", "--data-dir", str(data), "status", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    data_json = json.loads(status.stdout)
    assert (data_json["tracks"], data_json["analysed"], data_json["pending"]) == (24, 24, 0)


def test_cli_show_and_similar(tmp_path: Path, small_library: Path) -> None:
    env = {**os.environ, "MUSEGATE_WORKERS": "2", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, "-m", "cli", "--data-dir", str(tmp_path / "d")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], env=env, capture_output=True, text=True,
                              timeout=600)

    assert run("analyze", str(small_library), "--no-progress").returncode == 0
    shown = run("show", "mid 1")
    assert shown.returncode == 0 and "tempo" in shown.stdout and "top tags" in shown.stdout
    sim = run("similar", str(small_library / "mid" / "mid0.flac"), "-n", "2", "--json")
    assert sim.returncode == 0, sim.stderr
    payload = json.loads(sim.stdout)
    assert payload["seed"]["title"] == "mid 0"
    assert [s["title"] for s in payload["similar"]][0] == "mid 1"
    missing = run("similar", "no such song")
    assert missing.returncode == 1 and "no track matches" in missing.stderr
    ambiguous = run("show", "low")
    assert ambiguous.returncode == 1 and "several tracks" in ambiguous.stderr


def test_zero_length_wav_header_only(tmp_path: Path) -> None:
    path = write_track(tmp_path / "silence.wav", np.zeros(0, np.float32), SR)
    from analysis.decode import DecodeError, probe

    with pytest.raises(DecodeError):
        probe(path)


def test_workers_use_one_numeric_thread_each() -> None:
    # One worker per core plus a BLAS/OpenMP thread per core in each doubled the CPU time.
    from analysis.executors import LocalPoolExecutor
    from analysis.sampling import DEFAULT

    with LocalPoolExecutor(1, None, 1, DEFAULT)._new_pool() as pool:
        counts = pool.submit(numeric_thread_counts).result(timeout=120)
    assert counts, "no BLAS/OpenMP library found in the worker"
    assert max(n for n, _ in counts) == 1, counts


def test_full_disk_stops_analyze_with_a_clear_error_and_resumes(
    tmp_path: Path,
    small_library: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    disk_fills_after_first_write: None,
) -> None:
    from cli.main import main

    data = tmp_path / "data"
    monkeypatch.setenv("MUSEGATE_WRITE_BATCH", "2")
    monkeypatch.setenv("MUSEGATE_WORKERS", "1")
    args = ["--data-dir", str(data), "analyze", str(small_library), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "disk is full" in err and "run again to resume" in err
    assert "Traceback" not in err
    assert _count_analyses(data / "musegate.db") == 2

    monkeypatch.undo()  # space freed
    assert main(args) == 0
    assert _count_analyses(data / "musegate.db") == 6
