"""Warming a new caller's per-user song cache in the background, so their first answer is fast.

An exact Subsonic answer holds, for every song, the Child the server returns to
*this* caller for ``getSong`` (``gateway.subsonic_songs``). A caller whose songs
are cached gets a similarity answer in milliseconds; one seen for the first time
pays one ``getSong`` per returned song (the better part of a second on
supysonic). Clients log in before they ask for a mix (``ping``,
``getOpenSubsonicExtensions``, browsing), so the time between login and the
first "instant mix" is spent asking the server, as the caller, for the songs that
answer is most likely to hold, and storing exactly what it returned.

Which songs, in this order, at most ``subsonic_warm_songs`` per caller per cache
TTL:

1. the songs of the albums the caller played most recently (``getAlbumList2
   type=recent`` and ``getAlbum`` as the caller, ids only) and their sonic
   neighbours (the index's own candidates for a count=50 answer), interleaved by rank:
   a mix is usually asked from what is playing, and people resume what they
   played;
2. then the library: in scan order with one ``getSong`` per song, or, with
   ``subsonic_warm_pages``, in the caller's own ``search3`` pages (one call per up
   to 500 songs, used once its entries proved equal to getSong's, ``AlbumTrust``).
   A library no larger than the budget ends up wholly cached and every answer of
   that caller is warm; in a larger one, answers seeded elsewhere are partly warm.

What it must not disturb:

* **Exactness.** Only answers the upstream gave to these credentials are stored,
  under the caller's scope, through the cache's own invalidation (a star or rating
  relayed while warming wins: ``UserSongCache.offer`` refuses answers older than
  the change). A refusal (50/70) is stored as a refusal.
* **Credentials.** Warming starts only after the caller's credentials passed the
  upstream's own check (``AuthChecker``); the task holds them while it runs and
  drops them when it ends; nothing here logs them (log lines name no user).
  A warm for credentials that fail the check stores nothing.
* **Requests.** Answers are stored only into free room and never replace or evict
  an entry (``offer``); every upstream call waits while an intercepted request is
  being answered (``Foreground``), so the server spends its threads on the caller
  who waits; at most ``subsonic_warm_concurrency`` warm calls are in flight in the
  whole process, and at most ``MAX_RUNNING`` callers are warmed at once.
* **Failures.** An auth failure (the password changed meanwhile) or an unreachable
  upstream ends the warm quietly; the process and its cache are left as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.subsonic_auth import (
    AuthChecker,
    Credentials,
    UpstreamCaller,
    UpstreamDown,
    UpstreamError,
)
from gateway.subsonic_songs import (
    REFUSED_CODES,
    AlbumTrust,
    Child,
    Scope,
    UserSongCache,
    album_songs,
    scope_of,
)

log = logging.getLogger(__name__)

# Callers warmed at the same time; a burst of new callers beyond it is not queued (each
# queued warm would hold credentials while waiting): they are warmed when seen again.
MAX_RUNNING = 16
# Recently played albums whose songs (and their neighbours) are warmed first.
RECENT_ALBUMS = 2
# Songs of those albums used as seeds, and the neighbours asked for each: the candidate
# pool a count=50 answer is drawn from (the handler asks the index for 2 × count).
RECENT_SEEDS = 12
NEIGHBOURS = 100
# Upstream errors that mean the credentials no longer work (missing/wrong/unsupported).
AUTH_CODES = frozenset({10, 40, 41, 42, 43, 44})
# search3 page sizes of the library part (``subsonic_warm_pages``): at most PAGE songs a call
# (what servers accept: Navidrome and supysonic take 500), at least PAGE_MIN.
PAGE = 500
PAGE_MIN = 50
# Scopes remembered as warmed (one warm per TTL each): bounded whoever calls.
MAX_REMEMBERED = 10_000

RESULTS = ("done", "budget", "cache_full", "auth_failed", "upstream_down", "error",
           "cancelled")


class Foreground:
    """Counts intercepted requests in progress; warm calls wait until there are none."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        self.active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True)
class PageFlight:
    """A warm's search3 page: the cache token taken before it was asked, its size, its body.

    Whoever reuses the body stores its entries under this token, so a change relayed
    after the page was asked still wins over it (``UserSongCache.put``)."""

    token: int
    size: int
    body: dict[str, Any]


