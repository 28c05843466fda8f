"""Instant playlists from a sentence.

A sentence is read into a small, explicit constraint object (tempo and energy
bounds, key and scale, tag preferences and exclusions, size).  Keeping that
object separate from the reading means the built-in offline interpreter and an
optional LLM produce exactly the same thing, the LLM's output can be validated
against one schema, and the user can be shown how their words were understood.

The built-in reader is a small lexicon with longest-phrase matching,
negation that carries across lists ("no guitar or vocals", "vocal-free"),
numbers ("around 70 bpm", "120-130 bpm", "20 songs") and keys ("in A minor",
"a minor key").  The model's 50 tags are its only vocabulary, so words
without a tag of their own (piano, workout) are mapped to the closest tags
and the explanation says so.

Scoring is vectorised over the whole catalogue: hard constraints (tempo,
energy, key, scale, strongly excluded tags) filter, tag preferences rank.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from analysis.labels import MSD_LABELS
from index.catalogue import KEYS, Catalogue, normalise_text
from index.duplicates import duplicate_among
from index.results import Match

__all__ = [
    "CONSTRAINTS_SCHEMA",
    "Constraints",
    "Interpretation",
    "constraints_from_json",
    "constraints_to_json",
    "describe",
    "instant_playlist",
    "interpret",
]

TEMPO_RANGE = (20.0, 300.0)
SIZE_RANGE = (1, 1000)
_TAG_LOOKUP = {t.lower(): t for t in MSD_LABELS}
_FLATS = {"db": "C#", "eb": "D#", "fb": "E", "gb": "F#", "ab": "G#", "bb": "A#", "cb": "B"}
_VOCAL_TAGS = ("female vocalists", "male vocalists", "female vocalist")

# Thresholds the words stand for.  Energy is the analyser's perceptual 0..1 scale.
FAST_BPM = 120.0
SLOW_BPM = 95.0
VERY_FAST_BPM = 140.0
VERY_SLOW_BPM = 80.0
HIGH_ENERGY = 0.6
LOW_ENERGY = 0.4


@dataclass
class Constraints:
    tempo_min: float | None = None
    tempo_max: float | None = None
    energy_min: float | None = None
    energy_max: float | None = None
    key: str | None = None  # one of KEYS
    scale: Literal["major", "minor"] | None = None
    include_tags: dict[str, float] = field(default_factory=dict)  # tag -> weight 0..1
    exclude_tags: list[str] = field(default_factory=list)
    size: int | None = None


@dataclass
class Interpretation:
    constraints: Constraints
    explanation: list[str]
    source: Literal["builtin", "llm"] = "builtin"


# --------------------------------------------------------------------------- JSON form

_NULLABLE_NUMBER = {"type": ["number", "null"]}

# Tags are a list of {tag, weight} rather than a mapping so the schema also works
# with OpenAI's strict structured outputs, which forbid free-form object keys.
CONSTRAINTS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "musegate playlist constraints",
    "description": (
        "Constraints for a playlist. tempo in beats per minute; energy on a 0..1 scale "
        "(0 = very calm, 1 = very energetic); key one of C, C#, D, D#, E, F, F#, G, G#, A, "
        "A#, B; tags are the only genre/mood vocabulary available; null or [] = no constraint."
    ),
    "properties": {
        "tempo_min": {**_NULLABLE_NUMBER, "minimum": TEMPO_RANGE[0], "maximum": TEMPO_RANGE[1]},
        "tempo_max": {**_NULLABLE_NUMBER, "minimum": TEMPO_RANGE[0], "maximum": TEMPO_RANGE[1]},
        "energy_min": {**_NULLABLE_NUMBER, "minimum": 0, "maximum": 1},
        "energy_max": {**_NULLABLE_NUMBER, "minimum": 0, "maximum": 1},
        "key": {"type": ["string", "null"], "enum": [*KEYS, None]},
        "scale": {"type": ["string", "null"], "enum": ["major", "minor", None]},
        "include_tags": {
            "type": "array",
            "description": "tags the music should have, weight 0..1 = how much it matters",
            "items": {
                "type": "object",
                "properties": {
                    "tag": {"type": "string", "enum": list(MSD_LABELS)},
                    "weight": {"type": "number", "minimum": 0, "maximum": 1},
                },
                "required": ["tag", "weight"],
                "additionalProperties": False,
            },
        },
        "exclude_tags": {
            "type": "array",
            "description": "tags the music must not have",
            "items": {"type": "string", "enum": list(MSD_LABELS)},
        },
        "size": {"type": ["integer", "null"], "minimum": SIZE_RANGE[0], "maximum": SIZE_RANGE[1]},
    },
    "required": ["tempo_min", "tempo_max", "energy_min", "energy_max", "key", "scale",
                 "include_tags", "exclude_tags", "size"],
    "additionalProperties": False,
}


def _number(obj: dict, name: str, lo: float, hi: float) -> float | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise ValueError(f"{name}: expected a number or null, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}: {value} is outside {lo}..{hi}")
    return float(value)


def _tag(value: Any, name: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in _TAG_LOOKUP:
        raise ValueError(f"{name}: unknown tag {value!r}")
    return _TAG_LOOKUP[value.strip().lower()]


def _key(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"key: expected a key name or null, got {value!r}")
    k = value.strip().replace("♯", "#").replace("♭", "b")
    if k.lower() in _FLATS:
        return _FLATS[k.lower()]
    upper = k[:1].upper() + k[1:]
    if upper not in KEYS:
        raise ValueError(f"key: unknown key {value!r}; use one of {', '.join(KEYS)}")
    return upper


def constraints_from_json(obj: Any) -> Constraints:
    """Validated constraints from their JSON form (an LLM's answer or an API body).

    ``include_tags`` may be the schema's list of ``{"tag", "weight"}`` or a plain
    ``{tag: weight}`` mapping.  Every error names the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"constraints: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(CONSTRAINTS_SCHEMA["properties"]))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field")
    c = Constraints(
        tempo_min=_number(obj, "tempo_min", *TEMPO_RANGE),
        tempo_max=_number(obj, "tempo_max", *TEMPO_RANGE),
        energy_min=_number(obj, "energy_min", 0.0, 1.0),
        energy_max=_number(obj, "energy_max", 0.0, 1.0),
        key=_key(obj.get("key")),
    )
    scale = obj.get("scale")
    if scale is not None and scale not in ("major", "minor"):
        raise ValueError(f"scale: expected 'major', 'minor' or null, got {scale!r}")
    c.scale = scale
    if c.tempo_min is not None and c.tempo_max is not None and c.tempo_min > c.tempo_max:
        raise ValueError(f"tempo_min: {c.tempo_min} is above tempo_max {c.tempo_max}")
    if c.energy_min is not None and c.energy_max is not None and c.energy_min > c.energy_max:
        raise ValueError(f"energy_min: {c.energy_min} is above energy_max {c.energy_max}")
    include = obj.get("include_tags") or []
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(include, dict):
        pairs = include.items()
    elif isinstance(include, list):
        pairs = []
        for item in include:
            if not isinstance(item, dict) or "tag" not in item:
                raise ValueError(f"include_tags: expected {{'tag', 'weight'}} items, got {item!r}")
            pairs.append((item["tag"], item.get("weight", 1.0)))
    else:
        raise ValueError("include_tags: expected a list of {tag, weight} or a mapping")
    for tag, weight in pairs:
        name = _tag(tag, "include_tags")
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
            raise ValueError(f"include_tags: weight of {name!r} must be a number in 0..1")
        c.include_tags[name] = float(weight)
    exclude = obj.get("exclude_tags") or []
    if not isinstance(exclude, list):
        raise ValueError("exclude_tags: expected a list of tags")
    c.exclude_tags = list(dict.fromkeys(_tag(t, "exclude_tags") for t in exclude))
    size = obj.get("size")
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int | float) or size != int(size):
            raise ValueError(f"size: expected a whole number or null, got {size!r}")
        if not SIZE_RANGE[0] <= size <= SIZE_RANGE[1]:
            raise ValueError(f"size: {size} is outside {SIZE_RANGE[0]}..{SIZE_RANGE[1]}")
        c.size = int(size)
    return c


