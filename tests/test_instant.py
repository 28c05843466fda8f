"""The offline sentence reader, the constraint JSON and instant-playlist scoring."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from analysis.labels import MSD_LABELS
from index.catalogue import KEYS, Catalogue
from index.instant import (
    CONSTRAINTS_SCHEMA,
    Constraints,
    constraints_from_json,
    constraints_to_json,
    instant_playlist,
    interpret,
)

VOCALS = {"female vocalists", "male vocalists", "female vocalist"}
C = Constraints
Check = Callable[[C], bool]

# (sentence, check on the constraints) - negation, numbers, keys, synonyms, occasions
PHRASINGS: list[tuple[str, Check]] = [
    ("high-tempo low-energy workout music without vocals",
     lambda c: c.tempo_min == 120 and c.energy_max == 0.4 and c.energy_min is None
     and set(c.exclude_tags) >= VOCALS and "instrumental" in c.include_tags
     and "party" in c.include_tags),
    ("sad piano in a minor key around 70 bpm",
     lambda c: c.scale == "minor" and c.key is None and c.tempo_min < 70 < c.tempo_max
     and c.tempo_max - c.tempo_min <= 16 and "sad" in c.include_tags
     and "instrumental" in c.include_tags),
    ("no guitar", lambda c: c.exclude_tags == ["guitar"] and not c.include_tags),
    ("120-130 bpm", lambda c: (c.tempo_min, c.tempo_max) == (120, 130)),
    ("120 to 130 bpm", lambda c: (c.tempo_min, c.tempo_max) == (120, 130)),
    ("between 90 and 100 bpm jazz",
     lambda c: (c.tempo_min, c.tempo_max) == (90, 100) and "jazz" in c.include_tags),
    ("upbeat happy pop",
     lambda c: {"happy", "pop"} <= set(c.include_tags) and c.tempo_min is not None),
    ("chill instrumental", lambda c: {"chill", "instrumental"} <= set(c.include_tags)),
    ("not electronic",
     lambda c: "electronic" in c.exclude_tags and "electronic" not in c.include_tags),
    ("not sad", lambda c: c.exclude_tags == ["sad"] and not c.include_tags),
    ("fast", lambda c: c.tempo_min == 120 and c.tempo_max is None),
    ("slow songs", lambda c: c.tempo_max == 95 and c.tempo_min is None),
    ("very slow sad songs", lambda c: c.tempo_max == 80 and "sad" in c.include_tags),
    ("not too fast please", lambda c: c.tempo_max == 120 and c.tempo_min is None),
    ("high energy", lambda c: c.energy_min == 0.6 and c.energy_max is None),
    ("low energy", lambda c: c.energy_max == 0.4 and c.energy_min is None),
    ("calm and relaxing", lambda c: c.energy_max == 0.4),
    ("something in A minor", lambda c: (c.key, c.scale) == ("A", "minor")),
    ("C# major and fast", lambda c: (c.key, c.scale) == ("C#", "major") and c.tempo_min == 120),
    ("in the key of Bb", lambda c: c.key == "A#" and c.scale is None),
    ("f sharp minor ballads in F# minor", lambda c: (c.key, c.scale) == ("F#", "minor")),
    ("major key happy songs", lambda c: c.scale == "major" and "happy" in c.include_tags),
    ("over 140 bpm", lambda c: c.tempo_min == 140 and c.tempo_max is None),
    ("under 100 bpm", lambda c: c.tempo_max == 100 and c.tempo_min is None),
    ("around 128bpm house", lambda c: c.tempo_min < 128 < c.tempo_max
     and "House" in c.include_tags),
    ("20 songs of 80s rock",
     lambda c: c.size == 20 and {"80s", "rock"} <= set(c.include_tags)),
    ("a playlist of 15 female vocals",
     lambda c: c.size == 15 and "female vocalists" in c.include_tags),
    ("no guitar or vocals, just ambient",
     lambda c: {"guitar"} | VOCALS <= set(c.exclude_tags) and "ambient" in c.include_tags),
    ("vocal-free chill",
     lambda c: set(c.exclude_tags) >= VOCALS and "chill" in c.include_tags),
    ("rap but not pop",
     lambda c: "Hip-Hop" in c.include_tags and c.exclude_tags == ["pop"]),
    ("hip-hop and r&b from the nineties",
     lambda c: {"Hip-Hop", "rnb", "90s"} <= set(c.include_tags)),
    ("rock without metal", lambda c: "rock" in c.include_tags and "metal" in c.exclude_tags),
    ("workout", lambda c: c.energy_min == 0.6 and c.tempo_min == 120),
    ("slow workout", lambda c: c.tempo_max == 95 and c.tempo_min is None
     and c.energy_min == 0.6),
    ("study music", lambda c: "instrumental" in c.include_tags and c.energy_max == 0.4),
    ("acoustic folk with female vocals",
     lambda c: {"acoustic", "folk", "female vocalists"} <= set(c.include_tags)),
    ("energy above 0.7 dance", lambda c: c.energy_min == 0.7 and "dance" in c.include_tags),
    ("mellow jazz, not slow", lambda c: c.tempo_min == 95 and "Mellow" in c.include_tags),
    ("dark ambient", lambda c: c.scale == "minor" and "ambient" in c.include_tags),
    ("dark ambient in C major", lambda c: (c.key, c.scale) == ("C", "major")),
    ("beautiful 70s soul", lambda c: {"beautiful", "70s", "soul"} <= set(c.include_tags)),
    ("party bangers without hip hop",
     lambda c: "party" in c.include_tags and "Hip-Hop" in c.exclude_tags),
]


@pytest.mark.parametrize(("text", "check"), PHRASINGS, ids=[p[0] for p in PHRASINGS])
def test_phrasings(text: str, check: Check) -> None:
    reading = interpret(text)
    assert reading.source == "builtin"
    assert check(reading.constraints), (reading.constraints, reading.explanation)
    assert reading.explanation and all(isinstance(x, str) for x in reading.explanation)
    # whatever the reader produces must be valid constraint JSON
    assert constraints_from_json(constraints_to_json(reading.constraints)) == reading.constraints


def test_at_least_thirty_phrasings() -> None:
    assert len(PHRASINGS) >= 30


def test_explanation_says_how_the_sentence_was_read() -> None:
    lines = interpret("high-tempo low-energy workout music without vocals").explanation
    text = "\n".join(lines)
    assert "'high tempo' → tempo at least 120 bpm" in text
    assert "'low energy' → energy at most 0.4" in text
    assert "'without vocals' → exclude" in text and "prefer instrumental" in text
    assert "no workout tag" in text
    assert "kept what you said" in text  # workout's usual energy was overridden
    lines = interpret("sad piano in a minor key around 70 bpm").explanation
    assert any(line.startswith("'around 70 bpm' → tempo") for line in lines)
    assert any("no piano tag" in line for line in lines)
    assert any("minor scale" in line for line in lines)


def test_unknown_words_are_reported() -> None:
    reading = interpret("reggae dub")
    assert reading.constraints == Constraints()
    assert "not understood: 'reggae', 'dub'" in reading.explanation
    assert "nothing recognised" in reading.explanation[-1]
    assert interpret("").constraints == Constraints()


def test_conflicting_tempo_words_keep_the_later() -> None:
    reading = interpret("fast but actually slow")
    assert reading.constraints.tempo_max == 95 and reading.constraints.tempo_min is None
    assert any("conflicting tempo" in line for line in reading.explanation)
    # numbers beat words
    c = interpret("fast, 80-90 bpm").constraints
    assert (c.tempo_min, c.tempo_max) == (80, 90)


# --------------------------------------------------------------------------- JSON form


def test_json_round_trip_and_mapping_form() -> None:
    c = Constraints(tempo_min=90, tempo_max=110, energy_min=0.2, energy_max=0.8, key="D#",
                    scale="minor", include_tags={"jazz": 1.0, "Mellow": 0.5},
                    exclude_tags=["rock"], size=12)
    data = constraints_to_json(c)
    assert set(data) == set(CONSTRAINTS_SCHEMA["properties"]) == set(CONSTRAINTS_SCHEMA["required"])
    assert constraints_from_json(data) == c
    mapping = dict(data, include_tags={"JAZZ": 1, "mellow": 0.5})
    assert constraints_from_json(mapping).include_tags == {"jazz": 1.0, "Mellow": 0.5}
    assert constraints_from_json({}) == Constraints()
    assert constraints_from_json({"key": "eb"}).key == "D#"


@pytest.mark.parametrize(("obj", "field"), [
    ([], "constraints"),
    ({"tempo_min": "fast"}, "tempo_min"),
    ({"tempo_max": 900}, "tempo_max"),
    ({"energy_min": 1.5}, "energy_min"),
    ({"energy_max": True}, "energy_max"),
    ({"tempo_min": 130, "tempo_max": 120}, "tempo_min"),
    ({"energy_min": 0.8, "energy_max": 0.2}, "energy_min"),
    ({"key": "H"}, "key"),
    ({"scale": "dorian"}, "scale"),
    ({"include_tags": [{"tag": "polka", "weight": 1}]}, "include_tags"),
    ({"include_tags": [{"tag": "rock", "weight": 3}]}, "include_tags"),
    ({"include_tags": "rock"}, "include_tags"),
    ({"exclude_tags": ["nope"]}, "exclude_tags"),
    ({"exclude_tags": "rock"}, "exclude_tags"),
    ({"size": 0}, "size"),
    ({"size": 2.5}, "size"),
    ({"mood": "sad"}, "mood"),
])
def test_invalid_json_names_the_field(obj: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        constraints_from_json(obj)


def test_schema_is_strict_mode_compatible() -> None:
    schema = CONSTRAINTS_SCHEMA
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])
    item = schema["properties"]["include_tags"]["items"]
    assert item["additionalProperties"] is False
    assert item["properties"]["tag"]["enum"] == list(MSD_LABELS)
    assert schema["properties"]["key"]["enum"][:12] == list(KEYS)


# --------------------------------------------------------------------------- scoring


def make_catalogue(n: int = 400, seed: int = 0) -> Catalogue:
    """Random tracks with independent tag, tempo, energy and key columns."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, 200)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tags = rng.beta(1.2, 6.0, size=(n, len(MSD_LABELS))).astype(np.float32)
    return Catalogue(
        ids=np.arange(100, 100 + n, dtype=np.int64),
        vectors=vectors,
        tags=tags,
        tempo=rng.uniform(60, 180, n).astype(np.float32),
        energy=rng.uniform(0, 1, n).astype(np.float32),
        loudness=np.full(n, -14.0, np.float32),
        key=rng.integers(0, 12, n).astype(np.int8),
        minor=rng.random(n) < 0.5,
        duration=rng.uniform(120, 400, n).astype(np.float32),
        titles=[f"Title {i}" for i in range(n)],
        artists=[f"Artist {i % 40}" for i in range(n)],
        albums=[f"Album {i % 80}" for i in range(n)],
    )


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return make_catalogue()


