"""Each caller's own song objects, as the upstream returned them to that caller, reused.

Exact visibility in Subsonic means asking the server, as the caller, for every
song an answer holds (``getSong``): the server alone knows who may see what and
what the caller's ``starred``/``userRating``/``playCount`` are. That is one
round trip per song. This cache keeps each answer the upstream gave — the
Child, or "refused" — under the caller's *scope* (the upstream user, plus the
client name and API version, because servers such as supysonic shape a Child by
the client's transcoding preferences) and the song id, so the next answer that
holds the same song costs no upstream call.

Nothing enters the cache that the upstream did not return to that scope, so a
song the caller may not see can only be served if the server showed it to
them within the last ``ttl`` seconds. Entries leave the cache:

* when musegate relays a call that changes what a Child shows (``star``,
  ``unstar``, ``setRating``, ``scrobble``, ``createBookmark``,
  ``deleteBookmark``): the named songs are dropped for *every* scope (a rating
  may move another user's ``averageRating``), before the call is relayed and
  again once the upstream answered. While such a call is in flight its songs are
  neither served from nor stored in the cache, and a fill that started before
  it stores nothing for them (``changing`` / ``filling``);
* when the library's signature moves (a rescan saw added, removed or edited
  songs): everything is dropped;
* after ``ttl`` seconds, for changes musegate cannot see (another client talking
  to the server directly, an admin changing access, play counts a server keeps
  itself);
* least recently used first, when more than ``max_entries`` are held (memory is
  bounded by entries, whoever they belong to).

Only refusals that say "not found" (70) or "not authorised" (50) are remembered;
any other error is asked again next time.

Songs not cached are asked with ``getSong`` or, with ``subsonic_song_fetch =
"album"``, by album (``fetch_songs``): one ``getAlbum`` as the caller returns
every song of the album as that caller's Child, so an answer of 50 songs from 25
albums costs 25 calls instead of 50, and the album's other songs enter the cache
too. (On supysonic that halves the calls, not the time: its cost is per song it
builds.) That holds only where a server builds getAlbum's entries exactly like
getSong's (supysonic uses one function for both), so ``AlbumTrust`` learns it by comparing: until ``ALBUM_CHECKS`` entries
matched getSong field for field (and ``PERSONAL_CHECKS`` of them carried per-user
fields such as ``starred``), the answer is getSong's and the album only checked;
one difference and this upstream is asked song by song from then on. A song
missing from the caller's getAlbum (hidden, or the album id changed since the
scan) is asked with getSong, so nothing is shown that getSong would refuse.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from gateway.subsonic_auth import Credentials, UpstreamError

log = logging.getLogger(__name__)

# Upstream answers that mean "this caller may not have this song" (Subsonic error codes).
REFUSED_CODES = frozenset({50, 70})
# Calls that change what the named songs' Child objects show, to the caller or to others.
MUTATIONS = ("star", "unstar", "setRating", "scrobble", "createBookmark", "deleteBookmark")
# How songs not cached are asked (``subsonic_song_fetch``).
FETCH_MODES = ("album", "song")
# Upstream calls a fill keeps in flight: enough to hide loopback/LAN latency, few enough
# not to queue behind a small server's handful of threads (supysonic, LMS).
FETCH_CONCURRENCY = 8
# getSong comparisons that must match before getAlbum's entries are served in its place,
# and how many of those must carry per-user fields before entries carrying them are.
ALBUM_CHECKS = 20
PERSONAL_CHECKS = 3
# Fields that differ by caller (or by other callers' ratings): the likeliest to differ
# between a server's getAlbum and getSong if it builds them differently.
PERSONAL_FIELDS = ("starred", "userRating", "averageRating", "playCount", "played",
                   "bookmarkPosition")

Scope = tuple[str, str, str]
Child = dict[str, Any]


def scope_of(creds: Credentials, client: Mapping[str, str]) -> Scope | None:
    """(upstream user, client name, API version) of already verified credentials, or None.

    The user is the ``u`` parameter, the user name inside HTTP Basic, or a SHA-256 of
    an API key (one key is one user; the key itself is never kept). Credentials that
    name the user twice (``u`` and Basic, or ``u`` and ``apiKey``) leave the choice of
    who the caller is to the server, so they are not cached at all.
    """
    params = dict(creds.params)
    named = [k for k in ("u", "apiKey") if params.get(k)] + (
        ["basic"] if creds.authorization else [])
    if len(named) != 1:
        return None
    if named[0] == "u":
        user = "u:" + params["u"]
    elif named[0] == "apiKey":
        user = "k:" + hashlib.sha256(params["apiKey"].encode("utf-8")).hexdigest()
    else:
        name = _basic_user(creds.authorization or "")
        if name is None:
            return None
        user = "u:" + name
    return user, client.get("c") or "", client.get("v") or ""


def _basic_user(header: str) -> str | None:
    try:
        decoded = base64.b64decode(header.split(" ", 1)[1].strip(), validate=True).decode("utf-8")
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    name, sep, _ = decoded.partition(":")
    return name if sep and name else None


class UserSongCache:
    """(scope, song id) -> the Child the upstream returned, or None for a refusal; LRU + TTL."""

    def __init__(self, ttl: float, max_entries: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[tuple[Scope, str], tuple[float, Child | None]] = OrderedDict()
        self._scopes_of: dict[str, set[Scope]] = {}
        self._signature: Any = None
        # Invalidation bookkeeping: a sequence number per change, the last one per song,
        # the songs whose change is in flight, and how many fills are running.
        self._seq = 0
        self._touched: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._fills = 0
        self._floor = 0  # fills that started before the last clear() store nothing

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    # ------------------------------------------------------------------ reading

    def library(self, signature: Any) -> None:
        """Drop everything when the library moved since the entries were stored."""
        if signature != self._signature:
            self.clear()
            self._signature = signature

    def get(self, scope: Scope, song_id: str) -> tuple[bool, Child | None]:
        """(known, Child or None for refused); (False, None) when it must be asked."""
        if not self.enabled or song_id in self._pending:
            return False, None
        key = (scope, song_id)
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        if entry[0] <= self.clock():
            self._drop(key)
            return False, None
        self._entries.move_to_end(key)
        return True, entry[1]

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def filling(self) -> Iterator[int]:
        """Bracket upstream calls whose answers will be stored; yields the token ``put`` needs."""
        self._fills += 1
        try:
            yield self._seq
        finally:
            self._fills -= 1
            if self._fills == 0:  # songs still changing are kept out by _pending
                self._touched.clear()

    def put(self, scope: Scope, song_id: str, child: Child | None, token: int) -> None:
        """Remember an upstream answer asked for after ``token`` (from ``filling``) was taken.

        Refused when the song changed since (or is changing): the answer may predate it.
        """
        if not self.enabled or song_id in self._pending:
            return
        if token < self._floor or self._touched.get(song_id, -1) > token:
            return
        key = (scope, song_id)
        self._entries[key] = (self.clock() + self.ttl, child)
        self._entries.move_to_end(key)
        self._scopes_of.setdefault(song_id, set()).add(scope)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))

    def known(self, scope: Scope, song_id: str) -> bool:
        """Whether an unexpired answer is held, without counting it as used (LRU untouched)."""
        entry = self._entries.get((scope, song_id))
        return entry is not None and entry[0] > self.clock()

    @property
    def has_room(self) -> bool:
        return self.enabled and len(self._entries) < self.max_entries

    def offer(self, scope: Scope, song_id: str, child: Child | None, token: int) -> bool:
        """Store a background (warm) answer only into free room, first in line to be dropped.

        Unlike ``put`` it never evicts anything (what requests cached stays), never
        replaces an entry already held, and places the entry at the least recently used
        end: until a request reads it, it is the first to go when requests need room.
        The same invalidation rules as ``put`` apply. False when the cache is full.
        """
        key = (scope, song_id)
        held = self._entries.get(key)
        if held is not None and held[0] <= self.clock():
            self._drop(key)  # expired: this answer is its renewal
            held = None
        if not self.has_room:
            return False
        if song_id in self._pending or held is not None:
            return True
        if token < self._floor or self._touched.get(song_id, -1) > token:
            return True
        self._entries[key] = (self.clock() + self.ttl, child)
        self._entries.move_to_end(key, last=False)
        self._scopes_of.setdefault(song_id, set()).add(scope)
        return True

    @contextlib.contextmanager
    def changing(self, song_ids: Iterable[str]) -> Iterator[None]:
        """Bracket a relayed call that changes these songs: dropped before, during and after."""
        ids = list(dict.fromkeys(song_ids))
        for sid in ids:
            self._pending[sid] = self._pending.get(sid, 0) + 1
        self._invalidate(ids)
        try:
            yield
        finally:
            for sid in ids:
                left = self._pending[sid] - 1
                if left:
                    self._pending[sid] = left
                else:
                    del self._pending[sid]
            self._invalidate(ids)

    def clear(self) -> None:
        self._entries.clear()
        self._scopes_of.clear()
        self._seq += 1  # fills in flight may hold answers from before the clear
        self._touched.clear()
        self._floor = self._seq

    # ------------------------------------------------------------------ internals

    def _invalidate(self, ids: list[str]) -> None:
        self._seq += 1
        for sid in ids:
            if self._fills:  # only a fill already running can hold an older answer
                self._touched[sid] = self._seq
            for scope in self._scopes_of.pop(sid, ()):
                self._entries.pop((scope, sid), None)

    def _drop(self, key: tuple[Scope, str]) -> None:
        self._entries.pop(key, None)
        scopes = self._scopes_of.get(key[1])
        if scopes is not None:
            scopes.discard(key[0])
            if not scopes:
                del self._scopes_of[key[1]]


# ---------------------------------------------------------------------------- fetching


def personal(child: Child) -> bool:
    """Whether a Child shows something of the caller's own (a star, a rating, plays…)."""
    return any(child.get(f) for f in PERSONAL_FIELDS)