def constraints_to_json(c: Constraints) -> dict:
    """The schema's JSON form (so it can be fed back to ``constraints_from_json``)."""
    return {
        "tempo_min": c.tempo_min,
        "tempo_max": c.tempo_max,
        "energy_min": c.energy_min,
        "energy_max": c.energy_max,
        "key": c.key,
        "scale": c.scale,
        "include_tags": [{"tag": t, "weight": round(float(w), 4)}
                         for t, w in c.include_tags.items()],
        "exclude_tags": list(c.exclude_tags),
        "size": c.size,
    }


# --------------------------------------------------------------------------- lexicon


@dataclass(frozen=True)
class _Concept:
    """What a word or phrase means: tag weights and/or a tempo/energy reading."""

    tags: tuple[tuple[str, float], ...] = ()
    tempo: Literal["fast", "slow", "mid"] | None = None
    energy: Literal["high", "low"] | None = None
    implied: bool = False  # tempo/energy only apply when nothing explicit says otherwise
    scale: Literal["major", "minor"] | None = None
    note: str = ""  # shown when the word has no tag of its own
    vocals: bool = False  # negation means "instrumental", not just "no singer tag"


def _c(*tags: str | tuple[str, float], **kw: Any) -> _Concept:
    pairs = tuple((t, 1.0) if isinstance(t, str) else t for t in tags)
    for t, _ in pairs:
        assert t in MSD_LABELS, t
    return _Concept(tags=pairs, **kw)


_ELECTRONIC = _c("electronic", ("electronica", 0.8), ("electro", 0.6))
_VOCALS = _c(*_VOCAL_TAGS, vocals=True)
_HIPHOP = _c("Hip-Hop")

