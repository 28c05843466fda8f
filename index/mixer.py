"""A "Don't Stop The Music" mix: what to play next after a queue, by sound, under a DJ's rules.

LMS's DSTM mixers ask for a few songs to append to a player's queue, given some
seed songs from it and the songs played before. The sound decides the order
(the best cosine over the seeds); the rules keep the mix listenable:

* hard rules drop a candidate: a seed, a previous song or a copy of one; too
  short or too long; too far from every seed (``max_distance`` on the 1 − cosine
  scale); outside the genre groups of the seeds' genres, or, for seeds in no
  group, inside any group (``filter_genre``); Christmas songs outside December
  (``exclude_xmas``);
* soft rules set a candidate aside: an artist heard in the last
  ``no_repeat_artist`` songs or an album in the last ``no_repeat_album`` (or
  already in this mix), a title already heard, a tempo or key that does not
  follow the seed (``max_bpm_diff``, ``filter_key``). Set-aside songs fill the
  mix, best first, only when too few candidates pass;
* genres nudge the score: a candidate that shares a genre with the seed loses
  nothing, one in the same genre group loses ``group_adjust``, any other
  ``no_genre_adjust`` (both on the 1 − cosine scale);
* the three distances (``max_distance``, ``group_adjust``, ``no_genre_adjust``)
  are stated on the raw embeddings' scale, as the LMS plugin's settings always
  were, and mapped into the catalogue's geometry (``Geometry.distance_for``);
* ``shuffle`` draws the mix at random from a pool several times its size, so
  the same queue does not always continue the same way.

Pure: the caller supplies the metadata and the random generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from index.catalogue import Catalogue, normalise_text
from index.faiss_index import SimilarityIndex
from index.results import PlaylistBuilder, duplicate_of

#: Genres that mark a Christmas song (compared case-insensitively).
CHRISTMAS_GENRES = frozenset({"christmas", "xmas"})
#: Album artists whose albums are compilations: never an "album repeat".
VARIOUS_ARTISTS = frozenset({"various", "various artists"})
#: With shuffle, the pool a mix is drawn from is this many times its size.
SHUFFLE_FACTOR = 5


@dataclass(frozen=True)
class TrackMeta:
    """What the rules need to know of a song beyond its sound (from the music server)."""

    artist: str = ""
    album: str = ""
    album_artist: str = ""
    title: str = ""
    genres: frozenset[str] = frozenset()
    duration: float | None = None

    def artist_key(self) -> str:
        return normalise_text(self.artist)

    def album_key(self) -> str:
        """Album artist + album, or "" for a compilation or an unknown album."""
        owner = normalise_text(self.album_artist or self.artist)
        if not self.album or owner in VARIOUS_ARTISTS:
            return ""
        return f"{owner}|{normalise_text(self.album)}"


@dataclass(frozen=True)
class MixRules:
    count: int = 5
    shuffle: bool = True
    min_duration: float = 0.0
    max_duration: float = 0.0
    no_repeat_artist: int = 0
    no_repeat_album: int = 0
    filter_genre: bool = False
    genre_groups: tuple[frozenset[str], ...] = ()
    no_genre_adjust: float = 0.15
    group_adjust: float = 0.07
    exclude_xmas: bool = False
    max_distance: float = 0.75
    max_bpm_diff: float = 0.0
    filter_key: bool = False


@dataclass
class _Pick:
    row: int
    score: float
    seed: int  # row of the seed it scored best against


@dataclass
class _Seen:
    artists: set[str] = field(default_factory=set)
    albums: set[str] = field(default_factory=set)
    titles: set[str] = field(default_factory=set)

    def add(self, meta: TrackMeta, artists: bool = True, albums: bool = True) -> None:
        if artists and meta.artist_key():
            self.artists.add(meta.artist_key())
        if albums and meta.album_key():
            self.albums.add(meta.album_key())
        if normalise_text(meta.title):
            self.titles.add(normalise_text(meta.title))

    def repeats(self, meta: TrackMeta, rules: MixRules) -> bool:
        if rules.no_repeat_artist > 0 and meta.artist_key() in self.artists:
            return True
        if rules.no_repeat_album > 0 and meta.album_key() in self.albums:
            return True
        return bool(normalise_text(meta.title)) and normalise_text(meta.title) in self.titles


def camelot(key: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Camelot wheel number (1..12) per row, 0 for an unknown key; minor keys take their
    relative major's number (A minor and C major are both 8)."""
    k = key.astype(np.int64)
    major_of = np.where(minor, (k + 3) % 12, k)
    number = (7 * major_of + 7) % 12 + 1
    return np.where(k < 0, 0, number)