def test_hard_constraints_filter(cat: Catalogue) -> None:
    c = interpret("fast high energy in A minor").constraints
    found = instant_playlist(cat, c, n=50, max_per_artist=0)
    assert found
    for m in found:
        r = cat.row(m.track_id)
        assert cat.tempo[r] >= 120 and cat.energy[r] >= 0.6
        assert cat.key[r] == KEYS.index("A") and cat.minor[r]
    expected = np.flatnonzero((cat.tempo >= 120) & (cat.energy >= 0.6)
                              & (cat.key == KEYS.index("A")) & cat.minor)
    assert len(found) == len(expected)


def test_tags_rank_and_exclusions_remove(cat: Catalogue) -> None:
    jazz, rock = MSD_LABELS.index("jazz"), MSD_LABELS.index("rock")
    found = instant_playlist(cat, interpret("jazz").constraints, n=20, max_per_artist=0)
    top = cat.tags[cat.rows([m.track_id for m in found]), jazz]
    assert top.min() >= np.sort(cat.tags[:, jazz])[-20]  # exactly the 20 most jazzy
    assert [m.similarity for m in found] == sorted((m.similarity for m in found), reverse=True)
    no_rock = instant_playlist(cat, interpret("jazz without rock").constraints, n=100,
                               max_per_artist=0)
    rock_scores = cat.tags[cat.rows([m.track_id for m in no_rock]), rock]
    assert rock_scores.max() < cat.tags[:, rock].mean() + 0.5 * cat.tags[:, rock].std()


