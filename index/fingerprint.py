"""Sonic fingerprint: what a listener's recent heavy rotation sounds like, and more of it.

Each played song weighs ``play_count * 0.5 ** (age_days / half_life_days)``:
a song played 20 times last week should steer the result far more than one
played 20 times a year ago. Weights are handled in log space so that very old
plays cannot underflow every weight to zero.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from index.catalogue import Catalogue
from index.faiss_index import SimilarityIndex
from index.results import Match, select_neighbours

DAY = 86_400.0


@dataclass(frozen=True)
class Play:
    track_id: int
    play_count: int
    last_played: float | None  # epoch seconds; None when the source does not say


def play_weights(plays: Sequence[Play], now: float, half_life_days: float = 30.0) -> np.ndarray:
    """Relative weights (max 1) of ``plays``; 0 for unusable entries.

    A play without a date gets the recency of the oldest dated play — we know
    it happened but not when, so it is trusted no more than the stalest known
    one; when no play has a date, only counts matter.
    """
    if half_life_days <= 0:
        raise ValueError("half_life_days must be positive")
    counts = np.array([max(float(p.play_count), 0.0) for p in plays], np.float64)
    dated = [p.last_played for p in plays if p.last_played is not None]
    ages = np.zeros(len(plays))
    if dated:
        raw = np.array(
            [np.nan if p.last_played is None else (now - float(p.last_played)) / DAY for p in plays]
        )
        raw = np.clip(raw, 0.0, None)  # a clock ahead of ours: treat as "just now"
        ages = np.where(np.isnan(raw), np.nanmax(raw), raw)
    with np.errstate(divide="ignore"):
        log_w = np.log(counts) - ages / half_life_days * math.log(2.0)
    if not np.isfinite(log_w).any():
        return np.zeros(len(plays))
    return np.exp(log_w - log_w[np.isfinite(log_w)].max())


def _usable(cat: Catalogue, plays: Sequence[Play]) -> list[Play]:
    return [p for p in plays if cat.has(int(p.track_id)) and p.play_count > 0]


def fingerprint_vector(
    cat: Catalogue, plays: Sequence[Play], now: float, half_life_days: float = 30.0
) -> np.ndarray:
    """The recency-weighted mean embedding of the listening history, unit length."""
    usable = _usable(cat, plays)
    if not usable:
        raise ValueError(
            "no usable listening history: none of the played songs is analysed "
            "or every play count is zero"
        )
    weights = play_weights(usable, now, half_life_days)
    rows = cat.rows([p.track_id for p in usable])
    vector = weights @ cat.vectors[rows].astype(np.float64)
    norm = float(np.linalg.norm(vector))
    if norm == 0 or not np.isfinite(norm):
        raise ValueError("the listening history averages to no direction at all")
    return (vector / norm).astype(np.float32)


def sonic_fingerprint(
    cat: Catalogue,
    index: SimilarityIndex,
    plays: Sequence[Play],
    n: int = 50,
    now: float | None = None,
    max_per_artist: int = 3,
    include_played: bool = False,
    half_life_days: float = 30.0,
    hide_duplicates: bool = True,
) -> list[Match]:
    """Songs that sound like the listener's fingerprint; played songs (and copies) left out by default."""
    now = time.time() if now is None else now
    query = fingerprint_vector(cat, plays, now, half_life_days)
    played = [cat.row(int(p.track_id)) for p in _usable(cat, plays)]
    return select_neighbours(
        cat,
        index,
        query,
        n,
        max_per_artist=max_per_artist,
        blockers=() if include_played else played,
        hide_duplicates=hide_duplicates,
    )
