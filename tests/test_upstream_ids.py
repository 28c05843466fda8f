"""The id maps between musegate and the source: sorted arrays that read like the dicts they replace."""

from __future__ import annotations

import numpy as np
import pytest

from musegate.upstream_ids import UpstreamIds


def test_both_directions_read_like_dicts() -> None:
    ids = UpstreamIds([5, 2, 9], ["s5", "é2", "longer-id-9"])
    assert ids[2] == "é2" and ids.get(7) is None and 9 in ids and "x" not in ids
    assert dict(ids) == {2: "é2", 5: "s5", 9: "longer-id-9"} == ids
    back = ids.by_upstream
    assert back["s5"] == 5 and "é2" in back and back.get("nope") is None
    assert back.get("longer-id-9-and-more") is None and back.get(5) is None  # type: ignore[call-overload]
    assert dict(back) == {"s5": 5, "é2": 2, "longer-id-9": 9}
    with pytest.raises(KeyError):
        ids[4]
    empty = UpstreamIds()
    assert len(empty) == 0 and empty.get(1) is None and empty.by_upstream.get("a") is None


def test_patched_drops_and_adds_like_a_rebuild() -> None:
    ids = UpstreamIds([5, 2, 9], ["s5", "é2", "longer-id-9"])
    patched = ids.patched(np.array([5, 9]), np.array([9, 1]), ["n9", "a-much-longer-id-1"])
    assert dict(patched) == {1: "a-much-longer-id-1", 2: "é2", 9: "n9"}
    assert dict(patched.by_upstream) == {"a-much-longer-id-1": 1, "é2": 2, "n9": 9}
    assert dict(ids) == {2: "é2", 5: "s5", 9: "longer-id-9"}  # left alone: readers may hold it