LEXICON: dict[str, _Concept] = {
    # tempo
    "fast": _c(tempo="fast"), "quick": _c(tempo="fast"), "speedy": _c(tempo="fast"),
    "high tempo": _c(tempo="fast"), "uptempo": _c(tempo="fast"), "up tempo": _c(tempo="fast"),
    "high bpm": _c(tempo="fast"), "rapid": _c(tempo="fast"),
    "slow": _c(tempo="slow"), "low tempo": _c(tempo="slow"), "downtempo": _c(tempo="slow"),
    "down tempo": _c(tempo="slow"), "low bpm": _c(tempo="slow"), "slower": _c(tempo="slow"),
    "faster": _c(tempo="fast"), "mid tempo": _c(tempo="mid"), "midtempo": _c(tempo="mid"),
    "medium tempo": _c(tempo="mid"), "moderate tempo": _c(tempo="mid"),
    # energy
    "high energy": _c(energy="high"), "energetic": _c(energy="high"),
    "intense": _c(energy="high"), "powerful": _c(energy="high"), "loud": _c(energy="high"),
    "pumping": _c(energy="high"), "hype": _c(energy="high"), "banger": _c(energy="high"),
    "bangers": _c(energy="high"),
    "low energy": _c(energy="low"), "calm": _c(energy="low"), "quiet": _c(energy="low"),
    "gentle": _c(energy="low"), "soft": _c(energy="low"), "peaceful": _c(energy="low"),
    "soothing": _c(energy="low"), "relaxing": _c(energy="low"),
    "relaxed": _c("chill", energy="low"), "tranquil": _c(energy="low"),
    "serene": _c(energy="low"),
    # scale words
    "minor key": _c(scale="minor"), "major key": _c(scale="major"),
    "in minor": _c(scale="minor"), "in major": _c(scale="major"),
    # moods
    "sad": _c("sad"), "melancholic": _c("sad"), "melancholy": _c("sad"),
    "depressing": _c("sad"), "gloomy": _c("sad"), "heartbreak": _c("sad"),
    "moody": _c(("sad", 0.6), scale="minor", implied=True),
    "dark": _c(("sad", 0.6), ("experimental", 0.3), scale="minor", implied=True),
    "happy": _c("happy"), "cheerful": _c("happy"), "joyful": _c("happy"),
    "uplifting": _c("happy", ("beautiful", 0.4)), "feel good": _c("happy", ("catchy", 0.4)),
    "feelgood": _c("happy", ("catchy", 0.4)), "sunny": _c("happy"),
    "upbeat": _c("happy", ("catchy", 0.5), tempo="fast", implied=True),
    "chill": _c("chill", ("chillout", 0.8)), "chilled": _c("chill", ("chillout", 0.8)),
    "chillout": _c("chillout", ("chill", 0.8)), "chill out": _c("chillout", ("chill", 0.8)),
    "laid back": _c("chill", ("Mellow", 0.6)), "laidback": _c("chill", ("Mellow", 0.6)),
    "mellow": _c("Mellow"), "smooth": _c("Mellow", ("easy listening", 0.6)),
    "beautiful": _c("beautiful"), "pretty": _c("beautiful"), "lovely": _c("beautiful"),
    "gorgeous": _c("beautiful"), "sexy": _c("sexy"), "sensual": _c("sexy"),
    "romantic": _c("sexy", ("beautiful", 0.5)), "catchy": _c("catchy"),
    "earworm": _c("catchy"), "dreamy": _c("ambient", ("chillout", 0.6), ("beautiful", 0.5)),
    "atmospheric": _c("ambient", ("experimental", 0.4)),
    "aggressive": _c("metal", ("hard rock", 0.7), ("punk", 0.5), energy="high", implied=True),
    "angry": _c("metal", ("punk", 0.7), energy="high", implied=True),
    "heavy": _c("heavy metal", ("metal", 0.8), ("hard rock", 0.6)),
    "weird": _c("experimental"), "strange": _c("experimental"),
    "easy listening": _c("easy listening"), "easy": _c("easy listening"),
    # genres
    "rock": _c("rock"), "pop": _c("pop"), "alternative": _c("alternative"),
    "alt": _c("alternative"), "indie": _c("indie"), "electronic": _ELECTRONIC,
    "electronica": _c("electronica", ("electronic", 0.8)), "electro": _c("electro"),
    "edm": _c("electronic", ("dance", 0.8), ("electro", 0.6)),
    "techno": _c("electronic", ("House", 0.6), ("electro", 0.6), note="no techno tag"),
    "trance": _c("electronic", ("dance", 0.7), note="no trance tag"),
    "synth": _c("electronic", ("80s", 0.3)), "synthwave": _c("electronic", ("80s", 0.7)),
    "dance": _c("dance"), "dancing": _c("dance"), "danceable": _c("dance"),
    "jazz": _c("jazz"), "jazzy": _c("jazz"), "metal": _c("metal", ("heavy metal", 0.7)),
    "heavy metal": _c("heavy metal", ("metal", 0.8)), "classic rock": _c("classic rock"),
    "soul": _c("soul"), "soulful": _c("soul"), "indie rock": _c("indie rock"),
    "indie pop": _c("indie pop"), "alternative rock": _c("alternative rock"),
    "alt rock": _c("alternative rock"), "folk": _c("folk"), "folky": _c("folk"),
    "punk": _c("punk"), "oldies": _c("oldies"), "blues": _c("blues"), "bluesy": _c("blues"),
    "hard rock": _c("hard rock"), "ambient": _c("ambient"), "acoustic": _c("acoustic"),
    "unplugged": _c("acoustic"), "experimental": _c("experimental"),
    "avant garde": _c("experimental"), "guitar": _c("guitar"), "guitars": _c("guitar"),
    "hip hop": _HIPHOP, "hiphop": _HIPHOP, "rap": _HIPHOP, "rapping": _HIPHOP,
    "country": _c("country"), "funk": _c("funk"), "funky": _c("funk"),
    "disco": _c("dance", ("funk", 0.7), ("70s", 0.5), note="no disco tag"),
    "progressive rock": _c("Progressive rock"), "prog": _c("Progressive rock"),
    "prog rock": _c("Progressive rock"), "progressive": _c("Progressive rock"),
    "rnb": _c("rnb"), "r&b": _c("rnb"), "r b": _c("rnb"), "house": _c("House"),
    "grunge": _c("alternative rock", ("90s", 0.6), note="no grunge tag"),
    "lofi": _c("chill", ("chillout", 0.7), ("Hip-Hop", 0.4), note="no lo-fi tag"),
    "lo fi": _c("chill", ("chillout", 0.7), ("Hip-Hop", 0.4), note="no lo-fi tag"),
    "emo": _c("punk", ("alternative", 0.6), ("sad", 0.4), note="no emo tag"),
    "singer songwriter": _c("folk", ("acoustic", 0.8)),
    "piano": _c("instrumental", ("beautiful", 0.5), ("Mellow", 0.4),
                note="no piano tag; read as instrumental, beautiful, mellow"),
    "classical": _c("instrumental", ("beautiful", 0.6),
                    note="no classical tag; read as instrumental, beautiful"),
    "orchestral": _c("instrumental", ("beautiful", 0.6),
                     note="no orchestral tag; read as instrumental, beautiful"),
    "instrumental": _c("instrumental"), "instrumentals": _c("instrumental"),
    # vocals
    "vocals": _VOCALS, "vocal": _VOCALS, "singing": _VOCALS, "singer": _VOCALS,
    "singers": _VOCALS, "voice": _VOCALS, "voices": _VOCALS, "lyrics": _VOCALS,
    "female vocals": _c("female vocalists", ("female vocalist", 0.8)),
    "female vocalist": _c("female vocalists", ("female vocalist", 0.8)),
    "female vocalists": _c("female vocalists", ("female vocalist", 0.8)),
    "female singer": _c("female vocalists", ("female vocalist", 0.8)),
    "female voice": _c("female vocalists", ("female vocalist", 0.8)),
    "male vocals": _c("male vocalists"), "male vocalist": _c("male vocalists"),
    "male vocalists": _c("male vocalists"), "male singer": _c("male vocalists"),
    "male voice": _c("male vocalists"),
    # eras
    "60s": _c("60s"), "sixties": _c("60s"), "1960s": _c("60s"),
    "70s": _c("70s"), "seventies": _c("70s"), "1970s": _c("70s"),
    "80s": _c("80s"), "eighties": _c("80s"), "1980s": _c("80s"),
    "90s": _c("90s"), "nineties": _c("90s"), "1990s": _c("90s"),
    "00s": _c("00s"), "2000s": _c("00s"), "noughties": _c("00s"), "aughts": _c("00s"),
    "old": _c("oldies"), "retro": _c("oldies", ("70s", 0.4)), "vintage": _c("oldies"),
    "classic": _c("oldies", ("classic rock", 0.5)),
    # occasions: tags plus an implied tempo/energy that explicit words override
    "workout": _c("party", ("dance", 0.8), ("electronic", 0.4), energy="high", tempo="fast",
                  implied=True, note="no workout tag; read as party, dance"),
    "gym": _c("party", ("dance", 0.8), energy="high", tempo="fast", implied=True,
              note="no gym tag; read as party, dance"),
    "running": _c("dance", ("electronic", 0.5), energy="high", tempo="fast", implied=True,
                  note="no running tag; read as dance"),
    "party": _c("party", ("dance", 0.7), energy="high", implied=True),
    "study": _c("instrumental", ("ambient", 0.6), ("chill", 0.5), energy="low", implied=True,
                note="no study tag; read as instrumental, ambient, chill"),
    "studying": _c("instrumental", ("ambient", 0.6), ("chill", 0.5), energy="low",
                   implied=True, note="no study tag; read as instrumental, ambient, chill"),
    "focus": _c("instrumental", ("ambient", 0.6), energy="low", implied=True,
                note="no focus tag; read as instrumental, ambient"),
    "sleep": _c("ambient", ("chillout", 0.6), energy="low", tempo="slow", implied=True,
                note="no sleep tag; read as ambient, chillout"),
    "sleeping": _c("ambient", ("chillout", 0.6), energy="low", tempo="slow", implied=True,
                   note="no sleep tag; read as ambient, chillout"),
    "dinner": _c("jazz", ("easy listening", 0.7), ("soul", 0.5), energy="low", implied=True,
                 note="no dinner tag; read as jazz, easy listening, soul"),
    "driving": _c("rock", ("classic rock", 0.6), note="no driving tag; read as rock"),
    "road trip": _c("rock", ("classic rock", 0.6), ("catchy", 0.4),
                    note="no road-trip tag; read as rock, catchy"),
    "rainy day": _c("Mellow", ("sad", 0.5), ("chill", 0.5), energy="low", implied=True),
}
_MAX_PHRASE = max(len(p.split()) for p in LEXICON)

