"""Similar songs: the neighbours of one song, several songs, an album or an artist.

Several seeds are averaged (then re-normalised) into one query, which is what
"more like this album" means in embedding space. The seeds themselves and any
copy of them are never offered back; the artist cap keeps one prolific artist
from filling the list.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from index.catalogue import Catalogue
from index.faiss_index import SimilarityIndex
from index.results import Match, select_neighbours

MOOD_FEATURES = ("energy", "tempo", "loudness")


def _tag_column(cat: Catalogue, name: str) -> int | None:
    lowered = name.strip().lower()
    for i, label in enumerate(cat.tag_names):
        if label.lower() == lowered:
            return i
    return None


def mood_mask(cat: Catalogue, mood: Mapping[str, float], tolerance: float = 0.25) -> np.ndarray:
    """Rows whose every requested mood value lies within ``tolerance`` of its target.

    Tag scores and energy are already on 0..1, so the distance is plain absolute
    difference. Tempo is in bpm and compared relatively (0.25 = ±25 %), because
    ±10 bpm means much more at 70 bpm than at 170. Loudness is in dB, compared
    per 20 dB. A requirement on every dimension (not an average) keeps the rule
    predictable: "sad, around 70 bpm" never returns a happy song at 70 bpm.
    """
    mask = np.ones(len(cat), bool)
    for name, target in mood.items():
        target = float(target)
        key = name.strip().lower()
        if key == "energy":
            distance = np.abs(cat.energy - target)
        elif key == "tempo":
            distance = np.abs(cat.tempo - target) / max(abs(target), 1.0)
        elif key == "loudness":
            distance = np.abs(cat.loudness - target) / 20.0
        else:
            column = _tag_column(cat, name)
            if column is None:
                raise ValueError(f"unknown mood {name!r}: use one of the 50 tag names or "
                                 f"{', '.join(MOOD_FEATURES)}")
            distance = np.abs(cat.tags[:, column].astype(np.float32) - target)
        mask &= distance <= tolerance
    return mask


def seed_query(cat: Catalogue, seed_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Seed rows and their normalised mean vector; KeyError names an unknown seed."""
    if not len(seed_ids):
        raise ValueError("no seed tracks given")
    rows = []
    for t in seed_ids:
        if not cat.has(int(t)):
            raise KeyError(f"track {int(t)} is not analysed")
        rows.append(cat.row(int(t)))
    seed_rows = np.unique(np.array(rows, np.int64))
    query = cat.vectors[seed_rows].mean(axis=0)
    norm = float(np.linalg.norm(query))
    if norm == 0:
        # opposite seeds cancel out: fall back to the first one rather than a meaningless zero
        query = cat.vectors[seed_rows[0]].copy()
        norm = float(np.linalg.norm(query)) or 1.0
    return seed_rows, (query / norm).astype(np.float32)


def similar_tracks(
    cat: Catalogue,
    index: SimilarityIndex,
    seed_ids: Sequence[int],
    n: int = 20,
    max_per_artist: int = 3,
    mood: dict[str, float] | None = None,
    mood_tolerance: float = 0.25,
    exclude: Collection[int] = (),
    hide_duplicates: bool = True,
) -> list[Match]:
    """The ``n`` songs closest to the seeds, best first, under the playlist rules.

    Ranked by CSLS when the catalogue carries neighbourhood radii (``hubness = csls``,
    index.hubness): a song close to everything must be closer to these seeds to win.
    """
    seed_rows, query = seed_query(cat, seed_ids)
    exclude_rows = [cat.row(int(t)) for t in exclude if cat.has(int(t))]
    allowed = mood_mask(cat, mood, mood_tolerance) if mood else None
    return select_neighbours(
        cat,
        index,
        query,
        n,
        max_per_artist=max_per_artist,
        blockers=[int(r) for r in seed_rows],
        exclude_rows=exclude_rows,
        allowed=allowed,
        hide_duplicates=hide_duplicates,
        radius=cat.radius,
    )
