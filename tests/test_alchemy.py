"""Song alchemy: ingredients, subtract distance, temperature sampling, projection."""

from __future__ import annotations

import numpy as np
import pytest

from index.alchemy import AlchemyResult, Ingredient, alchemy, ingredient_rows, tag_top_k
from index.faiss_index import SimilarityIndex
from tests.catalogue_factory import make_library


@pytest.fixture(scope="module")
def lib():
    return make_library(n_clusters=5, per_cluster=40, spread=0.8, artists_per_cluster=5,
                        near_duplicates=10, seed=7)


@pytest.fixture(scope="module")
def index(lib):
    return SimilarityIndex.build(lib.cat.ids, lib.cat.vectors)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_plain_nearest_at_temperature_zero(lib, index) -> None:
    cat = lib.cat
    seed = int(cat.ids[0])
    result = alchemy(cat, index, [Ingredient("song", seed)], n=10)
    assert isinstance(result, AlchemyResult)
    ids = [m.track_id for m in result.matches]
    assert len(ids) == 10 and seed not in ids
    sims = [m.similarity for m in result.matches]
    assert sims == sorted(sims, reverse=True)
    # exactly the rule-abiding nearest neighbours
    from index.similar import similar_tracks

    assert ids == [m.track_id for m in similar_tracks(cat, index, [seed], n=10)]
    assert alchemy(cat, index, [Ingredient("song", seed)], n=10) == result


def test_subtract_distance_is_respected(lib, index) -> None:
    cat = lib.cat
    add = [Ingredient("song", int(cat.ids[0])), Ingredient("song", int(cat.ids[40]))]
    subtract = [Ingredient("song", int(cat.ids[41]))]
    for min_distance in (0.2, 0.5, 0.8):
        result = alchemy(cat, index, add, subtract, n=15, min_subtract_distance=min_distance,
                         max_per_artist=10)
        sub = cat.vectors[40 + 1]
        for m in result.matches:
            assert 1.0 - float(cat.vectors[cat.row(m.track_id)] @ sub) >= min_distance - 1e-6
    # a strict distance pushes results away from the subtracted cluster
    strict = alchemy(cat, index, add, subtract, n=10, min_subtract_distance=0.9, max_per_artist=10)
    assert strict.matches
    assert all(lib.labels[cat.row(m.track_id)] != lib.labels[41] for m in strict.matches)


def test_subtracted_artist_never_appears(lib, index) -> None:
    cat = lib.cat
    artist = cat.artists[1]
    result = alchemy(cat, index, [Ingredient("song", int(cat.ids[0]))],
                     [Ingredient("artist", artist.upper())], n=20, min_subtract_distance=0.0)
    assert all(cat.artists[cat.row(m.track_id)] != artist for m in result.matches)


def test_temperature_sampling_is_reproducible_and_varies(lib, index) -> None:
    cat = lib.cat
    add = [Ingredient("song", int(cat.ids[5]))]
    a = alchemy(cat, index, add, n=10, temperature=0.3, seed=1)
    b = alchemy(cat, index, add, n=10, temperature=0.3, seed=1)
    assert a == b
    others = {tuple(m.track_id for m in alchemy(cat, index, add, n=10, temperature=0.3,
                                                 seed=s).matches) for s in range(2, 8)}
    assert len(others | {tuple(m.track_id for m in a.matches)}) > 1
    artists = [cat.artists[cat.row(m.track_id)] for m in a.matches]
    assert max(artists.count(x) for x in artists) <= 3
    hot = alchemy(cat, index, add, n=10, temperature=1e-6, seed=3)
    assert [m.track_id for m in hot.matches] == [
        m.track_id for m in alchemy(cat, index, add, n=10).matches
    ]
    with pytest.raises(ValueError):
        alchemy(cat, index, add, temperature=-1)


def test_artist_and_tag_ingredients(lib, index) -> None:
    cat = lib.cat
    artist = cat.artists[0]
    rows = ingredient_rows(cat, Ingredient("artist", artist))
    assert sorted(rows) == [i for i, a in enumerate(cat.artists) if a == artist]
    tag = cat.tag_names[int(np.argmax(cat.tags[0]))]
    k = tag_top_k(len(cat))
    assert k == max(5, int(np.ceil(0.02 * len(cat))))
    rows = ingredient_rows(cat, Ingredient("tag", tag))
    column = cat.tag_names.index(tag)
    assert len(rows) == k
    assert cat.tags[rows, column].min() >= np.sort(cat.tags[:, column])[-k]
    result = alchemy(cat, index, [Ingredient("tag", tag.upper())], n=5)
    centroid = _unit(cat.vectors[rows].mean(axis=0))
    top = result.matches[0]
    assert np.isclose(top.similarity, float(cat.vectors[cat.row(top.track_id)] @ centroid),
                      atol=1e-5)


def test_unknown_ingredients_are_named(lib, index) -> None:
    cat = lib.cat
    with pytest.raises(ValueError, match="Nobody Famous"):
        alchemy(cat, index, [Ingredient("artist", "Nobody Famous")])
    with pytest.raises(ValueError, match="polka"):
        alchemy(cat, index, [Ingredient("tag", "polka")])
    with pytest.raises(ValueError, match="424242"):
        alchemy(cat, index, [Ingredient("song", int(cat.ids[0]))], [Ingredient("song", 424242)])
    with pytest.raises(ValueError, match="ADD"):
        alchemy(cat, index, [])


def test_projection(lib, index) -> None:
    cat = lib.cat
    add = [Ingredient("song", int(cat.ids[0])), Ingredient("tag", cat.tag_names[0])]
    subtract = [Ingredient("artist", cat.artists[50])]
    result = alchemy(cat, index, add, subtract, n=8)
    roles = [p["role"] for p in result.projection]
    assert roles.count("result") == len(result.matches)
    assert roles.count("add") == 2 and roles.count("subtract") == 1
    assert roles.count("add_centroid") == 1 and roles.count("subtract_centroid") == 1
    assert [p["track_id"] for p in result.projection if p["role"] == "result"] == [
        m.track_id for m in result.matches
    ]
    song = next(p for p in result.projection if p["role"] == "add")
    assert song["track_id"] == int(cat.ids[0]) and cat.titles[0] in song["label"]
    for p in result.projection:
        assert set(p) >= {"x", "y", "role", "label"}
        assert np.isfinite(p["x"]) and np.isfinite(p["y"])
    again = alchemy(cat, index, add, subtract, n=8)
    assert again.projection == result.projection