NEGATIONS = {"no", "not", "without", "non", "minus", "except", "excluding", "exclude", "avoid",
             "never", "nothing", "none", "w/o", "dont", "don't", "isnt", "isn't", "nor", "skip",
             "less"}
LIST_WORDS = {"or", "and", "nor", "neither"}
FILLER = {
    "a", "an", "the", "some", "any", "me", "my", "i", "im", "i'm", "we", "us", "give", "play",
    "make", "want", "need", "like", "something", "stuff", "music", "song", "songs", "track",
    "tracks", "tune", "tunes", "playlist", "mix", "for", "to", "of", "with", "in", "on",
    "that", "which", "is", "are", "be", "it", "its", "please", "kind", "sort", "vibe",
    "vibes", "feel", "feeling", "but", "too", "much", "very", "really", "super", "extremely",
    "slightly", "somewhat", "bit", "little", "quite", "pretty", "mostly", "only", "just",
    "key", "bpm", "tempo", "energy", "style", "genre", "type", "from", "by", "at", "sounds",
    "sounding", "lots", "lot", "plenty", "heavily", "mood", "while", "when", "during",
    "around", "about", "put", "together", "all", "maybe", "can", "you", "get", "should",
    "would", "could", "have", "has", "will", "more", "so", "as", "also", "&", "yet", "free",
}
INTENSIFIERS = {"very", "really", "super", "extremely", "ultra", "totally", "mega", "lots"}
SOFTENERS = {"slightly", "somewhat", "bit", "little", "mildly", "kinda", "kind", "fairly"}


