"""The loaded library every feature reads: catalogue + similarity index, kept fresh.

The server and the CLI both need "the analysed library as arrays, plus its
FAISS index, matching the store". Loading that is the slow part (one query,
one array build, an index load or rebuild), so it happens once and is then
refreshed only when the store's analyses change. Readers get an immutable
snapshot; an index that must change in place (HNSW, too costly to rebuild on
every new analysis) is only touched while no reader holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from analysis.store import LibraryStore
from index import results
from index.catalogue import Catalogue, normalise_text
from index.faiss_index import SimilarityIndex, load_or_build
from index.geometry import same_geometry
from index.hubness import STALE_SHARE, K, carry_over, neighbourhood_radius
from index.projection import project_2d
from index.radii_file import load_radii, radii_path, radii_signature, save_radii
from musegate.config import Config
from musegate.heap import map_large_blocks, release_free_memory
from musegate.library import analyzer_settings, library_geometry, load_catalogue
from musegate.upstream_ids import UpstreamIds

log = logging.getLogger(__name__)

T = TypeVar("T")

# Above this many changed tracks a rebuild is cheaper than add/remove one by one.
_INCREMENTAL_LIMIT = 5_000


@dataclass(frozen=True)
class LibrarySnapshot:
    """One consistent view: row i of the catalogue, the index and the id maps agree."""

    catalogue: Catalogue
    index: SimilarityIndex
    index_status: str
    # musegate id -> source's id and back (musegate.upstream_ids: arrays, not dicts)
    upstream_ids: Mapping[int, str] = field(default_factory=dict)
    by_upstream: Mapping[str, int] = field(default_factory=dict)
    signature: tuple[Any, ...] = ()
    radius_status: str = ""  # where the CSLS radii came from: loaded, computed, carried over

    def ids_of_album(self, album: str, artist: str | None = None) -> list[int]:
        """Analysed tracks of an album (matched loosely: case, accents and '(Remastered)' ignored).

        Each distinct album and artist name is normalised once (the text columns' slots),
        not once per track."""
        want = normalise_text(album)
        if not want:
            return []
        want_artist = normalise_text(artist) if artist else None
        cat = self.catalogue
        rows = cat.albums.rows_where(lambda name: normalise_text(name) == want)
        if want_artist is not None and len(rows):
            rows = np.intersect1d(
                rows, cat.artists.rows_where(lambda a: normalise_text(a) == want_artist))
        return [int(i) for i in cat.ids[rows].tolist()]

    def ids_of_artist(self, artist: str) -> list[int]:
        want = normalise_text(artist)
        if not want:
            return []
        cat = self.catalogue
        rows = cat.artists.rows_where(lambda a: normalise_text(a) == want)
        return [int(i) for i in cat.ids[rows].tolist()]

    def resolve_id(self, value: Any) -> int | None:
        """A musegate track id, or the source's own id (what AudioMuse-AI clients send)."""
        text = str(value).strip()
        if text in self.by_upstream:
            return self.by_upstream[text]
        if text.lstrip("-").isdigit() and self.catalogue.has(int(text)):
            return int(text)
        return None


class ReadWriteLock:
    """Many concurrent readers or one writer; writers wait for readers to leave."""

    def __init__(self) -> None:
        self._readers = 0
        self._writing = False
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writing)
            self._writing = True
            await self._cond.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._writing = False
                self._cond.notify_all()