class AlbumTrust:
    """Whether this upstream's getAlbum song entries are its getSong answers, learnt by comparing.

    Held per upstream (every caller's comparisons count): servers build both from one
    function or they do not. A difference is permanent for the process: a server that
    differs once cannot be trusted to match next time, and asking song by song is what
    musegate did before.
    """

    def __init__(self, checks: int = ALBUM_CHECKS, personal_checks: int = PERSONAL_CHECKS,
                 call: str = "getAlbum") -> None:
        self.call = call  # whose entries are judged (getAlbum, or search3 for warm pages)
        self.checks = checks
        self.personal_checks = personal_checks
        self.matched = 0
        self.matched_personal = 0
        self.differs = False

    @property
    def checking(self) -> bool:
        return not self.differs and (self.matched < self.checks
                                     or self.matched_personal < self.personal_checks)

    def usable(self, entry: Child) -> bool:
        """May this getAlbum entry be served as the caller's getSong answer?"""
        if self.differs or self.matched < self.checks:
            return False
        return self.matched_personal >= self.personal_checks or not personal(entry)

    def record(self, song_id: str, entry: Child, song: Child | None) -> None:
        """Compare an album entry with the getSong answer for the same song and caller."""
        if self.differs:
            return
        if song is None or entry != song:
            self.differs = True
            fields = sorted(k for k in set(entry) | set(song or {})
                            if entry.get(k) != (song or {}).get(k))
            log.warning("%s's entry for song %s differs from getSong (fields: %s): "
                        "asking the server song by song from now on", self.call, song_id,
                        ", ".join(fields) or "refused by getSong")
            return
        self.matched += 1
        if personal(song):
            self.matched_personal += 1


