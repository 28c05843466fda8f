"""The FAISS index every similarity feature searches, with persistence that never crashes.

Exact inner-product search (``IndexFlatIP`` on L2-normalised vectors, so the
score is cosine similarity) stays under about a millisecond per query up to
about 20k tracks; above ``hnsw_threshold`` an HNSW graph answers in under a
millisecond (bench/index_threshold.py). Its search beam widens with the library
(``hnsw_params``), because a bigger graph loses recall at a fixed beam: at 1M
tracks the old constant 96 fell to recall@20 0.987-0.990 (bench/hnsw_sweep.py).
Both sit behind one interface.

FAISS labels are internal *positions*, not track ids: ``_ids[pos]`` maps back.
The flat index removes vectors for real (positions shift, ``_ids`` shifts with
them); HNSW cannot delete from its graph, so removed positions become
tombstones that searches skip through an ``IDSelector`` until enough pile up to
justify a rebuild.

The vectors are kept once. Once built or loaded, the index can read them
straight from the catalogue's matrix (:meth:`SimilarityIndex.use_vectors`):
FAISS's flat storage becomes a view of that numpy array instead of a second
copy (76 MiB at 100k tracks). That holds while index positions are the
catalogue's rows, in its order, with no tombstones; before FAISS would write
to its storage (add, remove) the index takes its own copy again.

The index is derived data. Its file is a small header, the id column and the
serialised FAISS index, closed by a SHA-256 of everything before it, so a
truncated or damaged file is detected and the caller rebuilds from the store.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np

MAGIC = b"MUSEGATE-INDEX\x00\x01"
FORMAT_VERSION = 1
DEFAULT_HNSW_THRESHOLD = 20_000
_DIGEST = 32
# Rebuild the HNSW graph once this share of its nodes are tombstones: filtered
# graph search loses recall and speed as dead nodes accumulate.
_MAX_DEAD_SHARE = 0.2
# Up to this many queries per call run on one FAISS thread: OpenMP's fork/join and
# spin-waiting cost more than a single query's scan, and on a loaded two-core box
# they turned a 0.7 ms query into 16 ms (bench/scale.py). Batches keep every core.
_SERIAL_QUERIES = 4
_threads_lock = threading.Lock()


@dataclass(frozen=True)
class HnswParams:
    """The HNSW graph's degree (M), its build-time beam (efConstruction) and the search beam."""

    m: int
    ef_construction: int
    ef_search: int


#: (library size up to which, efSearch), smallest first; past the last size the last one.
#: Chosen by bench/hnsw_sweep.py on the centred vectors the server searches, as the
#: smallest efSearch whose recall@10 and recall@20 were both >= 0.99 on every query
#: sample: 96 kept recall 1.000 at 100k and 300k; at 1M it gave 0.9905 / 0.9865 on two
#: samples (1,000 and 2,000 queries), 112 0.9953 / 0.9900, 128 0.9963 / 0.9929 (p50
#: 0.55-0.69 ms, within noise of 96's). Past 1M nothing was measured: 160 (0.9983 /
#: 0.9953 at 1M) keeps the margin that a bigger graph's lower recall will eat.
EF_SEARCH_BY_SIZE: tuple[tuple[int, int], ...] = ((300_000, 96), (1_000_000, 128), (2**62, 160))
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80


def hnsw_params(tracks: int) -> HnswParams:
    """The HNSW settings for a library of ``tracks``: a larger graph needs a wider search
    beam for the same recall (at 1M tracks efSearch 96 gave recall@20 0.988, under the
    0.99 target), while a small one would only pay for a beam it does not need."""
    ef = next((ef for upto, ef in EF_SEARCH_BY_SIZE if tracks <= upto), EF_SEARCH_BY_SIZE[-1][1])
    return HnswParams(HNSW_M, HNSW_EF_CONSTRUCTION, ef)


@contextmanager
def _one_faiss_thread() -> Iterator[None]:
    """FAISS's thread count is process-wide, so the switch and its undo are serialised."""
    with _threads_lock:
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            yield
        finally:
            faiss.omp_set_num_threads(before)


