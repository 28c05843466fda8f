"""The interface every library source implements.

Kept deliberately small so that a new server family is one module: list the
library (incrementally, given what the store already knows) and say where a
track's audio can be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from analysis.store import TrackRecord


class NoListeningHistory(LookupError):
    """The source keeps no play counts (a plain folder), so there is nothing to fingerprint."""


@dataclass(frozen=True)
class HistoryEntry:
    """One song a user played, as the source reports it (its own id, not musegate's)."""

    upstream_id: str
    play_count: int
    last_played: float | None = None  # epoch seconds


class LibraryAdapter(Protocol):
    source: str

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        """Every track the source has now; ``known`` (by upstream id) lets unchanged ones be reused."""
        ...


@runtime_checkable
class PlaylistWriter(Protocol):
    """A source that can store a playlist (a server playlist, or an M3U8 file for a folder)."""

    async def write_playlist(self, name: str, tracks: list[TrackRecord]) -> str:
        """Store ``tracks`` in order as playlist ``name``; returns where it went (path or id)."""
        ...


@runtime_checkable
class HistorySource(Protocol):
    """A source that knows what a user listened to (for the sonic fingerprint)."""

    async def listening_history(self, user: str | None = None) -> list[HistoryEntry]:
        """Most-played songs with counts and last-played times; NoListeningHistory when none."""
        ...
