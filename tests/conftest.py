"""Shared fixtures: generated audio only, so the suite needs no music and no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SR = 22050


def sine_mix(freqs: list[float], seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    y = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs) / max(len(freqs), 1)
    return (0.5 * y).astype(np.float32)


def write_track(path: Path, audio: np.ndarray, sr: int = SR, **tags: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr)
    if tags:
        from mutagen import File

        meta = File(path, easy=True)
        if meta is not None:
            if meta.tags is None and hasattr(meta, "add_tags"):
                meta.add_tags()
            for key, value in tags.items():
                meta[key] = value
            meta.save()
    return path


@pytest.fixture
def small_library(tmp_path: Path) -> Path:
    """Six short FLAC tracks in three obviously different families."""
    root = tmp_path / "music"
    families = {
        "low": [55.0, 110.0],
        "mid": [440.0, 660.0],
        "noise": [],
    }
    for name, freqs in families.items():
        for i in range(2):
            if freqs:
                audio = sine_mix([f * (1 + 0.01 * i) for f in freqs], 12.0, seed=i)
            else:
                audio = (np.random.default_rng(i).standard_normal(12 * SR) * 0.2).astype(np.float32)
            write_track(
                root / name / f"{name}{i}.flac", audio, title=f"{name} {i}", artist=f"artist {name}"
            )
    return root


async def fill_the_disk(store) -> None:
    """Make the database unable to grow: SQLite's page cap fails writes with the same
    SQLITE_FULL a full disk gives, without needing a small filesystem."""
    async with store._db.execute("PRAGMA page_count") as cur:
        (pages,) = await cur.fetchone()
    await store._db.execute(f"PRAGMA max_page_count = {pages}")


@pytest.fixture
def disk_fills_after_first_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first batch of analyses is saved; from the second on, the disk is full.

    Batches are cut by size only: the writer's time-based flush would cut a batch early
    on a slow or busy machine, and the tests count what the first batch saved.
    """
    from analysis import analyzer
    from analysis.store import LibraryStore

    monkeypatch.setattr(analyzer, "FLUSH_SECONDS", float("inf"))
    real_write = LibraryStore.write_results
    writes = {"n": 0}

    async def write_then_fill(self, analyses, failures=()):
        writes["n"] += 1
        if writes["n"] == 2:
            await fill_the_disk(self)
        return await real_write(self, analyses, failures)

    monkeypatch.setattr(LibraryStore, "write_results", write_then_fill)


# ---------------------------------------------------------------------------- secrets in logs


def pytest_configure(config: pytest.Config) -> None:
    from tests import secret_watch

    secret_watch.install()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when any known test secret reached any log (tests/secret_watch.py)."""
    from tests import secret_watch

    found = secret_watch.hits()
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("secrets found in log output:", red=True)
            for line in found:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