class Ask(Protocol):
    """An upstream call as the caller: ``await ask("getSong", id=...)`` -> response body."""

    def __call__(self, endpoint: str, **params: Any) -> Awaitable[dict[str, Any]]: ...


def album_songs(body: Mapping[str, Any]) -> dict[str, Child]:
    """Song id -> Child of a getAlbum answer (a lone song may arrive as an object, not a list)."""
    album = body.get("album")
    songs = album.get("song") if isinstance(album, dict) else None
    items = songs if isinstance(songs, list) else [songs]
    return {str(s["id"]): s for s in items if isinstance(s, dict) and "id" in s}


async def fetch_songs(
    ask: Ask,
    song_ids: Sequence[str],
    album_of: Mapping[str, str],
    trust: AlbumTrust | None,
    keep: Callable[[str, Child | None], None],
    concurrency: int = FETCH_CONCURRENCY,
) -> dict[str, Child | None]:
    """The caller's Child for each id (None: not shown), from the upstream, as few calls as may be.

    Ids with a known album (``album_of``) are asked with one ``getAlbum`` per album when
    ``trust`` allows; the rest, and every song the album answer does not settle, with
    ``getSong``. ``keep(id, Child or None)`` is told every answer worth caching: getSong's
    Child or refusal (50/70), and every usable entry of a fetched album, requested or not.
    Other errors leave the song out of this answer only. UpstreamDown propagates.
    """
    sem = asyncio.Semaphore(max(1, concurrency))

    async def song(uid: str) -> Child | None:
        async with sem:
            try:
                body = await ask("getSong", id=uid)
            except UpstreamError as exc:
                if exc.code in REFUSED_CODES:
                    keep(uid, None)
                return None
        child = body.get("song")
        if not isinstance(child, dict):
            return None
        keep(uid, child)
        return child

    async def songs(uids: Sequence[str]) -> dict[str, Child | None]:
        return dict(zip(uids, await asyncio.gather(*(song(u) for u in uids)), strict=True))

    async def album(album_id: str, wanted: list[str]) -> dict[str, Child | None]:
        assert trust is not None
        async with sem:
            try:
                entries = album_songs(await ask("getAlbum", id=album_id))
            except UpstreamError:
                entries = {}  # hidden, or the album id moved since the scan: getSong decides
        served = {u: entries[u] for u in wanted if u in entries and trust.usable(entries[u])}
        asked = await songs([u for u in wanted if u not in served])
        for uid, child in asked.items():
            if uid in entries:
                trust.record(uid, entries[uid], child)
        if not all(trust.usable(c) for c in served.values()):  # withdrawn meanwhile
            asked.update(await songs([u for u, c in served.items() if not trust.usable(c)]))
            served = {u: c for u, c in served.items() if trust.usable(c)}
        for uid, entry in entries.items():
            if uid not in asked and trust.usable(entry):
                keep(uid, entry)
        return {**served, **asked}

    groups: dict[str, list[str]] = {}
    alone: list[str] = []
    for uid in dict.fromkeys(song_ids):
        album_id = album_of.get(uid) if trust is not None and not trust.differs else None
        if album_id:
            groups.setdefault(album_id, []).append(uid)
        else:
            alone.append(uid)
    # One wanted song of an album is one getSong: getAlbum would make the server build
    # every song of the album (supysonic's cost is per song built, not per call).
    for album_id in [a for a, wanted in groups.items() if len(wanted) < 2]:
        alone.extend(groups.pop(album_id))
    parts = await asyncio.gather(songs(alone), *(album(a, w) for a, w in groups.items()))
    out: dict[str, Child | None] = {}
    for part in parts:
        out.update(part)
    return out
