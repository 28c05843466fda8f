"""The packed text column reads, slices, gathers and joins exactly like a list of str."""

from __future__ import annotations

import random

import numpy as np
import pytest

from index.text_column import TextColumn

POOL = ["", "a", "bé", "日本語", "Ünïcødé (Remastered)", "x" * 300, "naïve|pipe"]


def _values(rng: random.Random, n: int, repeat: bool) -> list[str]:
    if repeat:
        return [rng.choice(POOL) for _ in range(n)]
    return [f"{rng.choice(POOL)} {i}" for i in range(n)]


@pytest.mark.parametrize("repeat", [True, False])
def test_reads_like_the_list_it_was_built_from(repeat: bool) -> None:
    rng = random.Random(7)
    for n in (0, 1, 2, 17, 300):
        values = _values(rng, n, repeat)
        col = TextColumn(values)
        assert len(col) == n and list(col) == values and col == values
        assert [col[i] for i in range(n)] == values
        assert [col[-i] for i in range(1, n + 1)] == [values[-i] for i in range(1, n + 1)]
        assert col[1:5] == values[1:5] and col[::-3] == values[::-3]
        for bad in (n, -n - 1):
            with pytest.raises(IndexError):
                col[bad]
        if n:
            assert col[np.int64(n - 1)] == values[-1]
            assert col.index(values[-1]) == values.index(values[-1])
        slots, codes = col.slots(), col.codes()
        assert [slots[c] for c in codes.tolist()] == values


def test_repeated_values_share_one_slot() -> None:
    artists = [f"Artist {i // 100}" for i in range(1_000)]
    col = TextColumn(artists)
    assert len(col.slots()) == 10
    # 4 bytes of code a row, each distinct name once
    assert col.nbytes() == 4 * 1_000 + len("".join(sorted(set(artists))).encode()) + 4 * 10
    titles = TextColumn([f"Song {i}" for i in range(1_000)])
    assert len(titles.slots()) == 1_000


@pytest.mark.parametrize("repeat", [True, False])
def test_take_join_map_and_filter_match_list_operations(repeat: bool) -> None:
    rng = random.Random(11)
    for _ in range(50):
        a, b = _values(rng, rng.randint(0, 60), repeat), _values(rng, rng.randint(0, 60), not repeat)
        ca, cb = TextColumn(a), TextColumn(b)
        rows = [rng.randrange(len(a)) for _ in range(rng.randint(0, 40))] if a else []
        assert ca.take(np.array(rows, np.int64)) == [a[r] for r in rows]
        assert ca.take(np.arange(len(a))) == a
        picked = ca.take(rows)
        assert picked.concat(cb) == [a[r] for r in rows] + b
        assert TextColumn.joined([ca, picked, cb, TextColumn()]) == a + [a[r] for r in rows] + b
        assert ca.values(np.array(rows, np.int64)) == [a[r] for r in rows]
        assert ca.map(str.upper) == [v.upper() for v in a]
        assert ca.map(lambda v: v[:1]) == [v[:1] for v in a]
        keep = set(rng.sample(POOL, 3))
        assert ca.rows_where(keep.__contains__).tolist() == [i for i, v in enumerate(a) if v in keep]


def test_a_join_drops_slots_no_row_uses() -> None:
    col = TextColumn([f"Artist {i % 50}" for i in range(500)])
    kept = col.take(np.flatnonzero(np.arange(500) % 50 < 5))
    assert len(kept.slots()) == 50  # a take shares the buffer
    joined = kept.concat(TextColumn(["Artist 1", "New"] * 4))
    assert sorted(joined.slots()) == sorted({f"Artist {i}" for i in range(5)} | {"New"})
    assert joined == list(kept) + ["Artist 1", "New"] * 4
