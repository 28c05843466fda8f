"""Duplicate groups of the analysed library with their tracks: what ``musegate duplicates``
and ``GET /api/duplicates`` both show, so the two never disagree."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from analysis.store import LibraryStore, TrackRecord
from index.catalogue import Catalogue
from index.duplicates import DuplicateGroup, DuplicatePair, find_duplicates, group_pairs
from index.faiss_index import SimilarityIndex


@dataclass(frozen=True)
class GroupReport:
    representative: TrackRecord
    tracks: list[TrackRecord]  # the representative first, then by id
    pairs: list[DuplicatePair]  # the confirmed pairs inside the group


@dataclass(frozen=True)
class DuplicatesReport:
    groups: list[GroupReport]
    analysed: int
    without_fingerprint: int  # judged by the stricter fallback rule until re-analysed


def _quality(track: TrackRecord) -> float:
    """Bytes per second of the file: the higher-bitrate copy is the better one to keep."""
    if track.size and track.duration and track.duration > 0:
        return float(track.size) / float(track.duration)
    return 0.0


async def duplicates_report(
    store: LibraryStore, cat: Catalogue, index: SimilarityIndex, track_id: int | None = None
) -> DuplicatesReport:
    """Every duplicate group (or only ``track_id``'s), the copy to keep chosen by
    :func:`index.duplicates.representative` with the file bitrate as quality."""
    # pure CPU work over the whole library: off the event loop
    groups, pairs = await asyncio.to_thread(find_duplicates, cat, index)
    members = sorted({t for g in groups for t in g.track_ids})
    records = await store.tracks_by_ids(members)
    quality = {t: _quality(r) for t, r in records.items()}
    groups = group_pairs(cat, pairs, quality)
    if track_id is not None:
        groups = [g for g in groups if track_id in g.track_ids]
    out = []
    for g in groups:
        if not all(t in records for t in g.track_ids):
            continue  # a track left the library since the snapshot was taken
        out.append(_report(g, records, pairs))
    missing = sum(1 for f in cat.fingerprints if f is None) if cat.fingerprints else len(cat)
    return DuplicatesReport(out, len(cat), missing)


def _report(g: DuplicateGroup, records: dict[int, TrackRecord], pairs: list[DuplicatePair]) -> GroupReport:
    order = [g.representative, *(t for t in g.track_ids if t != g.representative)]
    inside = [p for p in pairs if p.track_a in g.track_ids]
    return GroupReport(records[g.representative], [records[t] for t in order], inside)