# --------------------------------------------------------------------------- reading


@dataclass
class _Reading:
    """Accumulates what the sentence says; later and more specific statements win."""

    bounds: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # value, prio, order
    include: dict[str, float] = field(default_factory=dict)
    exclude: list[str] = field(default_factory=list)
    key: str | None = None
    scale: str | None = None
    scale_prio: int = 0
    size: int | None = None
    lines: list[str] = field(default_factory=list)
    order: int = 0
    # (phrase, concept, negated, very): tempo/energy an occasion word suggests, applied
    # at the end and only where the sentence itself said nothing about that dimension
    implied: list[tuple[str, _Concept, bool, bool]] = field(default_factory=list)

    def bound(self, name: str, value: float, prio: int) -> bool:
        """Set a bound unless something more explicit already set it."""
        self.order += 1
        old = self.bounds.get(name)
        if old is not None and old[1] > prio:
            return False
        self.bounds[name] = (float(value), prio, self.order)
        return True

    def set_scale(self, scale: str, prio: int) -> bool:
        if self.scale is not None and self.scale_prio > prio:
            return False
        self.scale, self.scale_prio = scale, prio
        return True


_BPM = r"\s*(?:bpm|beats per minute|beats a minute)"
_NUM = r"(\d{2,3}(?:\.\d+)?)"
_PATTERNS: list[tuple[str, str]] = [
    ("range", rf"(?:between\s+|from\s+)?{_NUM}\s*(?:bpm\s*)?(?:-|–|—|to|and)\s*{_NUM}{_BPM}"),
    ("min", rf"(?:over|above|more than|faster than|at least|no slower than|minimum(?: of)?|min|>=?)\s*{_NUM}{_BPM}"),
    ("max", rf"(?:under|below|less than|slower than|at most|no faster than|up to|maximum(?: of)?|max|<=?)\s*{_NUM}{_BPM}"),
    ("about", rf"(?:around|about|approximately|approx\.?|roughly|near|circa|~|close to)\s*{_NUM}{_BPM}"),
    ("exact", rf"(?:at\s+)?{_NUM}{_BPM}"),
    ("size", r"(?:(\d{1,4})\s*(?:-|\s)?\s*(?:songs?|tracks?|tunes?)\b|(?:playlist|list|mix) of (\d{1,4})\b)"),
    ("energy_min", r"energy\s*(?:above|over|at least|>=?)\s*(\d?\.\d+|\d{1,3}\s*%)"),
    ("energy_max", r"energy\s*(?:below|under|at most|<=?)\s*(\d?\.\d+|\d{1,3}\s*%)"),
]
# "in A minor", "C# major", "in the key of Bb", "in a minor key" (an article, see _read_keys)
_KEY_RE = re.compile(
    r"\b(?:(in|key of)\s+(?:the\s+key\s+of\s+)?)?([a-g])(\s*(?:#|♯|sharp|b|♭|flat))?"
    r"(?:\s+(major|minor|maj|min))?(\s+key)?\b",
    re.IGNORECASE,
)


def _energy_value(raw: str) -> float:
    raw = raw.replace(" ", "")
    return float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)


