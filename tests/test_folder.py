import os
from pathlib import Path

import numpy as np
import pytest

import adapters.folder as folder
from adapters.folder import FolderAdapter
from analysis.store import LibraryStore
from musegate import library
from tests.conftest import sine_mix, write_track


async def test_scan_reads_tags_and_is_incremental(tmp_path: Path, small_library: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (small_library / "notes.txt").write_text("not audio")
    (small_library / ".hidden.flac").write_bytes(b"")
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        adapter = FolderAdapter(small_library)
        r = await library.scan(store, adapter)
        assert r.added == 6
        tracks = await store.tracks_of_source(adapter.source)
        low0 = tracks["low/low0.flac"]
        assert (low0.title, low0.artist) == ("low 0", "artist low")
        assert low0.duration == pytest.approx(12.0, abs=0.01)
        assert low0.path == str(small_library / "low" / "low0.flac")

        # unchanged files are not opened again
        calls: list[Path] = []
        monkeypatch.setattr(folder, "read_tags", lambda p: calls.append(p) or {})
        r = await library.scan(store, adapter)
        assert (r.added, r.changed, r.removed, r.unchanged) == (0, 0, 0, 6)
        assert calls == []
        monkeypatch.undo()

        # a touched file is re-read, a deleted one leaves the library
        os.utime(small_library / "mid" / "mid0.flac", (1, 1))
        (small_library / "noise" / "noise1.flac").unlink()
        r = await library.scan(store, adapter)
        assert (r.added, r.changed, r.removed, r.unchanged) == (0, 1, 1, 4)


async def test_file_that_vanishes_mid_scan(tmp_path: Path, small_library: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    victim = small_library / "low" / "low1.flac"
    real_stat = Path.stat

    def stat(self: Path, *a: object, **kw: object) -> os.stat_result:
        if self == victim and os.path.exists(victim):
            os.unlink(victim)  # deleted between the directory listing and the stat
        return real_stat(self, *a, **kw)

    monkeypatch.setattr(Path, "stat", stat)
    async with await LibraryStore.open(tmp_path / "lib.db") as store:
        adapter = FolderAdapter(small_library)
        r = await library.scan(store, adapter)
        assert r.added == 5
        assert "low/low1.flac" not in await store.tracks_of_source(adapter.source)


async def test_untagged_and_missing_folder(tmp_path: Path) -> None:
    write_track(tmp_path / "m" / "Some Song.wav", sine_mix([300.0], 1.0))
    adapter = FolderAdapter(tmp_path / "m")
    (track,) = await adapter.list_tracks({})
    assert track.title == "Some Song" and track.artist is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        await FolderAdapter(tmp_path / "nope").list_tracks({})


def test_read_tags_survives_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp3"
    bad.write_bytes(np.random.default_rng(0).bytes(4000))
    assert folder.read_tags(bad)["title"] == "bad"