def _as_matrix(vectors: np.ndarray) -> np.ndarray:
    m = np.ascontiguousarray(vectors, dtype=np.float32)
    return m[None, :] if m.ndim == 1 else m


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Queries are normalised so returned scores are cosines whatever the caller passed."""
    m = _as_matrix(vectors)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.ascontiguousarray(m / np.where(norms > 0, norms, 1.0), dtype=np.float32)


class _Positions:
    """Live track id -> index position by binary search: 16 bytes a track instead of a dict
    entry and two int objects (~100 bytes; 10 MB at 100k tracks)."""

    def __init__(self, ids: np.ndarray, alive: np.ndarray) -> None:
        live = np.flatnonzero(alive)
        order = np.argsort(ids[live], kind="stable")
        self._keys = ids[live][order]
        self._positions = live[order]

    def __len__(self) -> int:
        return len(self._keys)

    def find(self, track_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found) for an int64 array; positions are garbage where not found."""
        track_ids = np.asarray(track_ids, np.int64).reshape(-1)
        if not len(self._keys):
            return np.zeros(len(track_ids), np.int64), np.zeros(len(track_ids), bool)
        at = np.minimum(np.searchsorted(self._keys, track_ids), len(self._keys) - 1)
        return self._positions[at], self._keys[at] == track_ids

    def __contains__(self, track_id: int) -> bool:
        return bool(self.find(np.array([track_id], np.int64))[1][0])

    def __getitem__(self, track_id: int) -> int:
        pos, found = self.find(np.array([track_id], np.int64))
        if not found[0]:
            raise KeyError(track_id)
        return int(pos[0])

    def duplicated(self) -> bool:
        return bool(np.any(self._keys[1:] == self._keys[:-1]))


