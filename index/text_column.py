"""A column of strings packed into one UTF-8 buffer: what the catalogue's text columns hold.

As a list of Python ``str`` a 100k-track library's titles cost ~100 bytes a track
(a 49-byte object header plus the text plus a list slot), and the strings are
created while the store's rows are parsed, interleaved with the parser's
temporaries, so the heap they sit in stays fragmented after the load. Here a
column is a few numpy arrays: the distinct values ("slots") as one bytes buffer
with their end offsets, and, where values repeat (artists, albums), one int32
slot code per row; a title costs its UTF-8 bytes plus 4 bytes.

Reading one row decodes one slot (a fraction of a microsecond), so per-request
code that looks at a few hundred rows reads it like a list. Whole-column work
(matching an artist by name, normalising every artist) goes through
:meth:`TextColumn.slots`/:meth:`TextColumn.codes` and touches each distinct
value once. ``take`` and ``concat`` (the incremental reload) are numpy gathers
over the bytes, with no Python object per row.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, overload

import numpy as np

#: Rows per distinct value from which repeated values share one slot (artists, albums)
#: instead of one slot per row (titles).
_SHARE_BELOW = 0.5
#: Rows gathered per block by ``take`` (bounds its temporary bytes objects).
_BLOCK = 16_384


class TextColumn(Sequence[str]):
    """Immutable sequence of ``str``; equal to a list or column holding the same strings.

    The offsets and codes are ``array.array`` (a row read is a C array index, ~3x faster
    than indexing numpy) and are seen as numpy arrays, without a copy, for whole-column work.
    """

    __slots__ = ("_data", "_ends", "_codes")

    _data: bytes  # UTF-8 of every slot, back to back
    _ends: array  # "I" (or "Q" past 4 GiB) [slots]: end offset of each slot in _data
    _codes: array | None  # "i" [rows]: slot of each row; None: row i is slot i

    def __init__(self, values: Iterable[str] = ()) -> None:
        values = values if isinstance(values, list) else list(values)
        seen: dict[str, int] = {}
        codes = array("i", [seen.setdefault(v, len(seen)) for v in values])
        if values and len(seen) <= _SHARE_BELOW * len(values):
            self._set(list(seen), codes)
        else:
            self._set(values, None)

    def _set(self, slots: Sequence[str], codes: array | None) -> None:
        encoded = [s.encode("utf-8") for s in slots]
        self._data = b"".join(encoded)
        self._ends = _offsets(np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded))),
                              len(self._data))
        self._codes = codes

    @classmethod
    def of(cls, values: Iterable[str]) -> TextColumn:
        """``values`` as a column (a column is returned as it is: columns are immutable)."""
        return values if isinstance(values, TextColumn) else cls(values)

    @classmethod
    def _raw(cls, data: bytes, ends: np.ndarray, codes: np.ndarray | None) -> TextColumn:
        out = cls.__new__(cls)
        out._data, out._ends = data, _offsets(ends, len(data))
        out._codes = None if codes is None else _int32(codes)
        return out

    def _ends_np(self) -> np.ndarray:
        return np.frombuffer(self._ends, np.uint32 if self._ends.typecode == "I" else np.uint64)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self._ends) if self._codes is None else len(self._codes)

    def _slot(self, slot: int) -> str:
        ends = self._ends
        return self._data[ends[slot - 1] if slot else 0 : ends[slot]].decode("utf-8")

    @overload
    def __getitem__(self, row: int) -> str: ...

    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: Any) -> Any:
        if isinstance(row, slice):
            return [self[i] for i in range(*row.indices(len(self)))]
        # array.array checks the range and counts negative rows from the end, as a list does
        try:
            slot = row.__index__() if self._codes is None else self._codes[row]
            ends = self._ends
            end = ends[slot]
        except IndexError:
            raise IndexError("TextColumn index out of range") from None
        if slot < 0:
            slot += len(ends)
        return self._data[ends[slot - 1] if slot else 0 : end].decode("utf-8")

    def slots(self) -> list[str]:
        """Every distinct stored value, decoded (slot order; see :meth:`codes`)."""
        data, ends = self._data, self._ends.tolist()
        starts = [0, *ends[:-1]] if ends else []
        return [data[s:e].decode("utf-8") for s, e in zip(starts, ends, strict=True)]

    def codes(self) -> np.ndarray:
        """int32 array [rows]: the slot of each row, so ``column[i] == slots()[codes()[i]]``."""
        if self._codes is None:
            return np.arange(len(self._ends), dtype=np.int32)
        return np.frombuffer(self._codes, np.int32)

    def __iter__(self) -> Iterator[str]:
        slots = self.slots()
        if self._codes is None:
            return iter(slots)
        return iter([slots[c] for c in self._codes])

    def values(self, rows: Iterable[int]) -> list[str]:
        """The strings at ``rows``, in that order."""
        return [self[r] for r in (rows.tolist() if isinstance(rows, np.ndarray) else rows)]

    def rows_where(self, keep: Callable[[str], bool]) -> np.ndarray:
        """Rows (ascending int64) whose value passes ``keep``, called once per distinct slot."""
        passed = np.fromiter((bool(keep(s)) for s in self.slots()), bool, len(self._ends))
        return np.flatnonzero(passed[self.codes()]) if len(passed) else np.zeros(0, np.int64)

    def map(self, fn: Callable[[str], str]) -> TextColumn:
        """The column of ``fn(value)`` per row, ``fn`` called once per distinct slot."""
        mapped = TextColumn([fn(s) for s in self.slots()])  # may share slots again
        if self._codes is None:
            return mapped
        codes = self.codes() if mapped._codes is None else mapped.codes()[self.codes()]
        return TextColumn._raw(mapped._data, mapped._ends_np(), codes)

    def nbytes(self) -> int:
        """Bytes held by the column's buffers."""
        codes = 0 if self._codes is None else len(self._codes) * self._codes.itemsize
        return len(self._data) + len(self._ends) * self._ends.itemsize + codes

    # ------------------------------------------------------------------ comparing

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TextColumn):
            return len(self) == len(other) and list(self) == list(other)
        if isinstance(other, list | tuple):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(v) for v in self[:3])
        return f"TextColumn([{head}{', ...' if len(self) > 3 else ''}], rows={len(self)})"

    # ------------------------------------------------------------------ new columns

    def take(self, rows: np.ndarray | Sequence[int]) -> TextColumn:
        """The column of these rows in this order: shared slots keep the buffer (only codes
        are gathered), one-slot-per-row columns gather their bytes."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == len(self) and bool(np.all(rows == np.arange(len(rows)))):
            return self  # the whole column in its order (a reload that appended nothing out of order)
        if self._codes is not None:
            return TextColumn._raw(self._data, self._ends_np(), self.codes()[rows])
        data, ends = _gather(self._data, self._ends_np(), rows)
        return TextColumn._raw(data, ends, None)

    def concat(self, other: TextColumn) -> TextColumn:
        """This column's rows followed by ``other``'s."""
        return TextColumn.joined([self, other])

    @classmethod
    def joined(cls, parts: Sequence[TextColumn]) -> TextColumn:
        """The rows of ``parts`` one after the other. One-slot-per-row parts (titles) are
        concatenated as bytes; otherwise the slots rows still use are merged once each,
        so an artist loaded in many chunks, or dropped by a reload, leaves no stale slot."""
        parts = [p for p in parts if len(p)]
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return cls()
        if all(p._codes is None for p in parts):
            shift = np.cumsum([0] + [len(p._data) for p in parts[:-1]])
            return cls._raw(b"".join(p._data for p in parts),
                            np.concatenate([p._ends_np().astype(np.int64) + int(d)
                                            for p, d in zip(parts, shift, strict=True)]), None)
        seen: dict[str, int] = {}
        codes = []
        for p in parts:
            used, inverse = np.unique(p.codes(), return_inverse=True)
            remap = np.fromiter((seen.setdefault(p._slot(c), len(seen)) for c in used.tolist()),
                                np.int32, len(used))
            codes.append(remap[inverse.reshape(-1)])
        out = cls.__new__(cls)
        out._set(list(seen), _int32(np.concatenate(codes)))
        return out


def _offsets(ends: np.ndarray, total: int) -> array:
    if total < 2**32:
        return array("I", np.asarray(ends, np.uint32).tobytes())
    return array("Q", np.asarray(ends, np.uint64).tobytes())


def _int32(codes: np.ndarray) -> array:
    return array("i", np.asarray(codes, np.int32).tobytes())


def _gather(data: bytes, ends: np.ndarray, slots: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The bytes of ``slots`` back to back and their new end offsets, a block at a time."""
    ends64 = ends.astype(np.int64)
    starts64 = np.concatenate([[0], ends64[:-1]]).astype(np.int64) if len(ends64) else ends64
    start, stop = starts64[slots], ends64[slots]
    blocks = []
    for at in range(0, len(slots), _BLOCK):
        pairs = zip(start[at : at + _BLOCK].tolist(), stop[at : at + _BLOCK].tolist(), strict=True)
        blocks.append(b"".join([data[a:b] for a, b in pairs]))
    return b"".join(blocks), np.cumsum(stop - start)
