"""The library store: tracks, their analyses and failures, in SQLite through aiosqlite.

SQLite in WAL mode with one writer keeps every finished analysis safe the
moment its transaction commits, so a killed process loses nothing that was
written and the next run simply picks up what is still pending. Schema changes
are numbered migrations recorded in ``PRAGMA user_version``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import numpy as np

from analysis.types import EMBEDDING_DIM, TrackAnalysis

MIGRATIONS: tuple[str, ...] = (
    # 1: tracks, analyses, failures
    """
    CREATE TABLE tracks (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        upstream_id TEXT NOT NULL,
        path TEXT,
        size INTEGER,
        mtime REAL,
        title TEXT,
        artist TEXT,
        album TEXT,
        genre TEXT,
        year INTEGER,
        duration REAL,
        raw TEXT,
        added_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (source, upstream_id)
    );
    CREATE INDEX tracks_title ON tracks (title COLLATE NOCASE);
    CREATE INDEX tracks_artist ON tracks (artist COLLATE NOCASE);
    CREATE TABLE analyses (
        track_id INTEGER PRIMARY KEY REFERENCES tracks (id) ON DELETE CASCADE,
        version TEXT NOT NULL,
        features TEXT NOT NULL,
        embedding BLOB NOT NULL,
        analysed_at REAL NOT NULL
    );
    CREATE TABLE failures (
        track_id INTEGER PRIMARY KEY REFERENCES tracks (id) ON DELETE CASCADE,
        version TEXT NOT NULL,
        reason TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 1,
        failed_at REAL NOT NULL
    );
    """,
    # 2: the duplicate fingerprint (analysis/audio_fingerprint.py); NULL for analyses made
    # before it, which re-analysis fills in
    "ALTER TABLE analyses ADD COLUMN fingerprint BLOB",
    # 3: the similarity geometry fitted on the analyses of a version (index/geometry.py), so
    # restarts and replicas use the writer's fit instead of each fitting their own
    """
    CREATE TABLE geometry (
        version TEXT PRIMARY KEY,
        method TEXT NOT NULL,
        mean BLOB,
        fitted_on INTEGER NOT NULL,
        distance_scale REAL NOT NULL,
        fitted_at REAL NOT NULL
    )
    """,
    # 4: a change counter (see LibraryStore.changes): every transaction that writes tracks or
    # analyses takes the next number and stamps the rows it writes with it, so a reader that
    # has seen number N reads exactly the rows written after it, whatever the clocks say.
    # Rows written before this migration carry 0: a reader loaded them in a full load.
    """
    CREATE TABLE changes (id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
    INSERT INTO changes (id, seq) VALUES (1, 0);
    ALTER TABLE tracks ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE analyses ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tracks_change_seq ON tracks (change_seq);
    CREATE INDEX analyses_change_seq ON analyses (change_seq)
    """,
)

# Tracks without an analysis of a version that have not failed too often with it;
# parameters: version, version, max_attempts.
_PENDING_SQL = (
    "SELECT t.* FROM tracks t"
    " LEFT JOIN analyses a ON a.track_id = t.id AND a.version = ?"
    " LEFT JOIN failures f ON f.track_id = t.id AND f.version = ?"
    " WHERE a.track_id IS NULL AND (f.track_id IS NULL OR f.attempts < ?)"
)

TRACK_COLUMNS = (
    "path",
    "size",
    "mtime",
    "title",
    "artist",
    "album",
    "genre",
    "year",
    "duration",
)


@dataclass
class TrackRecord:
    """What an adapter knows about one track before analysis."""

    source: str
    upstream_id: str
    path: str | None = None
    size: int | None = None
    mtime: float | None = None
    title: str | None = None
    artist: str | None = None
    album: str | None = None
    genre: str | None = None
    year: int | None = None
    duration: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True)
class StoredAnalysis:
    track: TrackRecord
    version: str
    features: dict[str, Any]
    embedding: np.ndarray
    analysed_at: float
    fingerprint: bytes | None = None


@dataclass(frozen=True)
class StoredGeometry:
    """A similarity geometry as saved: ``mean`` None for the raw one (see index.geometry)."""

    method: str
    mean: np.ndarray | None
    fitted_on: int
    distance_scale: float
    fitted_at: float


@dataclass(frozen=True)
class SyncResult:
    added: int
    changed: int
    removed: int
    unchanged: int


@dataclass(frozen=True)
class LibraryStatus:
    tracks: int
    analysed: int
    failed: int
    pending: int
    outdated: int


def _to_db(value: Any) -> Any:
    """A file name that is not valid UTF-8 (Latin-1 rips) comes from the OS with surrogate
    escapes, which SQLite text cannot hold: it is stored as its bytes (a BLOB) instead, so
    one such name neither stops a scan nor loses the way back to the file."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(value)
    return value


def _from_db(value: Any) -> Any:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _row_to_track(row: aiosqlite.Row) -> TrackRecord:
    return TrackRecord(
        id=row["id"],
        source=row["source"],
        upstream_id=_from_db(row["upstream_id"]),
        raw=json.loads(row["raw"]) if row["raw"] else {},
        **{c: _from_db(row[c]) for c in TRACK_COLUMNS},
    )


class StorageFullError(OSError):
    """The database could not grow: its disk, or a quota, is full.

    The transaction that hit it is rolled back, so the database stays as it was
    after the last successful write; everything saved before is kept.
    """


class ReadOnlyStoreError(RuntimeError):
    """A replica cannot use the store as it is; the message says what the writer must do."""


class LibraryStore:
    """One connection, one writer; open with ``await LibraryStore.open(path)``."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    async def open(cls, path: str | Path, read_only: bool = False) -> LibraryStore:
        """The store at ``path``; ``read_only`` for a replica beside the one writer.

        A read-only store never migrates, never creates the file and cannot write
        (SQLite refuses); it needs the writer to have created the database in WAL
        mode, which is what lets it read while the writer commits.
        """
        path = Path(path)
        if read_only:
            return await cls._open_read_only(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=10000")
        store = cls(db, path)
        try:
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    @classmethod
    async def _open_read_only(cls, path: Path) -> LibraryStore:
        if not path.exists():
            raise ReadOnlyStoreError(
                f"{path} does not exist: start the writer (role = writer) on this store first")
        db = await aiosqlite.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA busy_timeout=10000")
        store = cls(db, path)
        try:
            async with db.execute("PRAGMA journal_mode") as cur:
                mode = str((await cur.fetchone())[0]).lower()
            if mode != "wal":
                raise ReadOnlyStoreError(
                    f"{path} is in {mode} journal mode; a replica needs the writer's WAL mode "
                    "(start the writer once with this musegate)")
            if await store.schema_version() != len(MIGRATIONS):
                raise ReadOnlyStoreError(
                    f"{path} has schema {await store.schema_version()}, this musegate reads "
                    f"{len(MIGRATIONS)}: run the same musegate version as the writer")
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def data_version(self) -> int:
        """SQLite's counter of commits made by *other* connections: a free change check.

        A replica polls this instead of counting analyses; it only moves when the
        writer committed something.
        """
        async with self._db.execute("PRAGMA data_version") as cur:
            return int((await cur.fetchone())[0])

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """Statements inside are committed together, or rolled back together on error."""
        try:
            yield
            await self._db.commit()
        except sqlite3.OperationalError as exc:
            with contextlib.suppress(sqlite3.Error):
                await self._db.rollback()
            if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                raise StorageFullError(
                    f"cannot write the database {self.path}: the disk is full ({exc}). "
                    "Everything saved before is kept; free some space and run again to resume."
                ) from None
            raise

    async def _next_change(self) -> None:
        """Take the next change number for the rows this transaction writes, which stamp it
        with ``(SELECT seq FROM changes)``.

        The UPDATE takes SQLite's write lock and the transaction holds it until it commits,
        and every writer of the file (this process, a ``musegate analyze`` beside the
        server, any other) has to take the same lock: so numbers are given out in commit
        order. A reader that sees number N has therefore seen every row stamped N or less,
        and reads what changed since by number alone: no clock, no margin.
        """
        await self._db.execute("UPDATE changes SET seq = seq + 1")

    async def __aenter__(self) -> LibraryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0])

    async def _migrate(self) -> None:
        current = await self.schema_version()
        if current > len(MIGRATIONS):
            raise RuntimeError(
                f"database {self.path} has schema {current}, newer than this musegate "
                f"({len(MIGRATIONS)}); upgrade musegate"
            )
        for number, script in enumerate(MIGRATIONS[current:], start=current + 1):
            await self._db.executescript(
                f"BEGIN; {script}; PRAGMA user_version = {number}; COMMIT;"
            )

    # ---- tracks -------------------------------------------------------------

    async def sync_source(self, source: str, records: Iterable[TrackRecord]) -> SyncResult:
        """Make the store's tracks of ``source`` equal to ``records``.

        Unchanged tracks (same size and mtime) keep their analysis; changed ones
        lose it (and any failure) so they are analysed again; tracks that are no
        longer listed leave the library. Rows are only written when something in
        them differs, in batches, so rescanning an unchanged library is one read.
        """
        columns = ", ".join(TRACK_COLUMNS)
        async with self._db.execute(
            f"SELECT id, upstream_id, {columns}, raw FROM tracks WHERE source = ?", (source,)
        ) as cur:
            known = {_from_db(row["upstream_id"]): row for row in await cur.fetchall()}
        now = time.time()
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        reanalyse: list[tuple[int]] = []
        unchanged = 0
        seen: set[str] = set()
        for rec in records:
            seen.add(rec.upstream_id)
            values = tuple(_to_db(getattr(rec, c)) for c in TRACK_COLUMNS)
            raw = json.dumps(rec.raw, ensure_ascii=False, default=str)
            if isinstance(_to_db(raw), bytes):  # JSON escapes keep surrogates as text
                raw = json.dumps(rec.raw, default=str)
            old = known.get(rec.upstream_id)
            if old is None:
                inserts.append((source, _to_db(rec.upstream_id), *values, raw, now, now))
                continue
            if (old["size"], old["mtime"]) != (rec.size, rec.mtime):
                reanalyse.append((old["id"],))
            else:
                unchanged += 1
            if tuple(old[c] for c in TRACK_COLUMNS) != values or old["raw"] != raw:
                updates.append((*values, raw, now, old["id"]))
        gone = [(row["id"],) for uid, row in known.items() if uid not in seen]
        if not (inserts or updates or reanalyse or gone):
            return SyncResult(0, 0, 0, unchanged)  # the nightly rescan: nothing to write
        async with self._transaction():
            await self._next_change()
            await self._db.executemany(
                f"INSERT INTO tracks (source, upstream_id, {columns}, raw, added_at, updated_at,"
                f" change_seq) VALUES (?, ?, {', '.join('?' * len(TRACK_COLUMNS))}, ?, ?, ?,"
                " (SELECT seq FROM changes))",
                inserts,
            )
            await self._db.executemany(
                f"UPDATE tracks SET {', '.join(f'{c} = ?' for c in TRACK_COLUMNS)}, raw = ?,"
                " updated_at = ?, change_seq = (SELECT seq FROM changes) WHERE id = ?",
                updates,
            )
            await self._db.executemany("DELETE FROM analyses WHERE track_id = ?", reanalyse)
            await self._db.executemany("DELETE FROM failures WHERE track_id = ?", reanalyse)
            await self._db.executemany("DELETE FROM tracks WHERE id = ?", gone)
        return SyncResult(len(inserts), len(reanalyse), len(gone), unchanged)

    async def tracks_of_source(self, source: str) -> dict[str, TrackRecord]:
        async with self._db.execute("SELECT * FROM tracks WHERE source = ?", (source,)) as cur:
            return {_from_db(r["upstream_id"]): _row_to_track(r) for r in await cur.fetchall()}

    async def remove_tracks(self, track_ids: Sequence[int]) -> None:
        if not track_ids:
            return
        async with self._transaction():
            await self._next_change()
            await self._db.executemany(
                "DELETE FROM tracks WHERE id = ?", [(i,) for i in track_ids]
            )

    async def get_track(self, track_id: int) -> TrackRecord | None:
        async with self._db.execute("SELECT * FROM tracks WHERE id = ?", (track_id,)) as cur:
            row = await cur.fetchone()
        return _row_to_track(row) if row else None

    async def find_tracks(self, query: str, limit: int = 20) -> list[TrackRecord]:
        """Tracks whose path equals ``query``, else whose title/artist/album contain every word.

        Words are also matched against the source's own id (for a folder, the path
        relative to it) but never against the absolute path: the library's root
        folder name would otherwise match every track.
        """
        resolved = str(Path(query).expanduser().resolve()) if query else query
        async with self._db.execute(
            "SELECT * FROM tracks WHERE path = ? OR path = ? ORDER BY id",
            (_to_db(query), _to_db(resolved)),
        ) as cur:
            rows = await cur.fetchall()
        if rows:
            return [_row_to_track(r) for r in rows]
        words = [w for w in query.lower().split() if w]
        if not words:
            return []
        clause = " AND ".join(
            "(lower(coalesce(title,'') || ' ' || coalesce(artist,'') || ' ' ||"
            " coalesce(album,'') || ' ' || upstream_id) LIKE ?)"
            for _ in words
        )
        async with self._db.execute(
            f"SELECT * FROM tracks WHERE {clause} ORDER BY artist, album, title LIMIT ?",
            (*[f"%{w}%" for w in words], limit),
        ) as cur:
            return [_row_to_track(r) for r in await cur.fetchall()]

    # ---- analyses -----------------------------------------------------------

    async def pending(
        self, version: str, max_attempts: int, limit: int | None = None
    ) -> list[TrackRecord]:
        """Tracks without an analysis of ``version`` that have not failed too often with it."""
        sql = _PENDING_SQL + " ORDER BY t.id"
        params: tuple[Any, ...] = (version, version, max_attempts)
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        async with self._db.execute(sql, params) as cur:
            return [_row_to_track(r) for r in await cur.fetchall()]

    async def write_results(
        self,
        analyses: Sequence[tuple[int, TrackAnalysis]],
        failures: Sequence[tuple[int, str, str]] = (),
    ) -> None:
        """Write a batch of finished analyses and failures in one transaction.

        A track deleted from the library while it was being analysed is skipped
        silently: its result has nowhere to belong.
        """
        now = time.time()
        async with self._transaction():
            if analyses:  # failures alone change nothing a reader of the analyses loads
                await self._next_change()
            await self._db.executemany(
                "INSERT INTO analyses (track_id, version, features, embedding, analysed_at,"
                " fingerprint, change_seq)"
                " SELECT ?, ?, ?, ?, ?, ?, (SELECT seq FROM changes)"
                " WHERE EXISTS (SELECT 1 FROM tracks WHERE id = ?)"
                " ON CONFLICT (track_id) DO UPDATE SET version = excluded.version,"
                " features = excluded.features, embedding = excluded.embedding,"
                " analysed_at = excluded.analysed_at, fingerprint = excluded.fingerprint,"
                " change_seq = excluded.change_seq",
                [
                    (
                        tid,
                        a.version,
                        json.dumps(a.features()),
                        np.asarray(a.embedding, dtype="<f4").tobytes(),
                        now,
                        a.fingerprint,
                        tid,
                    )
                    for tid, a in analyses
                ],
            )
            await self._db.executemany(
                "DELETE FROM failures WHERE track_id = ?", [(tid,) for tid, _ in analyses]
            )
            await self._db.executemany(
                "INSERT INTO failures (track_id, version, reason, attempts, failed_at)"
                " SELECT ?, ?, ?, 1, ? WHERE EXISTS (SELECT 1 FROM tracks WHERE id = ?)"
                " ON CONFLICT (track_id) DO UPDATE SET reason = excluded.reason,"
                " attempts = CASE WHEN failures.version = excluded.version"
                " THEN failures.attempts + 1 ELSE 1 END,"
                " version = excluded.version, failed_at = excluded.failed_at",
                [(tid, version, reason, now, tid) for tid, version, reason in failures],
            )

    async def get_analysis(self, track_id: int) -> StoredAnalysis | None:
        async with self._db.execute(
            "SELECT t.*, a.version, a.features, a.embedding, a.analysed_at, a.fingerprint"
            " FROM analyses a JOIN tracks t ON t.id = a.track_id WHERE a.track_id = ?",
            (track_id,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return StoredAnalysis(
            track=_row_to_track(row),
            version=row["version"],
            features=json.loads(row["features"]),
            embedding=np.frombuffer(row["embedding"], dtype="<f4"),
            analysed_at=row["analysed_at"],
            fingerprint=row["fingerprint"],
        )

    async def analysed(self, version: str) -> list[StoredAnalysis]:
        """Every track analysed with ``version``, in track-id order (one query)."""
        async with self._db.execute(
            "SELECT t.*, a.version, a.features, a.embedding, a.analysed_at, a.fingerprint"
            " FROM analyses a JOIN tracks t ON t.id = a.track_id WHERE a.version = ?"
            " ORDER BY t.id",
            (version,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            StoredAnalysis(
                track=_row_to_track(r),
                version=r["version"],
                features=json.loads(r["features"]),
                embedding=np.frombuffer(r["embedding"], dtype="<f4"),
                analysed_at=r["analysed_at"],
                fingerprint=r["fingerprint"],
            )
            for r in rows
        ]

    async def analysed_chunks(
        self, version: str, since: int | None = None, chunk: int = 5_000
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """Every analysis of ``version`` in track-id order, ``chunk`` rows at a time, as plain
        tuples (id, upstream_id, title, artist, album, duration, features JSON, embedding
        bytes, fingerprint): what a column loader needs and no per-track objects, so loading
        a large library never holds it twice. ``since``, a change number (``signature()[0]``
        when the caller last loaded), keeps only analyses written, or tracks edited, after
        it: found through the change-number indexes, so a reload after one change reads one
        row however recently the rest were written.
        """
        sql = ("SELECT t.id, t.upstream_id, t.title, t.artist, t.album, t.duration,"
               " a.features, a.embedding, a.fingerprint"
               " FROM analyses a JOIN tracks t ON t.id = a.track_id WHERE a.version = ?")
        params: tuple[Any, ...] = (version,)
        if since is not None:
            sql += (" AND a.track_id IN (SELECT track_id FROM analyses WHERE change_seq > ?"
                    " UNION SELECT id FROM tracks WHERE change_seq > ?)")
            params += (int(since), int(since))
        async with self._db.execute(sql + " ORDER BY t.id", params) as cur:
            while rows := await cur.fetchmany(chunk):
                yield [tuple(r) for r in rows]

    async def analysed_ids(self, version: str) -> np.ndarray:
        """Track ids analysed with ``version``, sorted (int64): what a reload diffs against."""
        async with self._db.execute(
            "SELECT track_id FROM analyses WHERE version = ? ORDER BY track_id", (version,)
        ) as cur:
            rows = await cur.fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    async def embeddings(self, version: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All stored embeddings as (track ids int64 [N], float32 [N, 200]), optionally one version."""
        sql = "SELECT track_id, embedding FROM analyses"
        params: tuple[Any, ...] = ()
        if version is not None:
            sql += " WHERE version = ?"
            params = (version,)
        sql += " ORDER BY track_id"
        async with self._db.execute(sql, params) as cur:
            rows = await cur.fetchall()
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return ids, np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), -1)
        return ids, matrix.astype(np.float32, copy=False)

    async def tracks_by_ids(self, ids: Sequence[int]) -> dict[int, TrackRecord]:
        if not ids:
            return {}
        out: dict[int, TrackRecord] = {}
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            async with self._db.execute(
                f"SELECT * FROM tracks WHERE id IN ({', '.join('?' * len(chunk))})", chunk
            ) as cur:
                for row in await cur.fetchall():
                    out[row["id"]] = _row_to_track(row)
        return out

    async def clear_failures(self, track_ids: Sequence[int] | None = None) -> int:
        """Forget failed attempts (of ``track_ids``, or all) so those tracks are pending again."""
        if track_ids is None:
            cur = await self._db.execute("DELETE FROM failures")
        else:
            ids = [int(i) for i in track_ids]
            if not ids:
                return 0
            cur = await self._db.execute(
                f"DELETE FROM failures WHERE track_id IN ({', '.join('?' * len(ids))})", ids)
        await self._db.commit()
        return int(cur.rowcount or 0)

    async def failures(self) -> list[tuple[TrackRecord, str, int]]:
        async with self._db.execute(
            "SELECT t.*, f.reason, f.attempts FROM failures f JOIN tracks t ON t.id = f.track_id"
            " ORDER BY t.id"
        ) as cur:
            return [(_row_to_track(r), r["reason"], r["attempts"]) for r in await cur.fetchall()]

    async def status(self, version: str, max_attempts: int) -> LibraryStatus:
        async with self._db.execute(
            "SELECT"
            " (SELECT count(*) FROM tracks),"
            " (SELECT count(*) FROM analyses WHERE version = ?),"
            " (SELECT count(*) FROM failures f LEFT JOIN analyses a ON a.track_id = f.track_id"
            "   AND a.version = ? WHERE a.track_id IS NULL),"
            " (SELECT count(*) FROM analyses WHERE version != ?)",
            (version, version, version),
        ) as cur:
            tracks, analysed, failed, outdated = await cur.fetchone()
        async with self._db.execute(
            f"SELECT count(*) FROM ({_PENDING_SQL})", (version, version, max_attempts)
        ) as cur:
            (pending,) = await cur.fetchone()
        return LibraryStatus(tracks, analysed, failed, pending, outdated)

    async def signature(self, version: str) -> tuple[int, float]:
        """(change number, fit time of the geometry of ``version``): moves with every write of
        tracks or analyses and every refit, so readers of the library reload only when it moves.

        Two single-row reads, whatever the library's size (counting the analyses took 2.9 s
        at 1M tracks). The change number is also where a reload starts reading
        (``analysed_chunks(since=...)``); the fit time tells a reload that the geometry was
        refitted (a full load).
        """
        async with self._db.execute(
            "SELECT (SELECT seq FROM changes),"
            " (SELECT coalesce(max(fitted_at), 0) FROM geometry WHERE version = ?)",
            (version,),
        ) as cur:
            seq, fitted_at = await cur.fetchone()
        return int(seq), float(fitted_at)

    # ---- similarity geometry --------------------------------------------------

    async def geometry(self, version: str) -> StoredGeometry | None:
        """The geometry saved for analyses of ``version``, or None before the first fit."""
        async with self._db.execute(
            "SELECT method, mean, fitted_on, distance_scale, fitted_at FROM geometry WHERE version = ?",
            (version,),
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        mean = None if row["mean"] is None else np.frombuffer(row["mean"], dtype="<f4").copy()
        return StoredGeometry(row["method"], mean, int(row["fitted_on"]), float(row["distance_scale"]),
                              float(row["fitted_at"]))

    async def save_geometry(
        self, version: str, method: str, mean: np.ndarray | None, fitted_on: int, distance_scale: float
    ) -> StoredGeometry:
        """Replace the geometry of ``version`` (the writer's job; a replica only reads it)."""
        saved = StoredGeometry(
            method,
            None if mean is None else np.asarray(mean, dtype="<f4").copy(),
            int(fitted_on),
            float(distance_scale),
            time.time(),
        )
        async with self._transaction():
            await self._db.execute(
                "INSERT INTO geometry (version, method, mean, fitted_on, distance_scale, fitted_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (version) DO UPDATE SET"
                " method = excluded.method, mean = excluded.mean, fitted_on = excluded.fitted_on,"
                " distance_scale = excluded.distance_scale, fitted_at = excluded.fitted_at",
                (version, method, None if saved.mean is None else saved.mean.tobytes(),
                 saved.fitted_on, saved.distance_scale, saved.fitted_at),
            )
        return saved
