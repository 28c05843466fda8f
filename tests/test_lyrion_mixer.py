"""The "Don't Stop The Music" mix rules (index/mixer.py) on a small synthetic catalogue."""

from __future__ import annotations

import random

import numpy as np
import pytest

from index.catalogue import KEYS, Catalogue, CatalogueRow
from index.faiss_index import SimilarityIndex
from index.mixer import MixRules, TrackMeta, camelot, key_follows, mix

DIM = 16


def catalogue(rows: list[dict]) -> tuple[Catalogue, SimilarityIndex, dict[int, TrackMeta]]:
    """``rows``: dicts with id, cluster, offset (how far from the cluster centre) and meta."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, DIM))
    built, meta = [], {}
    for r in rows:
        noise = np.zeros(DIM)  # its own direction: larger offsets are farther from everyone
        noise[r["id"] % DIM] = 0.8 + 2.0 * r.get("offset", 0.1)
        built.append(CatalogueRow(
            r["id"], (centres[r["cluster"]] + noise).astype(np.float32),
            {"tempo": r.get("tempo", 100.0), "key": r.get("key", "C"), "scale": r.get("scale", "major"),
             "duration": r.get("duration", 200.0)},
            r.get("title", f"t{r['id']}"), r.get("artist", f"a{r['id']}"), r.get("album", f"al{r['id']}"),
            r.get("duration", 200.0),
        ))
        meta[r["id"]] = TrackMeta(
            artist=r.get("artist", f"a{r['id']}"), album=r.get("album", f"al{r['id']}"),
            album_artist=r.get("album_artist", ""), title=r.get("title", f"t{r['id']}"),
            genres=frozenset(r.get("genres", ())), duration=r.get("duration", 200.0),
        )
    cat = Catalogue.from_rows(built)
    return cat, SimilarityIndex.build(cat.ids, cat.vectors), meta


def ranked(cat: Catalogue, seed: int) -> list[int]:
    sims = cat.vectors @ cat.vectors[cat.row(seed)]
    return [int(cat.ids[i]) for i in np.argsort(-sims) if int(cat.ids[i]) != seed]


PLAIN = MixRules(count=3, shuffle=False, no_genre_adjust=0.0, group_adjust=0.0)


def test_nearest_first_without_seeds_previous_or_their_copies() -> None:
    rows = [{"id": i, "cluster": 0, "offset": 0.1 * i} for i in range(1, 7)]
    rows += [{"id": i, "cluster": 1} for i in range(10, 14)]
    rows.append({"id": 20, "cluster": 0, "offset": 0.1, "title": "t1", "artist": "a1"})  # a copy of 1
    cat, index, meta = catalogue(rows)
    out = mix(cat, index, [1], [2], meta, PLAIN, random.Random(0))
    expected = [t for t in ranked(cat, 1) if t not in (2, 20)][:3]
    assert out == expected and set(out) <= {3, 4, 5, 6}
    assert mix(cat, index, [99], [], meta, PLAIN, random.Random(0)) == []  # unknown seed


def test_artists_and_albums_just_heard_wait_unless_nothing_else_is_left() -> None:
    rows = [{"id": 1, "cluster": 0, "artist": "X"}]
    rows += [{"id": i, "cluster": 0, "offset": 0.05 * i, "artist": "X" if i < 4 else f"o{i}",
              "album": "shared" if i == 4 else f"al{i}", "album_artist": "Y" if i == 4 else ""}
             for i in range(2, 8)]
    rows.append({"id": 9, "cluster": 0, "album": "shared", "album_artist": "Y"})  # previous
    cat, index, meta = catalogue(rows)
    rules = MixRules(count=3, shuffle=False, no_repeat_artist=5, no_repeat_album=5)
    out = mix(cat, index, [1], [1, 9], meta, rules, random.Random(0))
    assert set(out) == {5, 6, 7}  # artist X (2, 3) and album Y/shared (4) wait
    # with only repeats left, they fill the mix (best first) rather than leaving it short
    out = mix(cat, index, [1], [1, 9], meta, MixRules(count=5, shuffle=False, no_repeat_artist=5,
                                                      no_repeat_album=5), random.Random(0))
    assert out[:3] == [t for t in ranked(cat, 1) if t in (5, 6, 7)] and set(out[3:]) <= {2, 3, 4}
    # the mix itself does not repeat an artist either
    rows2 = [{"id": 1, "cluster": 0}] + [{"id": i, "cluster": 0, "offset": 0.05 * i, "artist": "Z"}
                                          for i in range(2, 5)]
    rows2 += [{"id": 8, "cluster": 0, "offset": 0.5}]
    cat, index, meta = catalogue(rows2)
    out = mix(cat, index, [1], [], meta, MixRules(count=2, shuffle=False, no_repeat_artist=3),
              random.Random(0))
    assert len(out) == 2 and 8 in out and sum(meta[t].artist == "Z" for t in out) == 1


def test_duration_genre_and_christmas_rules_are_hard() -> None:
    rows = [{"id": 1, "cluster": 0, "genres": ["Metal"]}]
    rows += [{"id": 2, "cluster": 0, "duration": 40.0, "genres": ["Metal"]},
             {"id": 3, "cluster": 0, "duration": 900.0, "genres": ["Metal"]},
             {"id": 4, "cluster": 0, "genres": ["Pop"]},
             {"id": 5, "cluster": 0, "genres": ["Heavy Metal"]},
             {"id": 6, "cluster": 0, "genres": ["Christmas", "Metal"]},
             {"id": 7, "cluster": 0},  # no genre: cannot be filtered out
             {"id": 8, "cluster": 0, "genres": ["Blues"]}]  # in no group
    cat, index, meta = catalogue(rows)
    groups = (frozenset({"Metal", "Heavy Metal"}), frozenset({"Pop", "Dance"}))
    rules = MixRules(count=10, shuffle=False, min_duration=60, max_duration=600, filter_genre=True,
                     genre_groups=groups, exclude_xmas=True)
    assert set(mix(cat, index, [1], [], meta, rules, random.Random(0))) == {5, 7}
    assert set(mix(cat, index, [1], [], meta, rules, random.Random(0), december=True)) == {5, 6, 7}
    loose = MixRules(count=10, shuffle=False)
    assert set(mix(cat, index, [1], [], meta, loose, random.Random(0))) == {2, 3, 4, 5, 6, 7, 8}
    # a seed in no group: songs of any group are foreign to it, ungrouped ones are not
    meta[1] = TrackMeta(artist="a1", genres=frozenset({"Jazz"}))
    assert set(mix(cat, index, [1], [], meta, rules, random.Random(0))) == {7, 8}
    # without any groups the genre filter has nothing to go by
    ungrouped = MixRules(count=10, shuffle=False, filter_genre=True)
    assert set(mix(cat, index, [1], [], meta, ungrouped, random.Random(0))) == {2, 3, 4, 5, 6, 7, 8}


def test_genre_adjustments_reorder_by_genre() -> None:
    rows = [{"id": 1, "cluster": 0, "genres": ["Rock"]},
            {"id": 2, "cluster": 0, "offset": 0.2, "genres": ["Pop"]},
            {"id": 3, "cluster": 0, "offset": 0.6, "genres": ["Rock"]}]
    cat, index, meta = catalogue(rows)
    assert mix(cat, index, [1], [], meta, PLAIN, random.Random(0)) == [2, 3]
    nudged = MixRules(count=3, shuffle=False, no_genre_adjust=0.5)
    assert mix(cat, index, [1], [], meta, nudged, random.Random(0)) == [3, 2]


def test_tempo_and_key_that_do_not_follow_only_fill_in() -> None:
    rows = [{"id": 1, "cluster": 0, "tempo": 120.0, "key": "A", "scale": "minor"},
            {"id": 2, "cluster": 0, "offset": 0.1, "tempo": 170.0, "key": "A", "scale": "minor"},
            {"id": 3, "cluster": 0, "offset": 0.2, "tempo": 124.0, "key": "F#", "scale": "major"},
            {"id": 4, "cluster": 0, "offset": 0.3, "tempo": 118.0, "key": "C", "scale": "major"},
            {"id": 5, "cluster": 0, "offset": 0.4, "tempo": 121.0, "key": "E", "scale": "minor"}]
    cat, index, meta = catalogue(rows)
    rules = MixRules(count=2, shuffle=False, max_bpm_diff=10, filter_key=True)
    assert mix(cat, index, [1], [], meta, rules, random.Random(0)) == [4, 5]
    rules = MixRules(count=4, shuffle=False, max_bpm_diff=10, filter_key=True)
    assert mix(cat, index, [1], [], meta, rules, random.Random(0)) == [4, 5, 2, 3]


def test_shuffle_draws_from_a_wider_pool_of_the_best() -> None:
    rows = [{"id": i, "cluster": 0, "offset": 0.02 * i} for i in range(1, 40)]
    cat, index, meta = catalogue(rows)
    rules = MixRules(count=3, shuffle=True)
    pool = ranked(cat, 1)[: 3 * 5 * 2]  # count x shuffle factor, doubled for a single seed
    draws = [mix(cat, index, [1], [], meta, rules, random.Random(seed)) for seed in range(8)]
    assert all(len(d) == 3 and set(d) <= set(pool) for d in draws)
    assert len({tuple(d) for d in draws}) > 1


def test_several_seeds_each_bring_their_neighbours() -> None:
    rows = [{"id": i, "cluster": 0, "offset": 0.05 * i} for i in range(1, 5)]
    rows += [{"id": i, "cluster": 1, "offset": 0.05 * i} for i in range(10, 14)]
    cat, index, meta = catalogue(rows)
    out = mix(cat, index, [1, 10], [], meta, MixRules(count=4, shuffle=False), random.Random(0))
    assert {t for t in out if t < 10} and {t for t in out if t >= 10}


@pytest.mark.parametrize(("key", "minor", "number"), [
    ("C", False, 8), ("A", True, 8), ("G", False, 9), ("E", True, 9), ("F", False, 7),
    ("B", False, 1), ("G#", True, 1), ("F#", True, 11),
])
def test_camelot_wheel(key: str, minor: bool, number: int) -> None:
    assert camelot(np.array([KEYS.index(key)]), np.array([minor]))[0] == number


def test_keys_that_mix() -> None:
    rows = [{"id": 1, "cluster": 0, "key": "A", "scale": "minor"},
            {"id": 2, "cluster": 0, "key": "C", "scale": "major"},   # relative major
            {"id": 3, "cluster": 0, "key": "E", "scale": "minor"},   # one step
            {"id": 4, "cluster": 0, "key": "G", "scale": "major"},   # one step, other mode
            {"id": 5, "cluster": 0, "key": "G#", "scale": "minor"}]  # 1A: 8A -> no
    cat, _, _ = catalogue(rows)
    assert [key_follows(cat, cat.row(1), cat.row(t)) for t in (2, 3, 4, 5)] == [True, True, False, False]
