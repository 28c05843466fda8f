"""Bad audio: corrupt, truncated, empty, mislabelled, huge and sparse files, odd names.

For every case: the run goes on, the good songs of the same run are analysed, the
failure is stored with a clear reason (what ``GET /api/failures``, ``musegate status
--failures`` and the UI's Status page show), and the worker's peak memory stays
bounded. Peak memory is the worker's own kernel high-water mark per file
(tests/reliability/rss_probe.py); the bound asserted is generous on purpose — it is
there to catch a file being loaded whole (a 4 GB file would add gigabytes), not to
measure. The multi-GB sparse files and the 6-hour FLAC are marked ``reliability``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.folder import FolderAdapter
from analysis.store import LibraryStore
from musegate import library
from musegate.config import load_config
from tests.reliability import bad_audio_files as files

ROOT = Path(__file__).resolve().parents[2]

#: What one file may add to a worker's resident memory (model already loaded). A
#: 30-second song adds ~5 MB; loading a 4 GB file whole would add > 4000 MB.
PEAK_BOUND_MB = 200


def _config(tmp: Path, **overrides: object):
    return load_config(None, env={}, overrides={"data_dir": str(tmp / "data"), "workers": 1,
                                                "analysis_mode": "sampled", **overrides})


def probe_peaks(mode: str, paths: list[Path]) -> dict[str, dict]:
    """Run the worker's own analysis of each file in one subprocess; per-file peak RSS."""
    out = subprocess.run([sys.executable, "-m", "tests.reliability.rss_probe", mode,
                          *map(str, paths)],
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=1800, errors="surrogateescape")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(paths), out.stderr[-3000:]
    return {Path(r["path"]).name: r for r in rows}


def _check(case: files.Case, analysed: bool, reason: str | None) -> None:
    if case.expect == "analysed":
        assert analysed, (case.name, reason)
    else:
        assert not analysed, case.name
        assert reason and re.search(case.expect, reason), (case.name, reason)


async def test_bad_files_fail_with_reasons_and_the_run_goes_on(tmp_path: Path) -> None:
    """The whole analyzer (scan, process pool, store) over a library of bad files mixed
    with good ones; a file deleted and one replaced by a FIFO after the scan."""
    music = tmp_path / "music"
    cases = files.build(music, files.FAST_CASES)
    latin1 = files.non_utf8_name(music)
    gone = music / "zz-deleted.flac"
    fifo = music / "zz-fifo.flac"
    for p in (gone, fifo):
        shutil.copy(music / files.GOOD[0], p)
    config = _config(tmp_path)
    async with await LibraryStore.open(config.db_path) as store:
        await library.scan(store, FolderAdapter(music))
        # After the scan, before the analysis reaches them: deleted, and made unreadable
        # as a regular file (root reads through any permission bits, so a FIFO it is).
        gone.unlink()
        fifo.unlink()
        os.mkfifo(fifo)
        report = await library.analyse(store, config)
        failures = {Path(t.path).name: reason for t, reason, _ in await store.failures()}
        version = library.analyzer_settings(config).version
        analysed = {Path(a.track.path).name for a in await store.analysed(version)}

    expected_total = len(cases) + len(files.GOOD) + 3
    assert report.total == expected_total
    assert set(files.GOOD) <= analysed
    assert latin1.name in analysed
    for case in cases:
        _check(case, case.name in analysed, failures.get(case.name))
    assert failures[gone.name] == "file not found"
    assert failures[fifo.name] == "not a regular file"
    assert report.analysed + report.failed == expected_total
    assert report.failed == len(failures)