def _read_numbers(text: str, r: _Reading) -> str:
    """Tempo ranges, bpm values, sizes and energy numbers; returns the text without them."""
    for kind, pattern in _PATTERNS:
        for m in re.finditer(pattern, text):
            phrase = m.group(0).strip()
            if kind == "range":
                lo, hi = sorted((float(m.group(1)), float(m.group(2))))
                r.bound("tempo_min", lo, 3)
                r.bound("tempo_max", hi, 3)
                r.lines.append(f"'{phrase}' → tempo {lo:g}–{hi:g} bpm")
            elif kind in ("min", "max"):
                v = float(m.group(1))
                r.bound(f"tempo_{kind}", v, 3)
                word = "at least" if kind == "min" else "at most"
                r.lines.append(f"'{phrase}' → tempo {word} {v:g} bpm")
            elif kind in ("about", "exact"):
                v = float(m.group(1))
                tol = max(4.0, round(v * (0.08 if kind == "about" else 0.04)))
                r.bound("tempo_min", v - tol, 3)
                r.bound("tempo_max", v + tol, 3)
                r.lines.append(f"'{phrase}' → tempo {v - tol:g}–{v + tol:g} bpm")
            elif kind == "size":
                v = int(m.group(1) or m.group(2))
                if SIZE_RANGE[0] <= v <= SIZE_RANGE[1]:
                    r.size = v
                    r.lines.append(f"'{phrase}' → {v} songs")
            else:
                v = min(1.0, max(0.0, _energy_value(m.group(1))))
                r.bound(kind, v, 3)
                word = "at least" if kind == "energy_min" else "at most"
                r.lines.append(f"'{phrase}' → energy {word} {v:g}")
            text = text[: m.start()] + " " * (m.end() - m.start()) + text[m.end():]
    return text


def _read_keys(original: str, text: str, r: _Reading) -> str:
    """Keys need the original casing: 'in A minor' is a key, 'in a minor key' is a scale."""
    for m in _KEY_RE.finditer(original):
        lead, letter, accidental, quality, key_word = m.groups()
        if not (lead or quality or accidental):
            continue  # a lone letter is just a word
        if text[m.start(): m.end()].strip() == "":
            continue  # already consumed
        if letter == "a" and not accidental and (key_word or not quality):
            continue  # "a minor key" / "in a ..." - the article; the scale words handle it
        if letter.islower() and not lead and not accidental:
            continue  # "b minor" mid-sentence is too ambiguous without "in"
        if not quality and not (lead and letter.isupper()):
            continue
        acc = (accidental or "").strip().lower()
        name = letter.upper()
        if acc in ("#", "♯", "sharp"):
            name = KEYS[(KEYS.index(name) + 1) % 12]
        elif acc in ("b", "♭", "flat"):
            name = KEYS[(KEYS.index(name) - 1) % 12]
        r.key = name
        phrase = m.group(0).strip()
        text_line = f"'{phrase}' → key {name}"
        if quality:
            scale = "minor" if quality.lower().startswith("min") else "major"
            r.set_scale(scale, 3)
            text_line += f" {scale}"
        r.lines.append(text_line)
        text = text[: m.start()] + " " * (m.end() - m.start()) + text[m.end():]
    return text


def _tokens(text: str) -> list[str]:
    text = text.replace("r&b", "rnb").replace("w/o", " without ")
    text = re.sub(r"(\w)-(\w)", r"\1 \2", text)
    return re.findall(r"[a-z0-9&']+", text)


def _apply(concept: _Concept, phrase: str, negated: bool, weight: float, r: _Reading,
           very: bool, deferred: bool = False) -> None:
    what: list[str] = []
    prio = 1 if concept.implied else 2
    if concept.implied and not deferred and (concept.tempo or concept.energy or concept.scale):
        if not negated:
            r.implied.append((phrase, concept, negated, very))
        concept = _Concept(tags=concept.tags, note=concept.note, vocals=concept.vocals)
    if concept.tempo:
        fast = concept.tempo == "fast"
        if concept.tempo == "mid":
            if negated:
                what.append("(tempo: 'not mid-tempo' ignored)")
            else:
                if r.bound("tempo_min", SLOW_BPM, prio) and r.bound("tempo_max", FAST_BPM, prio):
                    what.append(f"tempo {SLOW_BPM:g}–{FAST_BPM:g} bpm")
        elif negated:
            name, v = ("tempo_max", FAST_BPM) if fast else ("tempo_min", SLOW_BPM)
            if r.bound(name, v, prio):
                what.append(f"tempo {'at most' if fast else 'at least'} {v:g} bpm")
        else:
            v = (VERY_FAST_BPM if very else FAST_BPM) if fast else (
                VERY_SLOW_BPM if very else SLOW_BPM)
            name = "tempo_min" if fast else "tempo_max"
            if r.bound(name, v, prio):
                what.append(f"tempo {'at least' if fast else 'at most'} {v:g} bpm")
    if concept.energy:
        high = concept.energy == "high"
        if negated:
            high = not high
        v = HIGH_ENERGY if high else LOW_ENERGY
        if very:
            v = min(0.8, v + 0.15) if high else max(0.2, v - 0.15)
        name = "energy_min" if high else "energy_max"
        if r.bound(name, v, prio):
            what.append(f"energy {'at least' if high else 'at most'} {v:g}")
    if concept.scale and not negated and r.set_scale(concept.scale, prio):
        what.append(f"{concept.scale} scale")
    if concept.tags and not deferred:
        names = [t for t, _ in concept.tags]
        if negated:
            new = [t for t in names if t not in r.exclude]
            r.exclude.extend(new)
            for t in names:
                r.include.pop(t, None)
            what.append("exclude " + ", ".join(names))
            if concept.vocals:
                r.include["instrumental"] = max(r.include.get("instrumental", 0.0), 1.0)
                what.append("prefer instrumental")
        else:
            for t, w in concept.tags:
                if t in r.exclude:
                    continue
                r.include[t] = round(min(1.0, max(r.include.get(t, 0.0), w * weight)), 4)
            what.append("prefer " + ", ".join(names))
    if concept.note and not deferred:
        what.append(f"[{concept.note}]")
    if what:
        r.lines.append(f"'{phrase}' → " + "; ".join(what) + (" (implied)" if deferred else ""))


