"""The playlist rules' per-catalogue keys: compact, exact to the per-row normalisation, built once."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from index import results
from index.catalogue import normalise_text
from index.text_column import TextColumn
from tests.catalogue_factory import make_catalogue


def test_keys_are_the_normalised_titles_and_artists_built_once() -> None:
    cat = make_catalogue(n_clusters=3, per_cluster=20)
    titles, artists = list(cat.titles), list(cat.artists)
    titles[3], titles[4], artists[5] = "", "Çafé (Remastered 2011)", "Ärtist  Nämé!"
    titles[6], artists[6] = "cafe", artists[4]  # the same key as row 4 once normalised
    titles[7], artists[7] = "", artists[3]
    cat = replace(cat, titles=titles, artists=artists)
    built: list[int] = []
    results.on_cache_built.append(lambda: built.append(1))
    try:
        artist_keys = results.artist_keys(cat)
        groups = results._text_groups(cat)
        assert results.artist_keys(cat) is artist_keys and results._text_groups(cat) is groups
    finally:
        results.on_cache_built.pop()
    assert len(built) == 2  # one build each, then cached on the catalogue
    assert isinstance(artist_keys, TextColumn)
    assert list(artist_keys) == [normalise_text(a) for a in artists]
    keys = [f"{normalise_text(t)}|{normalise_text(a)}" if normalise_text(t) else ""
            for t, a in zip(titles, artists, strict=True)]
    # same number exactly where the keys are the same; -1 (matching nothing) without a title
    assert groups.dtype == np.int32 and len(groups) == len(keys)
    for i, ki in enumerate(keys):
        assert (groups[i] == -1) == (ki == "")
        for j, kj in enumerate(keys):
            if ki and kj:
                assert (groups[i] == groups[j]) == (ki == kj), (i, j)
    assert groups[4] == groups[6] >= 0 and groups[3] == groups[7] == -1
    assert results.duplicate_of(cat, 4, 6) == (abs(float(cat.duration[4] - cat.duration[6])) <= 3)
    assert not results.duplicate_of(cat, 3, 7) or results.duplicates.is_duplicate(cat, 3, 7)
    # artists repeat: one slot per distinct artist, not per track
    assert len(artist_keys.slots()) == len(set(artists))