class _Stop(Exception):
    def __init__(self, result: str) -> None:
        super().__init__(result)
        self.result = result


# (first: songs asked by id, likeliest first; rest: the library in scan order)
Plan = tuple[Sequence[str], Sequence[str]]
Planner = Callable[[Scope, Callable[..., Awaitable[dict[str, Any]]]], Awaitable[Plan]]


class Warmer:
    """Starts one background warm per caller scope per cache TTL; see the module docstring."""

    def __init__(
        self,
        songs: UserSongCache,
        upstream: UpstreamCaller,
        auth: AuthChecker,
        foreground: Foreground,
        planner: Planner,
        budget: int,
        concurrency: int,
        signature: Callable[[], Any] = lambda: None,
        metrics: Any = None,
        clock: Callable[[], float] = time.monotonic,
        pages: AlbumTrust | None = None,
        in_library: Callable[[str], bool] = lambda _uid: True,
    ) -> None:
        self.songs = songs
        self.upstream = upstream
        self.auth = auth
        self.foreground = foreground
        self.planner = planner
        self.budget = budget
        self.concurrency = max(1, concurrency)
        self.signature = signature
        self.metrics = metrics
        self.clock = clock
        # search3 pages of the library instead of one getSong per song, once learnt to
        # equal getSong (``subsonic_warm_pages``); None: song by song only.
        self.pages = pages
        self.in_library = in_library
        self._slots = asyncio.Semaphore(self.concurrency)
        self._warmed: dict[Scope, float] = {}
        self.running: dict[Scope, asyncio.Task[str]] = {}
        self.finished: dict[str, int] = dict.fromkeys(RESULTS, 0)
        # (scope, offset) -> the warm's search3 page being asked (``_shared_page``)
        self.inflight: dict[tuple[Scope, int], asyncio.Future[PageFlight | None]] = {}
        self.stored = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and self.songs.enabled

    def notice(self, creds: Credentials, client: Mapping[str, str]) -> asyncio.Task[str] | None:
        """A caller was seen: start warming their songs unless done within the TTL (cheap)."""
        if not self.enabled or not creds.present:
            return None
        scope = scope_of(creds, client)
        if scope is None or scope in self.running:
            return None
        until = self._warmed.get(scope)
        if until is not None and until > self.clock():
            return None
        if len(self.running) >= MAX_RUNNING:
            return None
        task = asyncio.get_running_loop().create_task(self._run(scope, creds, dict(client)))
        self.running[scope] = task
        task.add_done_callback(lambda _t, scope=scope: self.running.pop(scope, None))
        self._gauge()
        return task

    async def wait(self) -> None:
        """Until no warm is running (what tests and the bench wait on)."""
        while self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def close(self) -> None:
        """Cancel warms in flight (app shutdown)."""
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ one warm

    async def _run(self, scope: Scope, creds: Credentials, client: dict[str, str]) -> str:
        started = time.perf_counter()
        result = "error"
        stored = 0
        try:
            try:
                await self.foreground.wait_idle()
                await self.auth.check(creds, client)  # cached when a request just checked it
            except UpstreamError:
                raise _Stop("auth_failed") from None
            except UpstreamDown:
                raise _Stop("upstream_down") from None
            self._remember(scope)

            def ask(endpoint: str, **params: Any) -> Awaitable[dict[str, Any]]:
                return self.upstream.call(endpoint, creds, client, **params)

            self.songs.library(self.signature())
            try:
                first, rest = await self.planner(scope, ask)
            except UpstreamDown:
                raise _Stop("upstream_down") from None
            counted = [0]
            if not first and not rest:  # no library loaded yet: nothing worth asking
                raise _Stop("done")
            try:
                result, left = await self._fill(scope, ask, first, self.budget, counted)
                if result == "done" and left > 0 and self.pages is not None:
                    result, left, listed = await self._pages(scope, ask, left, counted)
                    if listed:
                        rest = []
                if result == "done" and left > 0 and rest:
                    result, left = await self._fill(scope, ask, rest, left, counted)
            finally:
                stored = counted[0]
        except _Stop as stop:
            result = stop.result
        except asyncio.CancelledError:
            result = "cancelled"  # shutting down
            raise
        except Exception as exc:  # never let a warm disturb the process
            # The type only: a message could quote a URL, and URLs here carry credentials.
            log.warning("warming a caller's song cache failed: %s", type(exc).__name__)
            result = "error"
        finally:
            self.finished[result] = self.finished.get(result, 0) + 1
            self.stored += stored
            if self.metrics is not None:
                self.metrics.warm_runs.labels(result).inc()
                self.metrics.warm_songs.inc(stored)
                self.metrics.warm_seconds.inc(time.perf_counter() - started)
            self._gauge(exclude=1)
        if result in ("auth_failed", "upstream_down"):
            log.info("stopped warming a caller's song cache: %s", result.replace("_", " "))
        return result

    async def _fill(self, scope: Scope, ask: Callable[..., Awaitable[dict[str, Any]]],
                    plan: Sequence[str], budget: int, stored: list[int],
                    compare: Mapping[str, Child] | None = None) -> tuple[str, int]:
        """getSong for each planned song not yet held, bounded; (result, budget left).

        ``stored[0]`` counts what was stored. ``compare``: search3 entries of the same
        songs, compared with getSong's answers to learn whether pages can be trusted.
        """
        todo = iter([u for u in dict.fromkeys(plan) if not self.songs.known(scope, u)])
        left = [budget]
        outcome: list[str] = []

        async def worker() -> None:
            while not outcome:
                uid = next(todo, None)
                if uid is None:
                    return
                if self.songs.known(scope, uid):  # a request cached it meanwhile
                    continue
                if left[0] <= 0:
                    outcome.append("budget")
                    return
                left[0] -= 1
                await self.foreground.wait_idle()
                if outcome:
                    return
                async with self._slots:
                    await self.foreground.wait_idle()
                    if not self.songs.has_room:
                        outcome.append("cache_full")
                        return
                    with self.songs.filling() as token:
                        try:
                            body = await ask("getSong", id=uid)
                        except UpstreamError as exc:
                            if exc.code in AUTH_CODES:
                                outcome.append("auth_failed")
                                return
                            if exc.code in REFUSED_CODES:
                                self.songs.offer(scope, uid, None, token)
                                stored[0] += 1
                                if compare is not None and uid in compare and self.pages:
                                    self.pages.record(uid, compare[uid], None)
                            continue
                        except UpstreamDown:
                            outcome.append("upstream_down")
                            return
                        child = body.get("song")
                        if isinstance(child, dict):
                            if compare is not None and uid in compare and self.pages:
                                self.pages.record(uid, compare[uid], child)
                            if not self.songs.offer(scope, uid, child, token):
                                outcome.append("cache_full")
                                return
                            stored[0] += 1

        await asyncio.gather(*(worker() for _ in range(self.concurrency)))
        return (outcome[0] if outcome else "done"), left[0]

    async def _pages(self, scope: Scope, ask: Callable[..., Awaitable[dict[str, Any]]],
                     budget: int, stored: list[int]) -> tuple[str, int, bool]:
        """The library in the caller's own ``search3`` pages: (result, budget left, listed).

        One call returns up to ``PAGE`` songs as the caller's Children. An entry is stored
        only once ``self.pages`` (an ``AlbumTrust``) learnt that this upstream's search3
        entries equal its getSong answers; until then entries are asked with getSong and
        compared, a few at a time, and the rest of the page is judged again after each
        batch. ``listed`` is False when the pages could not be used (search3 refused, or
        its entries differ from getSong's): the caller then asks song by song.
        """
        trust = self.pages
        assert trust is not None
        left, offset = budget, 0
        seen: set[str] = set()
        while left > 0:
            if trust.differs:
                return "done", left, False
            size = min(PAGE, max(left, PAGE_MIN))
            with contextlib.ExitStack() as held:
                await self.foreground.wait_idle()
                async with self._slots:
                    await self.foreground.wait_idle()
                    # Taken before the call: a change relayed after it wins over its answer.
                    token = held.enter_context(self.songs.filling())
                    try:
                        body = await self._shared_page(scope, ask, token, offset, size)
                    except UpstreamError as exc:
                        if exc.code in AUTH_CODES:
                            return "auth_failed", left, True
                        return "done", left, False
                    except UpstreamDown:
                        return "upstream_down", left, True
                found = (body.get("searchResult3") or {}).get("song") or []
                page = [e for e in (found if isinstance(found, list) else [found])
                        if isinstance(e, dict) and e.get("id") is not None]
                new = [e for e in page if str(e["id"]) not in seen]
                seen.update(str(e["id"]) for e in new)
                pending = [e for e in new if self.in_library(str(e["id"]))]
                while pending and left > 0:
                    if trust.differs:
                        return "done", left, False
                    entry = pending.pop(0)
                    uid = str(entry["id"])
                    if self.songs.known(scope, uid):
                        continue
                    if trust.usable(entry):
                        if not self.songs.offer(scope, uid, entry, token):
                            return "cache_full", left, True
                        stored[0] += 1
                        left -= 1
                        continue
                    # Learning: this entry and the next few unusable ones, asked and compared.
                    batch = {uid: entry}
                    want = max(1, trust.checks - trust.matched)
                    for other in list(pending):
                        if len(batch) >= min(want, left):
                            break
                        if not trust.usable(other) and not self.songs.known(scope,
                                                                          str(other["id"])):
                            batch[str(other["id"])] = other
                            pending.remove(other)
                    result, unused = await self._fill(scope, ask, list(batch), len(batch),
                                                      stored, compare=batch)
                    left -= len(batch) - unused
                    if result != "done":
                        return result, left, True
                if pending:
                    return "budget", left, True
            if not new or len(page) < size:
                return "done", left, True  # the end of what the caller may list
            offset += len(page)
        return "budget", left, True

    async def _shared_page(self, scope: Scope, ask: Callable[..., Awaitable[dict[str, Any]]],
                           token: int, offset: int, size: int) -> dict[str, Any]:
        """One search3 page as the caller, announced in ``inflight`` while it is asked.

        An answer for the same caller that arrives meanwhile (``SubsonicGateway._from_page``)
        waits for this page instead of asking the server for the same songs a second time.
        """
        key = (scope, offset)
        flight: asyncio.Future[PageFlight | None] = asyncio.get_running_loop().create_future()
        self.inflight.setdefault(key, flight)
        try:
            body = await ask("search3", query="", artistCount=0, albumCount=0,
                             songCount=size, songOffset=offset)
        except BaseException:
            flight.set_result(None)
            raise
        else:
            flight.set_result(PageFlight(token, size, body))
            return body
        finally:
            if self.inflight.get(key) is flight:
                del self.inflight[key]

    # ------------------------------------------------------------------ bookkeeping

    def _remember(self, scope: Scope) -> None:
        now = self.clock()
        if len(self._warmed) >= MAX_REMEMBERED:
            self._warmed = {s: t for s, t in self._warmed.items() if t > now}
            if len(self._warmed) >= MAX_REMEMBERED:
                self._warmed.pop(next(iter(self._warmed)))
        self._warmed[scope] = now + self.songs.ttl

    def _gauge(self, exclude: int = 0) -> None:
        if self.metrics is not None:
            self.metrics.warm_running.set(max(0, len(self.running) - exclude))