def test_failures_are_listed_by_the_cli(tmp_path: Path) -> None:
    """``musegate status --failures --json`` shows each failed path with its reason."""
    music = tmp_path / "music"
    files.build(music, {k: files.FAST_CASES[k] for k in ("trunc10.wav", "empty.mp3")})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSEGATE_WORKERS": "1"}
    base = [sys.executable, "-m", "cli", "--data-dir", str(tmp_path / "d")]
    run = subprocess.run([*base, "analyze", str(music), "--no-progress"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "2 failed" in run.stdout
    status = subprocess.run([*base, "status", "--failures", "--json"], env=env,
                            capture_output=True, text=True, timeout=120)
    shown = {Path(f["path"]).name: f["reason"] for f in json.loads(status.stdout)["failures"]}
    assert shown["empty.mp3"] == "empty audio file"
    assert shown["trunc10.wav"].startswith("corrupt or truncated audio: the header promises 30.0 s")


def test_peak_memory_per_bad_file_is_bounded(tmp_path: Path) -> None:
    music = tmp_path / "music"
    cases = files.build(music, files.FAST_CASES)
    # a sparse 1 GiB WAV (1.7 hours): free on disk, decoded only where it is sampled
    sparse = files.sparse_wav(music / "sparse-1g.wav", 1 << 30)
    names = [c.name for c in cases] + files.GOOD + [sparse.name]
    peaks = probe_peaks("sampled", [music / n for n in names])
    for case in cases:
        row = peaks[case.name]
        _check(case, row["analysed"], row["reason"])
    assert peaks[sparse.name]["analysed"]
    assert peaks[sparse.name]["duration"] == pytest.approx(((1 << 30) - 44) / (44100 * 4))
    for name, row in peaks.items():
        assert (row["peak_kb"] - row["rss_before_kb"]) / 1024 < PEAK_BOUND_MB, (name, row)
    _print_table(peaks)


def test_a_track_longer_than_max_duration_is_refused_before_decoding(tmp_path: Path) -> None:
    from analysis.decode import DecodeError
    from analysis.pipeline import analyse_file
    from analysis.sampling import FULL

    sparse = files.sparse_wav(tmp_path / "long.wav", 1 << 30)
    with pytest.raises(DecodeError, match=r"too long to analyse: 1:41:27, the limit is 1:00:00"):
        analyse_file(sparse, None, FULL, max_duration=3600)  # type: ignore[arg-type]


@pytest.mark.reliability
def test_multi_gigabyte_sparse_files(tmp_path: Path) -> None:
    """4 GiB WAV (6.8 h, over the default 6 h limit) is refused; 2 GiB (3.4 h) is analysed
    in sampled mode with bounded memory; a 6-hour silent FLAC likewise."""
    big = files.sparse_wav(tmp_path / "sparse-4g.wav", (4 << 30) - 64)
    mid = files.sparse_wav(tmp_path / "sparse-2g.wav", 2 << 30)
    flac = tmp_path / "silent-6h.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "anullsrc=r=44100:cl=stereo", "-t", "21590", "-c:a", "flac", str(flac)],
                   check=True, timeout=1200)
    peaks = probe_peaks("sampled", [big, mid, flac])
    assert not peaks[big.name]["analysed"]
    assert "too long to analyse: 6:45:48" in peaks[big.name]["reason"]
    assert peaks[mid.name]["analysed"] and peaks[flac.name]["analysed"]
    for name, row in peaks.items():
        assert (row["peak_kb"] - row["rss_before_kb"]) / 1024 < PEAK_BOUND_MB, (name, row)
    _print_table(peaks)


class _Trickle:
    """A loopback "music server" that answers a download with headers and then one byte
    every half second, forever: fetching it never fails and never finishes, the way a
    decoder stuck on a stalled network mount or a pathological file behaves."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/rest/download.view"
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import threading

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn) -> None:
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: audio/flac\r\n"
                         b"Content-Length: 100000000\r\n\r\nfLaC")
            while not self.stop.wait(0.5):
                try:
                    conn.sendall(b"\0")
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.mark.reliability
async def test_a_hung_decode_is_killed_recorded_and_the_others_still_run(tmp_path: Path) -> None:
    from analysis.executors import AnalysisTask, LocalPoolExecutor, timed_out
    from analysis.sampling import FAST

    good = files.build(tmp_path / "m", {})  # only the good songs
    assert good == []
    songs = [tmp_path / "m" / n for n in files.GOOD]
    server = _Trickle()
    pool = LocalPoolExecutor(1, None, 1, FAST, timeout=60)
    try:
        await pool.start()
        assert pool.capacity() == 1
        first = await pool.submit(AnalysisTask(1, str(songs[0]), FAST))
        assert first.analysis is not None, first.reason
        # More than capacity on purpose: the song queues behind the hang in the same
        # worker, is lost with it when it is killed, and must be run again, not failed.
        hung = pool.submit(AnalysisTask(2, server.url, FAST))
        behind = pool.submit(AnalysisTask(3, str(songs[1]), FAST))
        assert (await hung).reason == timed_out(60)
        after = await behind
        assert after.analysis is not None, after.reason  # a fresh worker took over
        again = await pool.submit(AnalysisTask(4, str(songs[2]), FAST))
        assert again.analysis is not None, again.reason
    finally:
        await pool.close()
        server.close()


def _print_table(peaks: dict[str, dict]) -> None:
    """The figures for docs/reliability.md (visible with ``pytest -s``)."""
    for name, row in peaks.items():
        outcome = "analysed" if row["analysed"] else f"failed: {row['reason']}"
        extra = (row["peak_kb"] - row["rss_before_kb"]) / 1024
        print(f"| {name} | {outcome} | {row['peak_kb'] / 1024:.0f} MB (+{extra:.1f}) |")