class SimilarityIndex:
    """Cosine search over (track id, L2-normalised vector) pairs; exact or HNSW by size."""

    def __init__(
        self,
        dim: int,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        hnsw_m: int = HNSW_M,
        ef_construction: int = HNSW_EF_CONSTRUCTION,
        ef_search: int | None = None,
    ) -> None:
        self.dim = int(dim)
        self.hnsw_threshold = int(hnsw_threshold)
        self.hnsw_m = int(hnsw_m)
        self.ef_construction = int(ef_construction)
        # None: follow the library's size (hnsw_params) as tracks come and go
        self.ef_search = None if ef_search is None else int(ef_search)
        self._ids = np.zeros(0, np.int64)
        self._alive = np.zeros(0, bool)
        self._pos = _Positions(self._ids, self._alive)
        self._index: faiss.Index = self._empty("flat")
        # The matrix FAISS's storage is a view of (use_vectors), kept alive here; None:
        # FAISS owns its copy.
        self._borrowed: np.ndarray | None = None

    # construction -----------------------------------------------------------------

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        **params: int,
    ) -> SimilarityIndex:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        matrix = _as_matrix(vectors)
        if len(ids) != len(matrix):
            raise ValueError(f"{len(ids)} ids for {len(matrix)} vectors")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("track ids must be unique")
        dim = matrix.shape[1] if matrix.size else 200
        index = cls(dim, hnsw_threshold, **params)
        index._reset(ids, matrix)
        return index

    def _empty(self, kind: str) -> faiss.Index:
        if kind == "hnsw":
            graph = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = self.ef_construction
            return graph
        return faiss.IndexFlatIP(self.dim)

    def _reset(self, ids: np.ndarray, matrix: np.ndarray) -> None:
        kind = "hnsw" if len(ids) > self.hnsw_threshold else "flat"
        self._index = self._empty(kind)
        self._borrowed = None
        if len(ids):
            self._index.add(matrix)
        self._ids = ids.copy()
        self._alive = np.ones(len(ids), bool)
        self._pos = _Positions(self._ids, self._alive)

    def _live_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        live = np.flatnonzero(self._alive)
        if not len(live):
            return self._ids[:0], np.zeros((0, self.dim), np.float32)
        everything = self._index.reconstruct_n(0, self._index.ntotal)
        return self._ids[live], np.ascontiguousarray(everything[live])

    def _storage(self) -> faiss.IndexFlatCodes:
        if isinstance(self._index, faiss.IndexHNSWFlat):
            return faiss.downcast_index(self._index.storage)
        return self._index

    def use_vectors(self, ids: np.ndarray, vectors: np.ndarray) -> bool:
        """Read the stored vectors from ``vectors`` from now on and free FAISS's own copy.

        Only when ``ids`` are this index's positions (same order, no tombstones) and
        ``vectors`` is bit for bit what FAISS holds (float32, C order), so every
        answer stays exactly what it was. The array is made read-only: the index
        reads it until it next changes. Returns whether the copy was dropped.
        """
        ids = np.asarray(ids)
        if self._borrowed is vectors:
            return True
        if (not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32
                or not vectors.flags.c_contiguous or vectors.ndim != 2
                or vectors.shape != (self._index.ntotal, self.dim)
                or not len(vectors) or not bool(self._alive.all())
                or not np.array_equal(ids, self._ids)):
            return False
        storage = self._storage()
        held = faiss.rev_swig_ptr(storage.codes.data(), vectors.nbytes).view(np.float32)
        step = 8192  # row blocks: no [N, D] temporary for the comparison
        for start in range(0, len(vectors), step):
            block = slice(start, start + step)
            if not np.array_equal(held[start * self.dim : (start + step) * self.dim],
                                  vectors[block].reshape(-1)):
                return False
        vectors.flags.writeable = False
        flat = vectors.reshape(-1).view(np.uint8)
        # A view with no owner: the numpy array is kept alive by self._borrowed.
        storage.codes = faiss.MaybeOwnedVectorUInt8.create_view(
            faiss.swig_ptr(flat), vectors.nbytes, faiss.MaybeOwnedVectorUInt8().owner)
        self._borrowed = vectors
        return True

    def _own_vectors(self) -> None:
        """Copy borrowed vectors back into FAISS before it writes to its storage
        (writing to a view aborts the process)."""
        if self._borrowed is None:
            return
        storage = self._storage()
        borrowed = self._borrowed
        storage.codes = faiss.MaybeOwnedVectorUInt8()
        storage.ntotal = 0
        storage.add(borrowed)  # storage only: the HNSW graph keeps its nodes
        self._borrowed = None

    @property
    def shares_vectors(self) -> bool:
        """Whether the stored vectors are a view of the caller's matrix (use_vectors)."""
        return self._borrowed is not None

    # properties -------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """"flat" (exact) or "hnsw" (approximate), for status pages and tests."""
        return "hnsw" if isinstance(self._index, faiss.IndexHNSWFlat) else "flat"

    @property
    def ids(self) -> np.ndarray:
        """Live track ids in index order."""
        return self._ids[self._alive]

    def __len__(self) -> int:
        return len(self._pos)

    def __contains__(self, track_id: object) -> bool:
        try:
            return int(track_id) in self._pos  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            return False

    def vector(self, track_id: int) -> np.ndarray:
        """The stored vector of ``track_id``; KeyError when it is not indexed."""
        return self._index.reconstruct(self._pos[int(track_id)])

    @property
    def search_beam(self) -> int:
        """The efSearch a query gets (at least its k): the one set, else the size's."""
        return self.ef_search if self.ef_search is not None else hnsw_params(len(self)).ef_search

    def memory_bytes(self) -> int:
        """Approximate resident size, for the status page and the docs' sizing table."""
        n = self._index.ntotal
        size = (0 if self._borrowed is not None else n * self.dim * 4) + n * 8
        if self.kind == "hnsw":
            # level-0 links are 2*M int32 per node, upper levels add ~1/M of that again
            size += int(n * self.hnsw_m * 2 * 4 * (1 + 1 / self.hnsw_m)) + n * 8
        return size

    # search -----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` cosines and track ids per query, best first; missing slots are -1 / -inf."""
        q = unit_rows(queries)
        if q.shape[1] != self.dim:
            raise ValueError(f"query has {q.shape[1]} dimensions, index has {self.dim}")
        k = int(k)
        sims = np.full((len(q), max(k, 0)), -np.inf, np.float32)
        out = np.full((len(q), max(k, 0)), -1, np.int64)
        if k <= 0 or not len(self):
            return sims, out
        want = min(k, len(self))
        if len(q) <= _SERIAL_QUERIES:
            with _one_faiss_thread():
                d, pos = self._search(q, want)
        else:
            d, pos = self._search(q, want)
        found = pos >= 0
        sims[:, :want] = np.where(found, d, -np.inf)
        out[:, :want] = np.where(found, self._ids[np.where(found, pos, 0)], -1)
        return sims, out

    def _search(self, q: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        dead = np.flatnonzero(~self._alive)
        if len(dead):
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(dead))
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=max(self.search_beam, want))
            d, pos = self._index.search(q, want, params=params)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.search_beam, want))
            d, pos = self._index.search(q, want, params=params)
        else:
            d, pos = self._index.search(q, want)
        return d, pos

    # maintenance ------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Index new analyses; an id already present is replaced (its analysis changed)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        matrix = _as_matrix(vectors)
        if len(ids) != len(matrix):
            raise ValueError(f"{len(ids)} ids for {len(matrix)} vectors")
        if not len(ids):
            return
        if matrix.shape[1] != self.dim:
            raise ValueError(f"vectors have {matrix.shape[1]} dimensions, index has {self.dim}")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("track ids must be unique")
        replaced = ids[self._pos.find(ids)[1]]
        if len(replaced):
            self.remove(replaced)
        if len(self) + len(ids) > self.hnsw_threshold and self.kind == "flat":
            old_ids, old_vectors = self._live_vectors()
            self._reset(np.concatenate([old_ids, ids]), np.concatenate([old_vectors, matrix]))
            return
        self._own_vectors()
        self._index.add(matrix)
        self._ids = np.concatenate([self._ids, ids])
        self._alive = np.concatenate([self._alive, np.ones(len(ids), bool)])
        self._pos = _Positions(self._ids, self._alive)

    def remove(self, ids: np.ndarray) -> int:
        """Forget tracks that left the library; unknown ids are ignored. Returns how many went."""
        found_at, found = self._pos.find(np.asarray(ids, np.int64))
        positions = np.unique(found_at[found]).astype(np.int64)
        if not len(positions):
            return 0
        if self.kind == "flat":
            self._own_vectors()
            self._index.remove_ids(faiss.IDSelectorBatch(positions))
            keep = np.ones(len(self._ids), bool)
            keep[positions] = False
            self._ids = self._ids[keep]
            self._alive = self._alive[keep]
            self._pos = _Positions(self._ids, self._alive)
        else:
            self._alive[positions] = False
            self._pos = _Positions(self._ids, self._alive)
            dead_share = 1.0 - len(self._pos) / max(len(self._ids), 1)
            if dead_share > _MAX_DEAD_SHARE or len(self._pos) <= self.hnsw_threshold // 2:
                self._reset(*self._live_vectors())
        return len(positions)

    # persistence ------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (temp file + rename) so a crash mid-write leaves the old file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = json.dumps({
            "format": FORMAT_VERSION,
            "dim": self.dim,
            "hnsw_threshold": self.hnsw_threshold,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            # the beam in use now (what a reader of this format before the rule expects) and
            # whether it was set or follows the size
            "ef_search": self.search_beam,
            "ef_search_rule": "size" if self.ef_search is None else "fixed",
            "count": len(self._ids),
        }).encode()
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                digest = hashlib.sha256()

                def write(data: bytes) -> None:
                    digest.update(data)
                    fh.write(data)

                for part in (MAGIC, struct.pack("<I", len(header)), header,
                             self._ids.astype("<i8").tobytes(), np.packbits(self._alive).tobytes()):
                    write(part)
                # streamed: serialising to one buffer first held the index twice more
                faiss.write_index(self._index, faiss.PyCallbackIOWriter(write, _READ_BLOCK))
                fh.write(digest.digest())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            # On a full disk a half-written temp file would only take the last space left.
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        expected_ids: np.ndarray | None = None,
        expected_vectors: np.ndarray | None = None,
    ) -> SimilarityIndex | None:
        """The saved index, or None when it is missing, corrupt or stale (caller rebuilds)."""
        index, _ = _load_checked(Path(path), expected_ids, expected_vectors)
        return index