# ---------------------------------------------------------------------------- planning


def interleave(groups: Sequence[Sequence[str]]) -> list[str]:
    """Rank 0 of every group, then rank 1 of every group…, duplicates dropped."""
    out: dict[str, None] = {}
    for rank in range(max((len(g) for g in groups), default=0)):
        for group in groups:
            if rank < len(group):
                out.setdefault(group[rank], None)
    return list(out)


async def recent_songs(ask: Callable[..., Awaitable[dict[str, Any]]],
                       albums: int = RECENT_ALBUMS) -> list[str]:
    """Song ids of the caller's most recently played albums, as the caller may browse them.

    ``getAlbumList2 type=recent`` then ``getAlbum`` per album, both as the caller (only
    the ids are used: the entries are not trusted as getSong answers). An upstream that
    refuses (or has no play history) gives []: the plan then is the library order.
    UpstreamDown propagates.
    """
    try:
        body = await ask("getAlbumList2", type="recent", size=albums)
    except UpstreamError:
        return []
    found = (body.get("albumList2") or {}).get("album") or []
    ids = [str(a["id"]) for a in (found if isinstance(found, list) else [found])
           if isinstance(a, dict) and a.get("id") is not None][:albums]
    out: list[str] = []
    for album_id in ids:
        try:
            out.extend(album_songs(await ask("getAlbum", id=album_id)))
        except UpstreamError:
            continue
    return out