def key_follows(cat: Catalogue, seed_row: int, row: int) -> bool:
    """A key a DJ can mix into from the seed's: same wheel number, or one step, same mode."""
    numbers = camelot(cat.key[[seed_row, row]], cat.minor[[seed_row, row]])
    a, b = int(numbers[0]), int(numbers[1])
    if not a or not b:
        return True
    if a == b:
        return True
    same_mode = bool(cat.minor[seed_row]) == bool(cat.minor[row])
    return same_mode and (abs(a - b) == 1 or abs(a - b) == 11)


def _group_of(genres: frozenset[str], groups: Sequence[frozenset[str]]) -> set[str]:
    widened: set[str] = set()
    for group in groups:
        if genres & group:
            widened |= group
    return widened


def _lower(genres: frozenset[str]) -> frozenset[str]:
    return frozenset(g.lower() for g in genres)


def mix(
    cat: Catalogue,
    index: SimilarityIndex,
    seeds: Sequence[int],
    previous: Sequence[int],
    meta: Mapping[int, TrackMeta],
    rules: MixRules,
    rng: random.Random,
    december: bool = False,
) -> list[int]:
    """Track ids to play next, in order; empty when no seed is analysed.

    ``previous`` is the queue, most recent first (seeds may be among them);
    ``meta`` covers seeds, previous songs and candidates (missing = unknown).
    """
    count = max(0, rules.count)
    seed_rows = list(dict.fromkeys(cat.row(t) for t in seeds if cat.has(t)))
    if not seed_rows or not count or len(cat) < 2:
        return []
    none = TrackMeta()
    groups = tuple(_lower(g) for g in rules.genre_groups)
    known = list(dict.fromkeys([*seeds, *previous]))
    skip_rows = {cat.row(t) for t in known if cat.has(t)}

    seen = _Seen()
    recent = list(previous) if previous else list(seeds)
    for i, t in enumerate(recent):
        m = meta.get(t, none)
        seen.add(m, artists=i < rules.no_repeat_artist, albums=i < rules.no_repeat_album)
    for t in known:
        seen.add(meta.get(t, none), artists=False, albums=False)

    seed_genres = {cat.row(t): _lower(meta.get(t, none).genres) for t in seeds if cat.has(t)}
    # The plugin's genre filter works on groups only: a seed's groups are acceptable, and a
    # seed in no group accepts only songs in no group (with no groups, nothing is filtered).
    acceptable: set[str] = set()
    for t in [*seeds, *previous]:
        acceptable |= _group_of(_lower(meta.get(t, none).genres), groups)
    grouped = set().union(*groups) if groups else set()
    month_ok = not rules.exclude_xmas or december

    def passes(row: int) -> bool:
        m = meta.get(int(cat.ids[row]), none)
        duration = m.duration if m.duration else float(cat.duration[row]) or None
        if duration:
            if rules.min_duration > 0 and duration < rules.min_duration:
                return False
            if rules.max_duration > 0 and duration > rules.max_duration:
                return False
        genres = _lower(m.genres)
        if not month_ok and genres & CHRISTMAS_GENRES:
            return False
        if rules.filter_genre and genres:
            if acceptable:
                if not genres & acceptable:
                    return False
            elif genres & grouped:
                return False  # the seeds are in no group, so a grouped song is foreign
        return True

    max_distance = cat.geometry.distance_for(rules.max_distance)
    group_adjust = cat.geometry.distance_for(rules.group_adjust)
    no_genre_adjust = cat.geometry.distance_for(rules.no_genre_adjust)

    def adjust(seed_row: int, row: int) -> float:
        mine = seed_genres.get(seed_row, frozenset())
        if not mine:
            return 0.0
        theirs = _lower(meta.get(int(cat.ids[row]), none).genres)
        if mine & theirs:
            return 0.0
        if theirs & _group_of(mine, groups):
            return group_adjust
        return no_genre_adjust

    pool = count
    if rules.shuffle:
        pool = count * SHUFFLE_FACTOR if count < 20 or len(seed_rows) < 10 else count
        if len(seed_rows) == 1:
            pool *= 2
    queries = cat.vectors[seed_rows]
    k = min(len(index), max(64, pool * 10 + len(skip_rows)))
    while True:
        best: dict[int, _Pick] = {}
        sims, ids = index.search(queries, k)
        for s, seed_row in enumerate(seed_rows):
            for sim, tid in zip(sims[s], ids[s], strict=True):
                tid = int(tid)
                if tid < 0 or not cat.has(tid):
                    continue
                row = cat.row(tid)
                if row in skip_rows or 1.0 - float(sim) > max_distance:
                    continue
                score = float(sim) - adjust(seed_row, row)
                if row not in best or score > best[row].score:
                    best[row] = _Pick(row, score, seed_row)
        ranked = sorted(best.values(), key=lambda p: (-round(p.score, 6), int(cat.ids[p.row])))
        chosen, set_aside, off_beat = _choose(cat, ranked, pool, rules, seen, meta, passes, skip_rows)
        if len(chosen) >= pool or k >= len(index):
            break
        k = min(len(index), k * 4)
    if rules.shuffle:
        rng.shuffle(chosen)
    picked = chosen[:count]
    for reserve in (set_aside, off_beat):
        for p in reserve:
            if len(picked) >= count:
                break
            if all(not duplicate_of(cat, p.row, q.row) for q in picked):
                picked.append(p)
    return [int(cat.ids[p.row]) for p in picked]


