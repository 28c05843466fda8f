"""The playlist rules' per-catalogue keys: packed, equal to the per-row normalisation, built once."""

from __future__ import annotations

from dataclasses import replace

from index import results
from index.catalogue import normalise_text
from index.text_column import TextColumn
from tests.catalogue_factory import make_catalogue


def test_keys_are_the_normalised_titles_and_artists_built_once() -> None:
    cat = make_catalogue(n_clusters=3, per_cluster=20)
    titles, artists = list(cat.titles), list(cat.artists)
    titles[3], titles[4], artists[5] = "", "Çafé (Remastered 2011)", "Ärtist  Nämé!"
    cat = replace(cat, titles=titles, artists=artists)
    built: list[int] = []
    results.on_cache_built.append(lambda: built.append(1))
    try:
        artist_keys = results.artist_keys(cat)
        text_keys = results._text_keys(cat)
        assert results.artist_keys(cat) is artist_keys and results._text_keys(cat) is text_keys
    finally:
        results.on_cache_built.pop()
    assert len(built) == 2  # one build each, then cached on the catalogue
    assert isinstance(artist_keys, TextColumn) and isinstance(text_keys, TextColumn)
    assert list(artist_keys) == [normalise_text(a) for a in artists]
    assert list(text_keys) == [
        f"{normalise_text(t)}|{normalise_text(a)}" if normalise_text(t) else ""
        for t, a in zip(titles, artists, strict=True)
    ]
    assert text_keys[3] == "" and text_keys[4].startswith("cafe|")
    # artists repeat: one slot per distinct artist, not per track
    assert len(artist_keys.slots()) == len(set(artists))
