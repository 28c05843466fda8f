"""The similarity index: exact/HNSW switching, add/remove, and persistence that never crashes."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from index import faiss_index
from index.faiss_index import SimilarityIndex, hnsw_params, load_or_build
from tests.catalogue_factory import make_library


@pytest.fixture(scope="module")
def lib():
    return make_library(n_clusters=6, per_cluster=50, spread=0.6, seed=3)


def test_exact_search_finds_itself_first_with_cosine_scores(lib) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids, cat.vectors)
    assert index.kind == "flat"
    assert len(index) == len(cat)
    sims, ids = index.search(cat.vectors[:4], 5)
    assert sims.shape == ids.shape == (4, 5)
    assert list(ids[:, 0]) == list(cat.ids[:4])
    assert np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    expected = cat.vectors[:4] @ cat.vectors.T
    assert np.allclose(sims[:, 1], np.sort(expected, axis=1)[:, -2], atol=1e-5)


def test_single_query_and_missing_slots(lib) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids[:3], cat.vectors[:3])
    sims, ids = index.search(cat.vectors[0] * 7.0, 5)  # scale does not change the cosine
    assert ids.shape == (1, 5)
    assert ids[0, 0] == cat.ids[0] and np.isclose(sims[0, 0], 1.0, atol=1e-5)
    assert list(ids[0, 3:]) == [-1, -1]
    assert np.all(np.isneginf(sims[0, 3:]))
    empty = SimilarityIndex.build(np.zeros(0, np.int64), np.zeros((0, 200), np.float32))
    assert len(empty) == 0
    assert list(empty.search(cat.vectors[0], 2)[1][0]) == [-1, -1]


def test_hnsw_above_threshold_gives_the_same_top_results_on_clustered_data(lib) -> None:
    cat = lib.cat
    flat = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=10_000)
    hnsw = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=50)
    assert (flat.kind, hnsw.kind) == ("flat", "hnsw")
    queries = cat.vectors[::7]
    _, exact = flat.search(queries, 10)
    _, approx = hnsw.search(queries, 10)
    assert np.array_equal(exact[:, 0], approx[:, 0])
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.95


def test_add_switches_to_hnsw_at_the_threshold_and_keeps_everything(lib) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids[:40], cat.vectors[:40], hnsw_threshold=100)
    assert index.kind == "flat"
    index.add(cat.ids[40:100], cat.vectors[40:100])
    assert index.kind == "flat" and len(index) == 100
    index.add(cat.ids[100:], cat.vectors[100:])
    assert index.kind == "hnsw" and len(index) == len(cat)
    assert all(int(t) in index for t in cat.ids)
    _, ids = index.search(cat.vectors[150], 1)
    assert ids[0, 0] == cat.ids[150]


def test_add_replaces_a_reanalysed_track(lib) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids[:20], cat.vectors[:20])
    index.add(cat.ids[:1], cat.vectors[30:31])
    assert len(index) == 20
    assert np.allclose(index.vector(int(cat.ids[0])), cat.vectors[30])
    with pytest.raises(ValueError):
        index.add(cat.ids[:2], cat.vectors[:1])


@pytest.mark.parametrize("threshold", [10_000, 50])
def test_removed_tracks_are_never_returned(lib, threshold: int) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=threshold)
    gone = cat.ids[:30]
    assert index.remove(np.concatenate([gone, [999_999]])) == 30
    assert index.remove(gone) == 0
    assert len(index) == len(cat) - 30
    assert not any(int(t) in index for t in gone)
    assert 999_999 not in index and "nonsense" not in index
    _, ids = index.search(cat.vectors[:30], 20)
    assert not set(ids.ravel()) & set(gone.tolist())
    _, ids = index.search(cat.vectors[40], 1)
    assert ids[0, 0] == cat.ids[40]
    # after many removals the HNSW graph is rebuilt without tombstones
    index.remove(cat.ids[30:150])
    assert len(index) == len(cat) - 150
    assert set(index.ids.tolist()) == set(cat.ids[150:].tolist())


@pytest.mark.parametrize("threshold", [10_000, 50])
def test_save_load_round_trip(tmp_path: Path, lib, threshold: int) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=threshold)
    index.remove(cat.ids[:5])  # tombstones (HNSW) survive the round trip
    path = tmp_path / "sub" / "index.faiss"
    index.save(path)
    loaded = SimilarityIndex.load(path, expected_ids=cat.ids[5:])
    assert loaded is not None
    assert loaded.kind == index.kind and len(loaded) == len(index)
    a = index.search(cat.vectors[::11], 8)
    b = loaded.search(cat.vectors[::11], 8)
    assert np.array_equal(a[1], b[1]) and np.allclose(a[0], b[0])
    assert not list(tmp_path.glob("sub/*.tmp"))


def _saved(tmp_path: Path, lib) -> Path:
    path = tmp_path / "index.faiss"
    SimilarityIndex.build(lib.cat.ids, lib.cat.vectors).save(path)
    return path


def test_load_returns_none_for_missing_garbage_truncated_and_stale(tmp_path: Path, lib) -> None:
    cat = lib.cat
    assert SimilarityIndex.load(tmp_path / "nope.faiss") is None
    path = _saved(tmp_path, lib)
    data = path.read_bytes()
    assert SimilarityIndex.load(path, cat.ids) is not None
    assert SimilarityIndex.load(path, cat.ids[1:]) is None  # a track left
    assert SimilarityIndex.load(path, np.append(cat.ids, 10_000)) is None  # a track arrived
    (tmp_path / "garbage").write_bytes(np.random.default_rng(0).bytes(5000))
    assert SimilarityIndex.load(tmp_path / "garbage") is None
    (tmp_path / "truncated").write_bytes(data[: len(data) // 2])
    assert SimilarityIndex.load(tmp_path / "truncated") is None
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    assert SimilarityIndex.load(tmp_path / "flipped") is None
    (tmp_path / "empty").write_bytes(b"")
    assert SimilarityIndex.load(tmp_path / "empty") is None
    (tmp_path / "dir").mkdir()
    assert SimilarityIndex.load(tmp_path / "dir") is None


def test_load_or_build_rebuilds_and_saves(tmp_path: Path, lib) -> None:
    cat = lib.cat
    path = tmp_path / "index.faiss"
    index, status = load_or_build(path, cat.ids, cat.vectors)
    assert status.startswith("rebuilt: missing")
    assert len(index) == len(cat) and path.exists()
    index, status = load_or_build(path, cat.ids, cat.vectors)
    assert status == "loaded"

    path.write_bytes(b"\x00garbage" * 100)
    index, status = load_or_build(path, cat.ids, cat.vectors)
    assert status.startswith("rebuilt: corrupt") and len(index) == len(cat)
    assert load_or_build(path, cat.ids, cat.vectors)[1] == "loaded"

    path.write_bytes(path.read_bytes()[:-100])
    assert load_or_build(path, cat.ids, cat.vectors)[1].startswith("rebuilt: corrupt")

    index, status = load_or_build(path, cat.ids[10:], cat.vectors[10:])
    assert status.startswith("rebuilt: stale") and len(index) == len(cat) - 10
    assert int(cat.ids[0]) not in index

    changed = cat.vectors[10:].copy()
    changed[::2] = changed[::2][:, ::-1]
    index, status = load_or_build(path, cat.ids[10:], changed)
    assert status.startswith("rebuilt: stale")
    assert np.allclose(index.vector(int(cat.ids[10])), changed[0])


def test_load_or_build_switches_kind_with_the_threshold(tmp_path: Path, lib) -> None:
    cat = lib.cat
    path = tmp_path / "index.faiss"
    index, _ = load_or_build(path, cat.ids, cat.vectors, hnsw_threshold=10_000)
    assert index.kind == "flat"
    index, status = load_or_build(path, cat.ids, cat.vectors, hnsw_threshold=50)
    assert status.startswith("rebuilt") and index.kind == "hnsw"
    assert load_or_build(path, cat.ids, cat.vectors, hnsw_threshold=50)[1] == "loaded"


def test_unwritable_location_still_gives_an_index(tmp_path: Path, lib) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    index, status = load_or_build(blocker / "index.faiss", lib.cat.ids, lib.cat.vectors)
    assert len(index) == len(lib.cat)
    assert "not saved" in status


def test_failed_save_leaves_no_temp_file(tmp_path: Path, lib, monkeypatch) -> None:
    import os as _os

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_os, "fsync", full_disk)
    index, status = load_or_build(tmp_path / "index.faiss", lib.cat.ids, lib.cat.vectors)
    assert len(index) == len(lib.cat) and "not saved" in status
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threshold", [10_000, 50])  # flat, HNSW
def test_shared_vectors_answer_exactly_as_the_owned_copy(tmp_path: Path, lib, threshold: int) -> None:
    cat = lib.cat
    vectors = cat.vectors.copy()
    owned = SimilarityIndex.build(cat.ids, vectors, hnsw_threshold=threshold)
    shared = SimilarityIndex.build(cat.ids, vectors, hnsw_threshold=threshold)
    before = shared.memory_bytes()
    assert shared.use_vectors(cat.ids, vectors) and shared.shares_vectors
    assert shared.memory_bytes() == before - vectors.nbytes
    assert not vectors.flags.writeable  # the index reads it: nobody may write to it
    for a, b in zip(owned.search(vectors[:40], 15), shared.search(vectors[:40], 15), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(shared.vector(int(cat.ids[7])), vectors[7])
    shared.save(tmp_path / "i.idx")  # the file holds the vectors, whoever owns them
    loaded = SimilarityIndex.load(tmp_path / "i.idx", cat.ids, vectors)
    assert loaded is not None and not loaded.shares_vectors
    assert np.array_equal(loaded.search(vectors[:5], 5)[1], owned.search(vectors[:5], 5)[1])


def test_shared_vectors_are_refused_unless_rows_are_positions(lib) -> None:
    cat = lib.cat
    index = SimilarityIndex.build(cat.ids, cat.vectors)
    assert not index.use_vectors(cat.ids[::-1], cat.vectors[::-1].copy())  # another order
    assert not index.use_vectors(cat.ids, cat.vectors + np.float32(1e-3))  # other vectors
    assert not index.use_vectors(cat.ids, cat.vectors.astype(np.float64))
    assert not index.shares_vectors
    hnsw = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=50)
    hnsw.remove(cat.ids[:1])  # a tombstone: position 0 is no catalogue row any more
    assert not hnsw.use_vectors(cat.ids[1:], cat.vectors[1:].copy())


@pytest.mark.parametrize("threshold", [10_000, 50])
def test_changing_a_sharing_index_takes_its_own_copy_first(lib, threshold: int) -> None:
    cat = lib.cat
    vectors = cat.vectors[:-20].copy()
    index = SimilarityIndex.build(cat.ids[:-20], vectors, hnsw_threshold=threshold)
    assert index.use_vectors(cat.ids[:-20], vectors)
    index.add(cat.ids[-20:], cat.vectors[-20:])  # FAISS writes to its storage now
    index.remove(cat.ids[:3])
    assert not index.shares_vectors or threshold == 50  # HNSW remove only marks tombstones
    assert len(index) == len(cat) - 3
    sims, found = index.search(cat.vectors[-20:], 1)
    assert list(found[:, 0]) == list(cat.ids[-20:])
    assert np.allclose(sims[:, 0], 1.0, atol=1e-5)
    assert cat.ids[0] not in set(index.search(cat.vectors[:3], 10)[1].ravel().tolist())
    # appended in id order with no tombstones, rows are positions again: shared once more
    grown = SimilarityIndex.build(cat.ids[:-20], vectors, hnsw_threshold=threshold)
    assert grown.use_vectors(cat.ids[:-20], vectors)
    grown.add(cat.ids[-20:], cat.vectors[-20:])
    assert not grown.shares_vectors
    assert grown.use_vectors(cat.ids, cat.vectors.copy())


# ---- efSearch by library size (index.faiss_index.hnsw_params, bench/hnsw_sweep.py) ----------


def test_the_search_beam_widens_with_the_library_and_never_narrows() -> None:
    sizes = [1, 20_000, 100_000, 300_000, 300_001, 1_000_000, 1_000_001, 10_000_000]
    beams = [hnsw_params(n).ef_search for n in sizes]
    assert beams == sorted(beams)
    # the measured points: 96 kept recall 1.000 at 100k and 300k, 1M needed 128
    assert (hnsw_params(100_000).ef_search, hnsw_params(300_000).ef_search,
            hnsw_params(1_000_000).ef_search) == (96, 96, 128)
    assert hnsw_params(2_000_000).ef_search > 128
    assert {(hnsw_params(n).m, hnsw_params(n).ef_construction) for n in sizes} == {(32, 80)}


def test_an_index_searches_with_its_size_beam_unless_one_was_set(lib, monkeypatch) -> None:
    cat = lib.cat
    monkeypatch.setattr(faiss_index, "EF_SEARCH_BY_SIZE", ((200, 40), (2**62, 70)))
    asked: list[int] = []
    real = faiss_index.faiss.SearchParametersHNSW

    def spy(**kwargs):
        asked.append(kwargs["efSearch"])
        return real(**kwargs)

    monkeypatch.setattr(faiss_index.faiss, "SearchParametersHNSW", spy)
    index = SimilarityIndex.build(cat.ids[:150], cat.vectors[:150], hnsw_threshold=50)
    index.search(cat.vectors[0], 10)
    index.add(cat.ids[150:], cat.vectors[150:])  # 300 tracks now: the next size's beam
    index.search(cat.vectors[0], 10)
    index.search(cat.vectors[0], 90)  # never below k
    fixed = SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=50, ef_search=55)
    fixed.search(cat.vectors[0], 10)
    assert asked == [40, 70, 90, 55]


def _rewrite_header(path: Path, change) -> None:
    """The file with its JSON header edited and its checksum made right again."""
    data = path.read_bytes()
    start = len(faiss_index.MAGIC)
    (size,) = struct.unpack("<I", data[start:start + 4])
    header = json.loads(data[start + 4:start + 4 + size])
    change(header)
    raw = json.dumps(header).encode()
    body = data[:start] + struct.pack("<I", len(raw)) + raw + data[start + 4 + size:-32]
    path.write_bytes(body + hashlib.sha256(body).digest())


def test_saved_beams_load_as_set_or_by_size_and_older_files_follow_the_size(
    tmp_path: Path, lib
) -> None:
    cat = lib.cat
    auto, fixed, legacy = (tmp_path / name for name in ("auto", "fixed", "legacy"))
    SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=50).save(auto)
    SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=50, ef_search=55).save(fixed)
    SimilarityIndex.build(cat.ids, cat.vectors, hnsw_threshold=50).save(legacy)
    # as the code before the rule wrote it: the constant 96, no rule
    _rewrite_header(legacy, lambda h: (h.pop("ef_search_rule"), h.update(ef_search=96)))
    loaded = {p.name: SimilarityIndex.load(p, expected_ids=cat.ids) for p in (auto, fixed, legacy)}
    assert loaded["auto"].ef_search is None and loaded["legacy"].ef_search is None
    assert loaded["legacy"].search_beam == hnsw_params(len(cat.ids)).ef_search
    assert loaded["fixed"].ef_search == 55
    # a reader of the format before the rule gets an int beam from a new file
    header = json.loads(auto.read_bytes()[len(faiss_index.MAGIC) + 4:].split(b"}")[0] + b"}")
    assert header["ef_search"] == hnsw_params(len(cat.ids)).ef_search