def _choose(
    cat: Catalogue,
    ranked: list[_Pick],
    pool: int,
    rules: MixRules,
    seen: _Seen,
    meta: Mapping[int, TrackMeta],
    passes: Callable[[int], bool],
    heard: set[int],
) -> tuple[list[_Pick], list[_Pick], list[_Pick]]:
    """Greedy pass in score order: (chosen, set aside for repeats, set aside for tempo/key)."""
    none = TrackMeta()
    seen = _Seen(set(seen.artists), set(seen.albums), set(seen.titles))
    # Copies of songs already heard (or already chosen) never come in, even under another id.
    builder = PlaylistBuilder(cat, max_per_artist=0, blockers=sorted(heard))
    chosen: list[_Pick] = []
    set_aside: list[_Pick] = []
    off_beat: list[_Pick] = []
    for p in ranked:
        if len(chosen) >= pool:
            break
        if not passes(p.row) or not builder.allows(p.row):
            continue
        if rules.max_bpm_diff and 0 < rules.max_bpm_diff < 150:
            a, b = float(cat.tempo[p.seed]), float(cat.tempo[p.row])
            if a > 0 and b > 0 and abs(a - b) > rules.max_bpm_diff:
                off_beat.append(p)
                continue
        if rules.filter_key and not key_follows(cat, p.seed, p.row):
            off_beat.append(p)
            continue
        m = meta.get(int(cat.ids[p.row]), none)
        if seen.repeats(m, rules):
            set_aside.append(p)
            continue
        builder.offer(p.row)
        seen.add(m, artists=rules.no_repeat_artist > 0, albums=rules.no_repeat_album > 0)
        chosen.append(p)
    return chosen, set_aside, off_beat