def test_around_bpm_prefers_the_centre(cat: Catalogue) -> None:
    found = instant_playlist(cat, interpret("around 100 bpm").constraints, n=5)
    tempos = [float(cat.tempo[cat.row(m.track_id)]) for m in found]
    assert all(abs(t - 100) <= 8 for t in tempos)
    assert abs(tempos[0] - 100) <= abs(tempos[-1] - 100)


def test_artist_cap_size_and_determinism(cat: Catalogue) -> None:
    c = interpret("happy pop").constraints
    a = instant_playlist(cat, c, n=30, max_per_artist=2)
    assert len(a) == 30
    assert max(Counter(cat.artists[cat.row(m.track_id)] for m in a).values()) <= 2
    assert a == instant_playlist(cat, c, n=30, max_per_artist=2)
    sized = interpret("12 songs of happy pop").constraints
    assert len(instant_playlist(cat, sized, n=30)) == 12
    # no constraints at all still gives a deterministic, spread-out list
    plain = instant_playlist(cat, Constraints(), n=10)
    assert len(plain) == 10 and plain == instant_playlist(cat, Constraints(), n=10)
    assert [m.track_id for m in plain] != [int(t) for t in cat.ids[:10]]  # not just low ids


def test_duplicates_collapse_and_impossible_constraints_are_empty() -> None:
    cat = make_catalogue(n=50)
    titles, artists = list(cat.titles), list(cat.artists)
    titles[1], artists[1] = titles[0], artists[0]
    cat = replace(cat, titles=titles, artists=artists)
    ids = [m.track_id for m in instant_playlist(cat, Constraints(), n=50, max_per_artist=0)]
    assert not (int(cat.ids[0]) in ids and int(cat.ids[1]) in ids)
    assert instant_playlist(cat, Constraints(tempo_min=290), n=10) == []
    empty = Catalogue.from_rows([])
    assert instant_playlist(empty, Constraints(), n=10) == []
