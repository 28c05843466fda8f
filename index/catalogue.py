"""The analysed library as column arrays: what every playlist algorithm reads.

Algorithms work on whole columns (numpy, vectorised) instead of per-track
objects, so a 100k-track library is a few arrays in memory and every feature
answers in milliseconds. Built once from the store and rebuilt when analyses
land; row ``i`` of every column is the same track.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from analysis.labels import MSD_LABELS
from index.geometry import RAW, Geometry, same_geometry
from index.text_column import TextColumn

#: How tag scores are held in memory (see Catalogue.tags).
TAG_DTYPE = np.float16

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def normalise_text(text: str | None) -> str:
    """Lower-case, accents and punctuation removed, bracketed suffixes like '(Remastered)' dropped."""
    if not text:
        return ""
    if text.isascii():  # NFKD leaves ASCII as it is and none of it is combining
        text = text.lower()
    else:
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = re.sub(r"[\(\[][^\)\]]*[\)\]]", " ", text)
    text = re.sub(r"[^a-z0-9]+", " ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class CatalogueRow:
    """One analysed track as the store hands it over."""

    track_id: int
    embedding: np.ndarray
    features: dict[str, Any]
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    duration: float | None = None
    fingerprint: bytes | None = None  # analysis.audio_fingerprint bytes (None: older analysis)


@dataclass
class Catalogue:
    ids: np.ndarray  # int64 [N] track ids
    vectors: np.ndarray  # float32 [N, 200] unit vectors in the library's geometry (index.geometry)
    #: float16 [N, 50] mean sigmoid tag scores (MSD_LABELS order): scores on 0..1 need no
    #: more than float16's 3 decimals (steps of 0.00049 at most), and it halves the
    #: largest column after the vectors (19 -> 9.5 MiB at 100k tracks)
    tags: np.ndarray
    tempo: np.ndarray  # float32 [N] bpm
    energy: np.ndarray  # float32 [N] 0..1
    loudness: np.ndarray  # float32 [N] dBFS
    key: np.ndarray  # int8 [N] index into KEYS, -1 unknown
    minor: np.ndarray  # bool [N]
    duration: np.ndarray  # float32 [N] seconds
    #: packed UTF-8 columns (index.text_column), read like lists of str: one str object
    #: per track cost ~100 bytes of fragmented heap each (a list given here is packed)
    titles: TextColumn
    artists: TextColumn
    albums: TextColumn
    #: encoded duplicate fingerprints per row (None: analysed before fingerprints); see index.duplicates
    fingerprints: list[bytes | None] = field(default_factory=list)
    #: the transform ``vectors`` were made with; raw cosines (duplicates) are recovered through it
    geometry: Geometry = RAW
    #: per row, mean cosine to its 10 nearest tracks (index.hubness), set once the index is
    #: built; similar songs are then re-ranked by CSLS. None: plain cosine (``hubness = none``)
    radius: np.ndarray | None = None
    # Track id -> row by binary search over the sorted ids: 8 bytes a track instead of a
    # dict entry plus two int objects (~100 bytes), which is 100 MB at 1M tracks.
    _sorted_ids: np.ndarray = field(init=False, repr=False)
    _sorted_rows: np.ndarray | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.titles = TextColumn.of(self.titles)
        self.artists = TextColumn.of(self.artists)
        self.albums = TextColumn.of(self.albums)
        ids = np.asarray(self.ids, dtype=np.int64)
        if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
            self._sorted_ids, self._sorted_rows = ids, None  # the store's order: rows are positions
        else:
            order = np.argsort(ids, kind="stable")
            self._sorted_ids, self._sorted_rows = ids[order], order

    def __len__(self) -> int:
        return len(self.ids)

    def _find(self, track_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, found) for an int64 array of track ids; rows are garbage where not found."""
        pos = np.searchsorted(self._sorted_ids, track_ids)
        pos = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        found = (self._sorted_ids[pos] == track_ids) if len(self._sorted_ids) else (
            np.zeros(len(track_ids), bool))
        rows = pos if self._sorted_rows is None else self._sorted_rows[pos]
        return rows.astype(np.int64, copy=False), found

    def row(self, track_id: int) -> int:
        """Row of ``track_id``; KeyError when it is not analysed."""
        rows, found = self._find(np.array([int(track_id)], np.int64))
        if not found[0]:
            raise KeyError(int(track_id))
        return int(rows[0])

    def rows(self, track_ids: Sequence[int]) -> np.ndarray:
        wanted = np.asarray([int(t) for t in track_ids] if not isinstance(track_ids, np.ndarray)
                            else track_ids, dtype=np.int64).reshape(-1)
        rows, found = self._find(wanted)
        if not bool(np.all(found)):
            raise KeyError(int(wanted[np.flatnonzero(~found)[0]]))
        return rows

    def has(self, track_id: int) -> bool:
        try:
            wanted = np.array([int(track_id)], np.int64)
        except (TypeError, ValueError, OverflowError):
            return False
        return bool(self._find(wanted)[1][0])

    @property
    def tag_names(self) -> tuple[str, ...]:
        return MSD_LABELS

    @classmethod
    def from_rows(cls, rows: Sequence[CatalogueRow], geometry: Geometry | None = None) -> Catalogue:
        """Per-track rows gathered into columns (tests and small callers; the server streams
        the store into ``from_columns`` without building a row object per track)."""
        n = len(rows)
        dim = len(rows[0].embedding) if n else 200
        emb = np.zeros((n, dim), np.float32)
        tags = np.zeros((n, len(MSD_LABELS)), TAG_DTYPE)
        for i, r in enumerate(rows):
            emb[i] = r.embedding
            t = r.features.get("tags") or []
            tags[i, : len(t)] = t

        def col(name: str, default: float) -> np.ndarray:
            return np.array([float(r.features.get(name, default) or default) for r in rows],
                            dtype=np.float32)

        return cls.from_columns(
            ids=np.array([r.track_id for r in rows], dtype=np.int64),
            embeddings=emb,
            tags=tags,
            tempo=col("tempo", 0.0),
            energy=col("energy", 0.0),
            loudness=col("loudness", -100.0),
            key=np.array([key_code(r.features.get("key")) for r in rows], np.int8),
            minor=np.array([r.features.get("scale") == "minor" for r in rows], dtype=bool),
            duration=np.array(
                [float(r.duration or r.features.get("duration") or 0.0) for r in rows], np.float32
            ),
            titles=[r.title or "" for r in rows],
            artists=[r.artist or "" for r in rows],
            albums=[r.album or "" for r in rows],
            fingerprints=[r.fingerprint for r in rows],
            geometry=geometry,
        )

    @classmethod
    def from_columns(
        cls,
        ids: np.ndarray,
        embeddings: np.ndarray,
        tags: np.ndarray,
        tempo: np.ndarray,
        energy: np.ndarray,
        loudness: np.ndarray,
        key: np.ndarray,
        minor: np.ndarray,
        duration: np.ndarray,
        titles: Sequence[str],
        artists: Sequence[str],
        albums: Sequence[str],
        fingerprints: list[bytes | None],
        geometry: Geometry | None = None,
    ) -> Catalogue:
        """The catalogue of raw stored columns; embeddings become unit vectors through
        ``geometry`` (None: raw). Every construction path goes through this one place, so
        the vectors every feature and the FAISS index compare cannot bypass the library's
        geometry."""
        geometry = geometry or RAW
        vectors = geometry.apply(np.asarray(embeddings, dtype=np.float32)).astype(
            np.float32, copy=False)
        return cls(
            ids=np.asarray(ids, dtype=np.int64), vectors=vectors,
            tags=np.asarray(tags, dtype=TAG_DTYPE), tempo=np.asarray(tempo, dtype=np.float32),
            energy=np.asarray(energy, dtype=np.float32),
            loudness=np.asarray(loudness, dtype=np.float32),
            key=np.asarray(key, dtype=np.int8), minor=np.asarray(minor, dtype=bool),
            duration=np.asarray(duration, dtype=np.float32),
            titles=TextColumn.of(titles), artists=TextColumn.of(artists),
            albums=TextColumn.of(albums),
            fingerprints=list(fingerprints),
            geometry=geometry,
        )

    def in_geometry(self, geometry: Geometry) -> Catalogue:
        """This raw catalogue with its vectors moved into ``geometry``: the server loads the
        store raw, because the fit (or the refit check) needs the raw vectors first."""
        if self.geometry.mean is not None:
            raise ValueError("in_geometry: the catalogue is not raw")
        if geometry.mean is None:
            return replace(self, geometry=geometry)
        return replace(self, vectors=geometry.apply(self.vectors), geometry=geometry)

    def take(self, rows: np.ndarray) -> Catalogue:
        """The catalogue of these rows, in this order (columns are copied)."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = rows.tolist()
        fingerprints = self.fingerprints
        return type(self)(
            ids=self.ids[rows], vectors=self.vectors[rows], tags=self.tags[rows],
            tempo=self.tempo[rows], energy=self.energy[rows], loudness=self.loudness[rows],
            key=self.key[rows], minor=self.minor[rows], duration=self.duration[rows],
            titles=self.titles.take(rows), artists=self.artists.take(rows),
            albums=self.albums.take(rows),
            fingerprints=[fingerprints[i] for i in pick] if fingerprints else [],
            geometry=self.geometry,
        )

    def patched(self, gone: np.ndarray, fresh: Catalogue) -> Catalogue:
        """This catalogue without the tracks ``gone`` and with ``fresh``'s rows added or
        replacing the old ones, in track-id order: a reload costs what changed, not the
        whole library again. ``self`` is left as it is (readers may hold it).
        ``fresh`` must be built with this catalogue's geometry (the fit is reused between
        refits, so old and new vectors stay comparable)."""
        if not same_geometry(self.geometry, fresh.geometry):
            raise ValueError("patched: fresh rows were made with another geometry")
        drop = np.union1d(np.asarray(gone, dtype=np.int64), fresh.ids)
        keep = np.flatnonzero(~np.isin(self.ids, drop))
        both = _concat(self.take(keep), fresh)
        order = np.argsort(both.ids, kind="stable")
        return both.take(order)


def key_code(name: str | None) -> int:
    """Index of a key name in KEYS, -1 when unknown."""
    return _KEY_INDEX.get(name or "", -1)


_KEY_INDEX = {k: i for i, k in enumerate(KEYS)}


def _concat(a: Catalogue, b: Catalogue) -> Catalogue:
    def fps(c: Catalogue) -> list[bytes | None]:
        return c.fingerprints if c.fingerprints else [None] * len(c)

    dim = a.vectors.shape[1] if len(a) else b.vectors.shape[1]
    return Catalogue(
        ids=np.concatenate([a.ids, b.ids]),
        vectors=np.concatenate([a.vectors.reshape(-1, dim), b.vectors.reshape(-1, dim)]),
        tags=np.concatenate([a.tags, b.tags]),
        tempo=np.concatenate([a.tempo, b.tempo]), energy=np.concatenate([a.energy, b.energy]),
        loudness=np.concatenate([a.loudness, b.loudness]), key=np.concatenate([a.key, b.key]),
        minor=np.concatenate([a.minor, b.minor]),
        duration=np.concatenate([a.duration, b.duration]),
        titles=a.titles.concat(b.titles), artists=a.artists.concat(b.artists),
        albums=a.albums.concat(b.albums),
        fingerprints=fps(a) + fps(b),
        geometry=a.geometry,
    )
