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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.labels import MSD_LABELS
from index.geometry import RAW, Geometry

KEYS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def normalise_text(text: str | None) -> str:
    """Lower-case, accents and punctuation removed, bracketed suffixes like '(Remastered)' dropped."""
    if not text:
        return ""
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
    tags: np.ndarray  # float32 [N, 50] mean sigmoid tag scores (MSD_LABELS order)
    tempo: np.ndarray  # float32 [N] bpm
    energy: np.ndarray  # float32 [N] 0..1
    loudness: np.ndarray  # float32 [N] dBFS
    key: np.ndarray  # int8 [N] index into KEYS, -1 unknown
    minor: np.ndarray  # bool [N]
    duration: np.ndarray  # float32 [N] seconds
    titles: list[str]
    artists: list[str]
    albums: list[str]
    #: encoded duplicate fingerprints per row (None: analysed before fingerprints); see index.duplicates
    fingerprints: list[bytes | None] = field(default_factory=list)
    #: the transform ``vectors`` were made with; raw cosines (duplicates) are recovered through it
    geometry: Geometry = RAW
    #: per row, mean cosine to its 10 nearest tracks (index.hubness), set once the index is
    #: built; similar songs are then re-ranked by CSLS. None: plain cosine (``hubness = none``)
    radius: np.ndarray | None = None
    _row: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row = {int(t): i for i, t in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, track_id: int) -> int:
        """Row of ``track_id``; KeyError when it is not analysed."""
        return self._row[int(track_id)]

    def rows(self, track_ids: Sequence[int]) -> np.ndarray:
        return np.array([self._row[int(t)] for t in track_ids], dtype=np.int64)

    def has(self, track_id: int) -> bool:
        return int(track_id) in self._row

    @property
    def tag_names(self) -> tuple[str, ...]:
        return MSD_LABELS

    @classmethod
    def from_rows(cls, rows: Sequence[CatalogueRow], geometry: Geometry | None = None) -> Catalogue:
        """Columns of ``rows``; embeddings become unit vectors through ``geometry`` (None: raw).

        This is the one place stored embeddings become the vectors every feature and
        the FAISS index compare, so a library's geometry cannot be bypassed.
        """
        geometry = geometry or RAW
        n = len(rows)
        dim = len(rows[0].embedding) if n else 200
        emb = np.zeros((n, dim), np.float32)
        tags = np.zeros((n, len(MSD_LABELS)), np.float32)
        for i, r in enumerate(rows):
            emb[i] = r.embedding
            t = r.features.get("tags") or []
            tags[i, : len(t)] = t
        vectors = geometry.apply(emb)

        def col(name: str, default: float) -> np.ndarray:
            return np.array([float(r.features.get(name, default) or default) for r in rows],
                            dtype=np.float32)

        key_index = {k: i for i, k in enumerate(KEYS)}
        return cls(
            ids=np.array([r.track_id for r in rows], dtype=np.int64),
            vectors=vectors,
            tags=tags,
            tempo=col("tempo", 0.0),
            energy=col("energy", 0.0),
            loudness=col("loudness", -100.0),
            key=np.array([key_index.get(r.features.get("key", ""), -1) for r in rows], np.int8),
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
