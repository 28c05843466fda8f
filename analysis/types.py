"""The result of analysing one track, shared by the analyzer, the store and the index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EMBEDDING_DIM = 200
TAG_COUNT = 50


@dataclass(frozen=True)
class TrackAnalysis:
    """Everything musegate knows about a track's sound.

    ``embedding`` is the mean musicnn embedding over the analysed patches and
    ``tags`` the mean of the per-patch sigmoid scores (already probabilities:
    they are never squashed again).
    """

    embedding: np.ndarray
    tags: np.ndarray
    tempo: float
    key: str
    scale: str
    key_strength: float
    energy: float
    loudness: float
    duration: float
    patches: int
    version: str
    #: analysis.audio_fingerprint.encode() bytes; None for analyses made before fingerprints
    fingerprint: bytes | None = None

    def features(self) -> dict[str, Any]:
        """The scalar features and tag scores as stored (JSON-friendly)."""
        return {
            "tempo": round(float(self.tempo), 3),
            "key": self.key,
            "scale": self.scale,
            "key_strength": round(float(self.key_strength), 4),
            "energy": round(float(self.energy), 4),
            "loudness": round(float(self.loudness), 3),
            "duration": round(float(self.duration), 3),
            "patches": int(self.patches),
            "tags": [round(float(t), 6) for t in np.asarray(self.tags).ravel()],
        }