def _apply_implied(r: _Reading) -> None:
    """Occasion words suggest a tempo/energy; what the sentence says outright wins."""
    for phrase, concept, negated, very in r.implied:
        said = {name.split("_")[0] for name, (_, prio, _) in r.bounds.items() if prio >= 2}
        if r.scale_prio >= 2:
            said.add("scale")
        kept = {"tempo": concept.tempo if "tempo" not in said else None,
                "energy": concept.energy if "energy" not in said else None,
                "scale": concept.scale if "scale" not in said else None}
        dropped = [k for k in ("tempo", "energy", "scale") if getattr(concept, k) and not kept[k]]
        if dropped:
            r.lines.append(f"'{phrase}' usually means a {'/'.join(dropped)} of its own; "
                           "kept what you said instead")
        if any(kept.values()):
            _apply(_Concept(tempo=kept["tempo"], energy=kept["energy"], scale=kept["scale"],
                            implied=True), phrase, negated, 1.0, r, very, deferred=True)


def _read_words(tokens: list[str], r: _Reading) -> list[str]:
    """Longest-phrase matching with negation scope; returns the words not understood."""
    unknown: list[str] = []
    negation: str | None = None  # the cue words, while a negation is open
    carry = 0  # how many more filler words the open negation survives
    weight, very = 1.0, False
    i = 0
    while i < len(tokens):
        match = None
        for size in range(min(_MAX_PHRASE, len(tokens) - i), 0, -1):
            phrase = " ".join(tokens[i: i + size])
            if phrase in LEXICON:
                match = (phrase, size)
                break
        if match is not None:
            phrase, size = match
            after = tokens[i + size] if i + size < len(tokens) else ""
            negated = negation is not None or after == "free"
            shown = f"{negation} {phrase}" if negation else phrase
            if after == "free":
                shown = f"{phrase}-free"
            if very and not negation:
                shown = f"very {shown}"
            _apply(LEXICON[phrase], shown, negated, weight, r, very)
            i += size + (1 if after == "free" else 0)
            weight, very = 1.0, False
            nxt = tokens[i] if i < len(tokens) else ""
            if negation is not None and nxt in LIST_WORDS:
                carry = 2  # "no guitar or vocals": the list stays negated
            else:
                negation, carry = None, 0
            continue
        word = tokens[i]
        i += 1
        if word in NEGATIONS:
            negation = word if negation is None else negation
            carry = 3
            continue
        if word in LIST_WORDS:
            if negation is not None:
                carry -= 1
                if carry <= 0:
                    negation = None
            continue
        if word in INTENSIFIERS:
            weight, very = 1.0, True
        elif word in SOFTENERS:
            weight = 0.5
        if word in FILLER or word in INTENSIFIERS or word in SOFTENERS:
            if negation is not None:
                carry -= 1
                if carry <= 0:
                    negation = None
            continue
        if word.isdigit():
            unknown.append(word)
            continue
        unknown.append(word)
        negation, carry = None, 0
    return unknown


def interpret(text: str) -> Interpretation:
    """Read a sentence into constraints, offline, and say how each part was read."""
    original = " ".join((text or "").split())
    lowered = original.lower()
    r = _Reading()
    remaining = _read_numbers(lowered, r)
    remaining = _read_keys(original, remaining, r)
    unknown = _read_words(_tokens(remaining), r)
    _apply_implied(r)

    c = Constraints(key=r.key, scale=r.scale, size=r.size)  # type: ignore[arg-type]
    for name in ("tempo_min", "tempo_max", "energy_min", "energy_max"):
        if name in r.bounds:
            setattr(c, name, r.bounds[name][0])
    for lo, hi in (("tempo_min", "tempo_max"), ("energy_min", "energy_max")):
        a, b = r.bounds.get(lo), r.bounds.get(hi)
        if a and b and a[0] > b[0]:
            # contradictory words ("fast ... slow"): keep the more explicit, else the later
            drop = lo if (a[1], a[2]) < (b[1], b[2]) else hi
            setattr(c, drop, None)
            r.lines.append(f"conflicting {lo.split('_')[0]} wishes; ignoring {drop.replace('_', ' ')}")
    c.exclude_tags = list(r.exclude)
    c.include_tags = {t: w for t, w in r.include.items() if t not in r.exclude}
    lines = list(r.lines)
    if unknown:
        lines.append("not understood: " + ", ".join(f"'{w}'" for w in dict.fromkeys(unknown)))
    if not r.lines:
        lines.append("nothing recognised; ranking the whole library")
    return Interpretation(constraints=c, explanation=lines, source="builtin")


