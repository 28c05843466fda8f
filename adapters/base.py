"""The interface every library source implements.

Kept deliberately small so that a new server family is one module: list the
library (incrementally, given what the store already knows) and say where a
track's audio can be read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from analysis.store import TrackRecord


class LibraryAdapter(Protocol):
    source: str

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        """Every track the source has now; ``known`` (by upstream id) lets unchanged ones be reused."""
        ...