class LibraryService:
    """Owns the current snapshot; ``refresh()`` reloads it when the analyses changed."""

    def __init__(self, store: LibraryStore, config: Config) -> None:
        # before the first load (`musegate serve` does it at start-up already): musegate.heap
        map_large_blocks()
        if release_free_memory not in results.on_cache_built:
            results.on_cache_built.append(release_free_memory)
        self.store = store
        self.config = config
        self.version = analyzer_settings(config).version
        # A replica reads the writer's store: it never saves the index (the file is the
        # writer's) and skips the signature query while SQLite says nobody committed.
        self.read_only = config.role == "replica"
        self._data_version: int | None = None
        self._snapshot: LibrarySnapshot | None = None
        self._lock = ReadWriteLock()
        self._refreshing = asyncio.Lock()
        self._projection: tuple[tuple[Any, ...], np.ndarray] | None = None
        self._projecting = asyncio.Lock()
        # tracks added, changed or removed since every track's CSLS radius was computed
        self._radius_changes = 0

    @property
    def snapshot(self) -> LibrarySnapshot:
        if self._snapshot is None:
            raise RuntimeError("library not loaded: call `await service.refresh()` first")
        return self._snapshot

    async def signature(self) -> tuple[Any, ...]:
        """Changes with any add, remove, re-analysis or metadata edit (see LibraryStore)."""
        return await self.store.signature(self.version)

    async def refresh(self, force: bool = False) -> bool:
        """Reload when the store changed (or when ``force``); says whether anything was reloaded."""
        reloaded = await self._reload(force)
        if reloaded:  # once the load's temporaries (rows, strings, the old snapshot) are gone
            await asyncio.to_thread(release_free_memory)
        return reloaded

    async def _reload(self, force: bool) -> bool:
        async with self._refreshing:
            if self.read_only:
                seen = await self.store.data_version()
                if not force and self._snapshot is not None and seen == self._data_version:
                    return False
                self._data_version = seen  # read first: a commit during the load is seen next time
            sig = await self.signature()
            old = self._snapshot
            if old is not None and not force and sig == old.signature:
                return False
            changes = None if force or old is None else await self._changes(old, sig)
            if changes is not None:
                catalogue, upstream, diff = changes
            else:
                loaded = await load_catalogue(self.store, self.version)  # raw unit vectors
                geometry = await library_geometry(self.store, self.config, loaded.catalogue.vectors,
                                                  save=not self.read_only)
                if not self.read_only:
                    # A refit just saved moved the fit time: not a change next time. The change
                    # number stays the one read before the rows: a commit since is read next time.
                    sig = (sig[0], (await self.signature())[1])
                catalogue = await asyncio.to_thread(loaded.catalogue.in_geometry, geometry)
                diff = None
                upstream = UpstreamIds(catalogue.ids, loaded.upstream_ids)
            by_upstream = upstream.by_upstream
            index, status = await self._index_for(old, catalogue, diff)
            catalogue.radius, radius_status = await self._radius(old, catalogue, index, diff)
            self._snapshot = LibrarySnapshot(
                catalogue, index, status, upstream, by_upstream, sig, radius_status
            )
            geometry = catalogue.geometry
            log.info("library %s: %d analysed tracks, index %s (%s), %s geometry fitted on %d, "
                     "CSLS radii %s", "updated" if changes is not None else "loaded",
                     len(catalogue), index.kind, status, geometry.method, geometry.fitted_on,
                     radius_status or "off")
            return True

    async def _changes(
        self, old: LibrarySnapshot, sig: tuple[Any, ...]
    ) -> tuple[Catalogue, UpstreamIds, tuple[np.ndarray, np.ndarray]] | None:
        """The old snapshot's catalogue patched with the store rows changed since it was
        loaded, or None when a full load is needed (the patch does not account for every
        stored analysis). The ids it returns are (gone, new or changed
        vector) for the index.

        "Changed since" is the store's change number in the old signature, read before the
        old snapshot's rows (LibraryStore.signature): every transaction after it stamped
        its rows with a larger number, whoever wrote them and whatever its clock said, so
        exactly those rows are read. A row committed while this runs is read now or, its
        number being past ``sig``'s, at the next reload. Removals leave no row: the store's
        id list, read just after the changed rows, gives them, and the patch is checked
        against it (a track added between the two reads means a full load, never a stale
        row). New rows get the old snapshot's geometry; when the library has drifted from
        it (or the writer saved a refit) a full load refits instead.
        """
        if len(old.signature) != 2 or old.signature[1] != sig[1]:
            return None
        fresh = await load_catalogue(self.store, self.version, since=int(old.signature[0]))
        current = await self.store.analysed_ids(self.version)
        cat_old = old.catalogue
        new = fresh.catalogue.in_geometry(cat_old.geometry)
        gone = np.setdiff1d(cat_old.ids, current)
        catalogue = await asyncio.to_thread(cat_old.patched, gone, new)
        if not np.array_equal(catalogue.ids, current):
            return None
        if catalogue.geometry.stale_by_mean(catalogue.geometry.raw_mean(catalogue.vectors),
                                            len(catalogue), self.config.geometry):
            return None
        previous = old.upstream_ids
        if not isinstance(previous, UpstreamIds):
            previous = UpstreamIds.from_pairs(previous)
        upstream = previous.patched(np.union1d(gone, new.ids), new.ids, fresh.upstream_ids)
        known = np.flatnonzero(np.isin(new.ids, cat_old.ids))
        moved = np.ones(len(new), bool)
        if len(known):
            before = cat_old.vectors[cat_old.rows(new.ids[known])]
            moved[known] = ~np.all(np.isclose(before, new.vectors[known], atol=1e-6), axis=1)
        return catalogue, upstream, (gone, np.sort(new.ids[moved]))

    async def _index_for(
        self, old: LibrarySnapshot | None, cat: Catalogue,
        diff: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[SimilarityIndex, str]:
        """The index for ``cat``: loaded, rebuilt, or the old one updated in place with
        ``diff`` = (ids gone, ids new or with a changed vector) when the caller knows it.

        The index then reads its vectors from ``cat.vectors`` where it can
        (SimilarityIndex.use_vectors): one copy of the library's vectors, not two."""
        path = self.config.index_path
        threshold = self.config.hnsw_threshold
        if old is not None and not same_geometry(old.catalogue.geometry, cat.geometry):
            # every vector moved: a fresh build beats replacing them one by one
            index = await asyncio.to_thread(SimilarityIndex.build, cat.ids, cat.vectors, threshold)
            await asyncio.to_thread(index.use_vectors, cat.ids, cat.vectors)
            if not self.read_only:
                await asyncio.to_thread(_save_quietly, index, path)
            return index, "rebuilt: similarity geometry refitted"
        if old is None or old.index.kind == "flat":
            # An exact index is a plain copy of the vectors: rebuilding it is cheaper than diffing.
            if old is None:
                index, status = await asyncio.to_thread(
                    load_or_build, path, cat.ids, cat.vectors, threshold, save=not self.read_only)
                await asyncio.to_thread(index.use_vectors, cat.ids, cat.vectors)
                return index, status
            index = await asyncio.to_thread(SimilarityIndex.build, cat.ids, cat.vectors, threshold)
            await asyncio.to_thread(index.use_vectors, cat.ids, cat.vectors)
            if not self.read_only:
                await asyncio.to_thread(_save_quietly, index, path)
            return index, "rebuilt: analyses changed"
        gone, changed = diff if diff is not None else _diff(old.catalogue, cat)
        if len(gone) + len(changed) > _INCREMENTAL_LIMIT:
            index = await asyncio.to_thread(SimilarityIndex.build, cat.ids, cat.vectors, threshold)
            await asyncio.to_thread(index.use_vectors, cat.ids, cat.vectors)
            status = "rebuilt: many analyses changed"
        else:
            index = old.index
            rows = cat.rows(changed) if len(changed) else np.zeros(0, np.int64)
            async with self._lock.write():  # readers of the old snapshot search this index
                await asyncio.to_thread(index.remove, gone)
                await asyncio.to_thread(index.add, changed, cat.vectors[rows])
                # new tracks appended in id order keep index positions = catalogue rows
                await asyncio.to_thread(index.use_vectors, cat.ids, cat.vectors)
            status = f"updated: {len(changed)} added or changed, {len(gone)} removed"
        if not self.read_only:
            await asyncio.to_thread(_save_quietly, index, path)
        return index, status

    async def _radius(
        self, old: LibrarySnapshot | None, cat: Catalogue, index: SimilarityIndex,
        diff: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray | None, str]:
        """CSLS neighbourhood radii (index.hubness) for the new catalogue, before it is
        published, and where they came from.

        At start, the radii saved beside the index when their signature is this library's
        (index.radii_file); a replica looks there on every reload too, so it takes the
        writer's whenever the writer saved them for the library it now has. Otherwise every
        track's r is computed afresh at start, after a geometry refit and once
        ``STALE_SHARE`` of the library changed since the last time; in between only the
        changed tracks get theirs and the others keep theirs (slightly stale). The writer
        saves what it computed, with the count of changes since the last full computation.
        """
        if self.config.hubness != "csls":
            return None, ""
        signature = await asyncio.to_thread(radii_signature, cat.ids, cat.vectors, cat.geometry,
                                            self.version, K)
        path = radii_path(self.config.index_path)
        why = ""
        if old is None or self.read_only:
            saved, why = await asyncio.to_thread(load_radii, path, signature)
            if saved is not None:
                self._radius_changes = saved.changes
                return saved.radius, "loaded"
        radius, status = await self._computed_radius(old, cat, index, diff)
        if not self.read_only:
            await asyncio.to_thread(_save_radii_quietly, path, radius, signature,
                                    self._radius_changes)
        return radius, f"{status} (saved radii {why})" if old is None else status

    async def _computed_radius(
        self, old: LibrarySnapshot | None, cat: Catalogue, index: SimilarityIndex,
        diff: tuple[np.ndarray, np.ndarray] | None,
    ) -> tuple[np.ndarray, str]:
        if diff is not None:  # an incremental reload knows what moved
            gone, changed = diff
        else:
            gone, changed = (_diff(old.catalogue, cat) if old is not None
                             else (np.zeros(0, np.int64), cat.ids))
        changes = self._radius_changes + len(gone) + len(changed)
        if (old is None or old.catalogue.radius is None
                or not same_geometry(old.catalogue.geometry, cat.geometry)
                or changes > STALE_SHARE * len(cat)):
            self._radius_changes = 0
            radius = await asyncio.to_thread(neighbourhood_radius, index, cat.ids, cat.vectors, K)
            return radius, "computed"
        self._radius_changes = changes
        fresh = (await asyncio.to_thread(neighbourhood_radius, index, changed,
                                         cat.vectors[cat.rows(changed)], K)
                 if len(changed) else np.zeros(0, np.float32))
        radius = carry_over(old.catalogue.ids, old.catalogue.radius, cat.ids, changed, fresh)
        return radius, f"{len(changed)} computed, the rest carried over"

    @contextlib.asynccontextmanager
    async def reading(self) -> AsyncIterator[LibrarySnapshot]:
        """The snapshot, guaranteed not to be mutated until the block ends."""
        async with self._lock.read():
            yield self.snapshot

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a pure feature function on the snapshot in a worker thread (the loop stays free)."""
        async with self.reading() as snap:
            return await asyncio.to_thread(fn, snap.catalogue, snap.index, *args, **kwargs)

    async def projection(self) -> tuple[LibrarySnapshot, np.ndarray]:
        """The snapshot and its 2-D map coordinates (row i = catalogue row i).

        Computed once per index version (the snapshot's signature) and cached:
        every map view between two library changes reuses it.
        """
        async with self._projecting:
            snap = self.snapshot
            cached = self._projection
            if cached is not None and cached[0] == snap.signature:
                return snap, cached[1]
            coords = await asyncio.to_thread(project_2d, snap.catalogue.vectors)
            self._projection = (snap.signature, coords)
            return snap, coords

    async def watch(self, interval: float) -> None:
        """Poll the store and refresh forever (cancel to stop); errors are logged, not fatal."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a failed refresh keeps the old snapshot
                log.exception("refreshing the library failed; keeping the previous one")


def _diff(old: Catalogue, new: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """(ids that left, ids that are new or whose vector changed) between two catalogues."""
    gone = np.setdiff1d(old.ids, new.ids)
    added = np.setdiff1d(new.ids, old.ids)
    common = np.intersect1d(old.ids, new.ids)
    if len(common):
        differs = ~np.all(
            np.isclose(old.vectors[old.rows(common)], new.vectors[new.rows(common)], atol=1e-6),
            axis=1,
        )
        changed = np.concatenate([added, common[differs]])
    else:
        changed = added
    return gone.astype(np.int64), np.sort(changed).astype(np.int64)


def _save_quietly(index: SimilarityIndex, path: Any) -> None:
    try:
        index.save(path)
    except OSError as exc:
        log.warning("could not save the index to %s: %s (it will be rebuilt next start)", path, exc)


def _save_radii_quietly(path: Any, radius: np.ndarray, signature: dict[str, Any],
                        changes: int) -> None:
    try:
        save_radii(path, radius, signature, changes)
    except OSError as exc:
        log.warning("could not save the CSLS radii to %s: %s (they will be computed next start)",
                    path, exc)


async def open_service(store: LibraryStore, config: Config) -> LibraryService:
    service = LibraryService(store, config)
    await service.refresh(force=True)
    return service


def unique_ids(values: Sequence[int]) -> list[int]:
    """Order-preserving de-duplication (a seed named twice is still one seed)."""
    seen: set[int] = set()
    return [v for v in values if not (v in seen or seen.add(v))]
