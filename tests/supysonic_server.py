"""The supysonic test server (see musegate.supysonic_runner) and a generated library for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musegate.supysonic_runner import Supysonic, SupysonicError
from tests.conftest import sine_mix, write_track

__all__ = ["Supysonic", "SupysonicError", "generate_library"]


def generate_library(
    root: Path,
    artists: int = 2,
    albums: int = 1,
    tracks: int = 3,
    seconds: float = 6.0,
    sr: int = 22050,
) -> Path:
    """Tagged FLAC files ``root/Artist a/Album b/NN title.flac`` with distinct tones."""
    root = Path(root)
    n = 0
    for a in range(artists):
        for b in range(albums):
            for t in range(tracks):
                base = 110.0 * (1 + a) * (1 + 0.25 * b) * (1 + 0.05 * t)
                audio = sine_mix([base, base * 1.5], seconds, sr=sr, seed=n)
                audio = audio + np.float32(0.001) * np.random.default_rng(n).standard_normal(
                    audio.shape
                ).astype(np.float32)
                write_track(
                    root / f"Artist {a}" / f"Album {a}-{b}" / f"{t + 1:02d} Song {a}-{b}-{t}.flac",
                    audio.astype(np.float32),
                    sr,
                    title=f"Song {a}-{b}-{t}",
                    artist=f"Artist {a}",
                    album=f"Album {a}-{b}",
                    tracknumber=str(t + 1),
                )
                n += 1
    return root