def _load_checked(
    path: Path, expected_ids: np.ndarray | None, expected_vectors: np.ndarray | None
) -> tuple[SimilarityIndex | None, str]:
    """Load and say why not; every failure is a reason string, never an exception."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the with below, after the checks
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    try:
        with fh:
            index = _parse(fh)
    except OSError as exc:
        return None, f"unreadable ({exc.__class__.__name__})"
    except Exception as exc:  # noqa: BLE001 - any damage at all means "rebuild"
        return None, f"corrupt ({exc})"
    if expected_ids is not None:
        expected = np.sort(np.asarray(expected_ids, dtype=np.int64).reshape(-1))
        if not np.array_equal(np.sort(index.ids), expected):
            return None, f"stale (index has {len(index)} tracks, store has {len(expected)})"
    if expected_vectors is not None and len(index):
        reason = _vectors_differ(index, expected_ids, expected_vectors)
        if reason:
            return None, reason
    return index, "loaded"


def _vectors_differ(
    index: SimilarityIndex, ids: np.ndarray | None, vectors: np.ndarray
) -> str | None:
    """Spot-check a few vectors: re-analysis with a new model keeps ids but changes vectors."""
    matrix = _as_matrix(vectors)
    if matrix.shape[1] != index.dim:
        return f"stale (index has {index.dim} dimensions, store has {matrix.shape[1]})"
    if ids is None:
        return None
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    picks = np.unique(np.linspace(0, len(ids) - 1, num=min(len(ids), 64)).astype(np.int64))
    stored = np.stack([index.vector(int(ids[p])) for p in picks])
    if not np.allclose(stored, matrix[picks], atol=1e-5):
        return "stale (vectors changed since the index was saved)"
    return None


#: Bytes read at a time while checking and parsing a saved index.
_READ_BLOCK = 1 << 20


def _parse(fh: BinaryIO) -> SimilarityIndex:
    """The index in an open file, streamed: the file is checked, then parsed a block at a
    time, so loading never holds it whole (at 100k tracks reading it whole, slicing and
    deserialising made four copies of ~110 MB: a 778 MiB peak for a 376 MiB server)."""
    size = os.fstat(fh.fileno()).st_size
    if size < len(MAGIC) + 4 + _DIGEST:
        raise ValueError("not a musegate index file")
    end = size - _DIGEST
    digest = hashlib.sha256()
    left = end
    while left:
        block = fh.read(min(_READ_BLOCK, left))
        if not block:
            raise ValueError("truncated")
        digest.update(block)
        left -= len(block)
    if fh.read() != digest.digest():
        raise ValueError("checksum mismatch")
    fh.seek(0)

    def take(count: int) -> bytes:
        data = fh.read(count)
        if len(data) != count or fh.tell() > end:
            raise ValueError("truncated")
        return data

    if take(len(MAGIC)) != MAGIC:
        raise ValueError("not a musegate index file")
    (header_len,) = struct.unpack("<I", take(4))
    header = json.loads(take(header_len))
    if header.get("format") != FORMAT_VERSION:
        raise ValueError(f"format {header.get('format')} is not {FORMAT_VERSION}")
    count = int(header["count"])
    ids = np.frombuffer(take(8 * count), dtype="<i8").astype(np.int64)
    alive = np.unpackbits(np.frombuffer(take((count + 7) // 8), np.uint8), count=count).astype(bool)

    def read(n: int) -> bytes:
        return fh.read(max(0, min(int(n), end - fh.tell())))

    faiss_index = faiss.read_index(faiss.PyCallbackIOReader(read, _READ_BLOCK))
    if fh.tell() != end:
        raise ValueError("trailing data after the FAISS index")
    if faiss_index.ntotal != count or faiss_index.d != int(header["dim"]):
        raise ValueError("index does not match its id column")
    # Files written before efSearch followed the size hold the constant every index had
    # then (96, never configurable): they follow the size too, the graph is the same.
    ef_search = header["ef_search"] if header.get("ef_search_rule") == "fixed" else None
    index = SimilarityIndex(
        int(header["dim"]),
        int(header["hnsw_threshold"]),
        int(header["hnsw_m"]),
        int(header["ef_construction"]),
        None if ef_search is None else int(ef_search),
    )
    index._index = faiss_index
    index._ids = ids
    index._alive = alive
    index._pos = _Positions(ids, alive)
    if index._pos.duplicated():
        raise ValueError("duplicate track ids")
    return index


def load_or_build(
    path: str | os.PathLike[str],
    ids: np.ndarray,
    vectors: np.ndarray,
    hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
    save: bool = True,
) -> tuple[SimilarityIndex, str]:
    """The saved index when it matches the store, else a fresh one (saved unless ``save`` is
    False: a read-only replica leaves the file to the writer); never raises on a bad file."""
    path = Path(path)
    index, reason = _load_checked(path, ids, vectors)
    if index is not None:
        if (index.kind == "hnsw") != (len(index) > hnsw_threshold):
            reason = "rebuilt: index kind does not match the size threshold"
        else:
            index.hnsw_threshold = int(hnsw_threshold)
            return index, "loaded"
    else:
        reason = f"rebuilt: {reason}"
    index = SimilarityIndex.build(ids, vectors, hnsw_threshold)
    if not save:
        return index, reason
    try:
        index.save(path)
    except OSError as exc:
        reason += f" (not saved: {exc.__class__.__name__})"
    return index, reason
