"""The playlist-feature commands on a store of synthetic analyses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main
from tests.store_factory import FilledLibrary, fill_store, make_config


@pytest.fixture
async def lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FilledLibrary:
    config = make_config(tmp_path)
    filled = await fill_store(config)
    for key in list(os.environ):
        if key.startswith("MUSEGATE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MUSEGATE_DATA_DIR", config.data_dir)
    monkeypatch.setenv("MUSEGATE_LIBRARY_PATH", config.library_path)
    monkeypatch.setenv("MUSEGATE_PLAYLIST_DIR", config.playlist_dir)
    monkeypatch.chdir(tmp_path)
    return filled


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _id(lib: FilledLibrary, style: str, n: int) -> int:
    return lib.ids[f"{style}/{style} Artist {(n - 1) % 3 + 1}/{n:02d} {style} song {n}.flac"]


# main() runs its own event loop, so these tests are plain functions using an async fixture
# only for setup; pytest-asyncio runs the fixture first.

def test_similar_several_seeds_album_artist(lib: FilledLibrary, capsys) -> None:
    a, b = _id(lib, "Piano", 1), _id(lib, "Piano", 2)
    code, out, _ = run(capsys, "similar", str(a), str(b), "-n", "4", "--json")
    assert code == 0
    data = json.loads(out)
    assert [t["id"] for t in data["seeds"]] == [a, b] and data["seed"]["id"] == a
    ids = [t["id"] for t in data["similar"]]
    assert len(ids) == 4 and a not in ids and b not in ids
    assert all(lib.style_of[i] == "Piano" for i in ids)
    code, out, _ = run(capsys, "similar", "--album", "Jazz Artist 2 album", "-n", "3")
    assert code == 0 and "Similar to" in out and out.count("Jazz song") >= 3
    code, out, _ = run(capsys, "similar", "--artist", "Metal Artist 1", "-n", "3", "--json")
    assert all(lib.style_of[t["id"]] == "Metal" for t in json.loads(out)["similar"])
    code, _, err = run(capsys, "similar")
    assert code == 2 and "--album" in err
    code, _, err = run(capsys, "similar", "--artist", "Nobody")
    assert code == 1 and "Nobody" in err
    code, _, err = run(capsys, "similar", str(a), "--mood", "sad")
    assert code == 2 and "TAG=VALUE" in err


def test_path_with_waypoint_and_export(lib: FilledLibrary, capsys) -> None:
    start, end, via = _id(lib, "Piano", 1), _id(lib, "Metal", 1), _id(lib, "Jazz", 1)
    code, out, _ = run(capsys, "path", str(start), str(end), "-n", "7", "--via", str(via),
                       "--json", "--export", "Piano to metal")
    assert code == 0
    data = json.loads(out)
    ids = [t["id"] for t in data["tracks"]]
    assert ids[0] == start and ids[-1] == end and via in ids and len(set(ids)) == 7
    playlist = Path(data["exported"])
    assert playlist.name == "Piano to metal.m3u8"
    text = playlist.read_text(encoding="utf-8").splitlines()
    assert text[0] == "#EXTM3U" and len(text) == 1 + 2 * 7
    assert text[1].startswith("#EXTINF:180,Piano Artist 1 - Piano song 1")
    code, _, err = run(capsys, "path", str(start), str(start))
    assert code == 2


def test_alchemy(lib: FilledLibrary, capsys) -> None:
    code, out, _ = run(capsys, "alchemy", "--add", str(_id(lib, "Folk", 1)), "--add", "tag:folk",
                       "--subtract", "artist:Folk Artist 2", "-n", "4", "--json")
    assert code == 0
    data = json.loads(out)
    assert len(data["tracks"]) == 4
    assert all(lib.artist_of[t["id"]] != "Folk Artist 2" for t in data["tracks"])
    assert data["projection"]
    code, _, err = run(capsys, "alchemy", "--add", "tag:nonsense")
    assert code == 2 and "nonsense" in err
    code, _, err = run(capsys, "alchemy")
    assert code == 2


def test_cluster(lib: FilledLibrary, capsys) -> None:
    code, out, _ = run(capsys, "cluster", "-n", "3", "--trials", "4", "--json", "--export")
    assert code == 0
    data = json.loads(out)
    assert len(data["playlists"]) == 3
    for pl in data["playlists"]:
        assert Path(pl["exported"]).exists() and pl["track_ids"]
    code, _, err = run(capsys, "cluster", "-n", "40")
    assert code == 1 and "needs at least" in err


def test_instant(lib: FilledLibrary, capsys) -> None:
    code, out, _ = run(capsys, "instant", "sad slow songs", "-n", "4")
    assert code == 0 and "Read as (builtin)" in out and "Piano song" in out
    code, out, _ = run(capsys, "instant", "fast dance music", "-n", "3", "--json")
    data = json.loads(out)
    assert data["interpretation"]["source"] == "builtin" and len(data["tracks"]) == 3


def test_fingerprint_folder_is_a_clear_error(lib: FilledLibrary, capsys) -> None:
    code, _, err = run(capsys, "fingerprint")
    assert code == 1 and "no listening history" in err


def test_config_shows_new_keys_with_secret_masked(lib: FilledLibrary, capsys,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSEGATE_LLM_API_KEY", "sk-very-secret")
    monkeypatch.setenv("MUSEGATE_LLM_PROVIDER", "openai")
    code, out, _ = run(capsys, "config", "--json")
    data = json.loads(out)
    assert code == 0 and data["llm_api_key"] == "***" and "sk-very-secret" not in out
    assert data["llm_provider"] == "openai" and data["base_path"] == "/musegate"
    assert data["max_per_artist"] == 3 and data["hnsw_threshold"] == 20_000
    monkeypatch.setenv("MUSEGATE_LLM_PROVIDER", "gpt")
    code, _, err = run(capsys, "config")
    assert code == 2 and "llm_provider" in err
    monkeypatch.setenv("MUSEGATE_LLM_PROVIDER", "")
    monkeypatch.setenv("MUSEGATE_PORT", "70000")
    code, _, err = run(capsys, "config")
    assert code == 2 and "at most 65535" in err
