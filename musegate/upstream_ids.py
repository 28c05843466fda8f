"""Musegate track id <-> the source's own id, as two sorted arrays instead of two dicts.

Every intercepted request translates ids both ways, so the maps are held for the
whole library. As dicts (int -> str and str -> int) they cost ~200 bytes a track
in hash tables, int objects and strings (~20 MB at 100k tracks, 200 MB at 1M);
here they are one int64 column, one fixed-width bytes column and one sort order
(~30 bytes a track for Subsonic-style ids), searched with binary search. Both
behave as read-only mappings, so callers use ``in``, ``[]`` and ``.get`` as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np


def _encoded(values: Iterable[str]) -> np.ndarray:
    # 'S' columns drop trailing NUL bytes; no source's id ends in one
    encoded = [str(v).encode("utf-8") for v in values]
    return np.array(encoded, dtype=f"S{max((len(e) for e in encoded), default=1) or 1}")


class UpstreamIds(Mapping[int, str]):
    """musegate track id -> the source's id; ``by_upstream`` is the reverse mapping."""

    def __init__(self, ids: Sequence[int] | np.ndarray = (), upstream: Iterable[str] = ()) -> None:
        ids = np.asarray(ids, np.int64).reshape(-1)
        values = _encoded(upstream)
        if len(values) != len(ids):
            raise ValueError(f"{len(ids)} track ids for {len(values)} upstream ids")
        order = np.argsort(ids, kind="stable")
        self._ids, self._values = ids[order], values[order]
        self.by_upstream = ByUpstream(self)

    @classmethod
    def from_pairs(cls, pairs: Mapping[int, str]) -> UpstreamIds:
        return cls(np.fromiter(pairs.keys(), np.int64, len(pairs)), pairs.values())

    def _row(self, track_id: object) -> int | None:
        try:
            wanted = np.int64(int(track_id))  # type: ignore[call-overload]
        except (TypeError, ValueError, OverflowError):
            return None
        at = int(np.searchsorted(self._ids, wanted))
        return at if at < len(self._ids) and self._ids[at] == wanted else None

    def __getitem__(self, track_id: int) -> str:
        row = self._row(track_id)
        if row is None:
            raise KeyError(track_id)
        return self._values[row].decode("utf-8")

    def __contains__(self, track_id: object) -> bool:
        return self._row(track_id) is not None

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids.tolist())

    def __len__(self) -> int:
        return len(self._ids)

    def patched(self, drop: np.ndarray, ids: np.ndarray, upstream: Sequence[str]) -> UpstreamIds:
        """These pairs without the track ids ``drop``, plus (``ids``, ``upstream``): what an
        incremental reload changes, without going through Python objects per track."""
        keep = ~np.isin(self._ids, np.asarray(drop, np.int64))
        fresh = _encoded(upstream)
        out = UpstreamIds.__new__(UpstreamIds)
        width = max(self._values.dtype.itemsize, fresh.dtype.itemsize if len(fresh) else 1)
        all_ids = np.concatenate([self._ids[keep], np.asarray(ids, np.int64).reshape(-1)])
        values = np.concatenate([self._values[keep].astype(f"S{width}"), fresh.astype(f"S{width}")])
        order = np.argsort(all_ids, kind="stable")
        out._ids, out._values = all_ids[order], values[order]
        out.by_upstream = ByUpstream(out)
        return out


class ByUpstream(Mapping[str, int]):
    """The source's id -> musegate track id (the reverse of an UpstreamIds)."""

    def __init__(self, forward: UpstreamIds) -> None:
        self._forward = forward
        self._order = np.argsort(forward._values, kind="stable")
        self._sorted = forward._values[self._order]

    def _row(self, upstream_id: object) -> int | None:
        if not isinstance(upstream_id, str):
            return None
        wanted = upstream_id.encode("utf-8")
        if wanted.endswith(b"\x00") or len(wanted) > self._sorted.dtype.itemsize:
            return None
        at = int(np.searchsorted(self._sorted, wanted))
        return int(self._order[at]) if at < len(self._sorted) and self._sorted[at] == wanted else None

    def __getitem__(self, upstream_id: str) -> int:
        row = self._row(upstream_id)
        if row is None:
            raise KeyError(upstream_id)
        return int(self._forward._ids[row])

    def __contains__(self, upstream_id: object) -> bool:
        return self._row(upstream_id) is not None

    def __iter__(self) -> Iterator[str]:
        return (v.decode("utf-8") for v in self._sorted)

    def __len__(self) -> int:
        return len(self._sorted)