def describe(c: Constraints) -> list[str]:
    """Constraints as sentences, for answers that did not come from the built-in reader."""
    out: list[str] = []
    if c.tempo_min is not None or c.tempo_max is not None:
        lo = f"{c.tempo_min:g}" if c.tempo_min is not None else "any"
        hi = f"{c.tempo_max:g}" if c.tempo_max is not None else "any"
        out.append(f"tempo {lo}–{hi} bpm")
    if c.energy_min is not None or c.energy_max is not None:
        lo = f"{c.energy_min:g}" if c.energy_min is not None else "0"
        hi = f"{c.energy_max:g}" if c.energy_max is not None else "1"
        out.append(f"energy {lo}–{hi}")
    if c.key or c.scale:
        out.append("key " + " ".join(x for x in (c.key, c.scale) if x))
    if c.include_tags:
        out.append("prefer " + ", ".join(f"{t} ({w:g})" for t, w in c.include_tags.items()))
    if c.exclude_tags:
        out.append("exclude " + ", ".join(c.exclude_tags))
    if c.size:
        out.append(f"{c.size} songs")
    return out


# --------------------------------------------------------------------------- scoring


def _tag_z(tags: np.ndarray) -> np.ndarray:
    std = tags.std(axis=0)
    return np.clip((tags - tags.mean(axis=0)) / np.where(std > 1e-6, std, 1.0), -3.0, 3.0)


def _spread_order(ids: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random tiebreak, so equal scores do not always favour low ids."""
    return (ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(2**32)


def instant_playlist(cat: Catalogue, constraints: Constraints, n: int = 30,
                     max_per_artist: int = 3, hide_duplicates: bool = True) -> list[Match]:
    """Songs that satisfy the hard constraints, best tag match first.

    ``similarity`` of each match is its relevance score (higher is better), not a cosine."""
    c = constraints
    n = c.size or n
    if not len(cat) or n <= 0:
        return []
    tags = cat.tags.astype(np.float64)
    mask = np.ones(len(cat), dtype=bool)
    score = np.zeros(len(cat))
    tempo = cat.tempo.astype(np.float64)
    energy = cat.energy.astype(np.float64)
    if c.tempo_min is not None or c.tempo_max is not None:
        lo = c.tempo_min if c.tempo_min is not None else 0.0
        hi = c.tempo_max if c.tempo_max is not None else np.inf
        mask &= (tempo > 0) & (tempo >= lo) & (tempo <= hi)
        if np.isfinite(hi) and lo > 0:
            score -= 0.3 * np.abs(tempo - (lo + hi) / 2) / max((hi - lo) / 2, 1.0)
    if c.energy_min is not None:
        mask &= energy >= c.energy_min
    if c.energy_max is not None:
        mask &= energy <= c.energy_max
    if c.key is not None:
        mask &= cat.key == KEYS.index(c.key)
    if c.scale is not None:
        mask &= cat.minor == (c.scale == "minor")
    z = _tag_z(tags)
    if c.exclude_tags:
        cols = [MSD_LABELS.index(t) for t in c.exclude_tags]
        col = tags[:, cols]
        threshold = np.maximum(0.1, col.mean(axis=0) + 0.5 * col.std(axis=0))
        mask &= ~(col >= threshold).any(axis=1)
        score -= 0.5 * np.clip(z[:, cols], 0.0, None).sum(axis=1)
    if c.include_tags:
        cols = [MSD_LABELS.index(t) for t in c.include_tags]
        w = np.array(list(c.include_tags.values()), dtype=np.float64)
        score += z[:, cols] @ w / max(float(w.sum()), 1e-9)
    rows = np.flatnonzero(mask)
    if not len(rows):
        return []
    order = rows[np.lexsort((_spread_order(cat.ids[rows]), -np.round(score[rows], 9)))]
    out: list[Match] = []
    per_artist: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    taken: list[int] = []
    for row in order:
        artist = normalise_text(cat.artists[row])
        if artist and max_per_artist > 0 and per_artist.get(artist, 0) >= max_per_artist:
            continue
        title = normalise_text(cat.titles[row])
        if hide_duplicates:
            if title and (title, artist) in seen:
                continue  # the same recording twice (another encoding or cut)
            if duplicate_among(cat, int(row), np.array(taken, np.int64)):
                continue
        if title:
            seen.add((title, artist))
        taken.append(int(row))
        if artist:
            per_artist[artist] = per_artist.get(artist, 0) + 1
        out.append(Match(int(cat.ids[row]), round(float(score[row]), 6)))
        if len(out) >= n:
            break
    return out
