"""Use cases shared by the CLI, the demo and (later) the server: scan, analyse, look up.

Thin glue between the adapters, the analyzer, the store and the index, so that
each entry point does the same thing the same way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.base import LibraryAdapter
from analysis.analyzer import (
    AnalysisReport,
    AnalyzerSettings,
    ProgressCallback,
    SourceCheck,
    run_analysis,
)
from analysis.labels import MSD_LABELS
from analysis.model import model_version
from analysis.sampling import plan_for_mode
from analysis.store import LibraryStore, StoredAnalysis, SyncResult, TrackRecord
from analysis.version import analysis_version
from index.catalogue import TAG_DTYPE, Catalogue, key_code
from index.faiss_index import SimilarityIndex
from index.geometry import Geometry, current_geometry
from index.instant import Interpretation
from index.text_column import TextColumn
from musegate.config import Config


class TrackNotFound(LookupError):
    """No track matches what the user typed; the message says what was searched."""


def adapter_for(config: Config) -> Any:
    """The configured library source, or None when there is none (API features still work).

    Server adapters hold an HTTP session: whoever creates one closes it (``close()``).
    """
    if config.source in ("subsonic", "jellyfin", "lyrion"):
        if not config.upstream_url:
            return None
        if config.source == "subsonic":
            from adapters.subsonic import SubsonicAdapter

            return SubsonicAdapter.from_config(config)
        if config.source == "lyrion":
            from adapters.lyrion import LyrionAdapter

            return LyrionAdapter.from_config(config)
        from adapters.jellyfin import JellyfinAdapter

        return JellyfinAdapter.from_config(config)
    if config.library_path:
        from adapters.folder import FolderAdapter

        return FolderAdapter(config.library_path, playlist_dir=config.playlist_path)
    return None


async def close_adapter(adapter: Any) -> None:
    close = getattr(adapter, "close", None)
    if close is not None:
        await close()


def analyzer_settings(config: Config) -> AnalyzerSettings:
    plan = plan_for_mode(config.analysis_mode)
    return AnalyzerSettings(
        plan=plan,
        version=analysis_version(model_version(), plan),
        workers=config.workers,
        model_threads=config.model_threads,
        write_batch=config.write_batch,
        max_attempts=config.max_attempts,
        max_duration=config.max_duration,
        timeout=config.analysis_timeout,
        download_timeout=config.upstream_timeout,
        scheduler_address=config.scheduler_address,
    )


async def scan(store: LibraryStore, adapter: LibraryAdapter) -> SyncResult:
    known = await store.tracks_of_source(adapter.source)
    records = await adapter.list_tracks(known)
    return await store.sync_source(adapter.source, records)


async def analyse(
    store: LibraryStore,
    config: Config,
    progress: ProgressCallback | None = None,
    limit: int | None = None,
    locate: Callable[[TrackRecord], str] | None = None,
    check_source: SourceCheck | None = None,
) -> AnalysisReport:
    """Analyse pending tracks; ``locate`` says where a track's audio is (default: its path),
    ``check_source`` whether its server is up when a download fails (analysis.analyzer)."""
    extra = {"locate": locate} if locate is not None else {}
    return await run_analysis(store, analyzer_settings(config), progress, limit,
                              check_source=check_source, **extra)


def analyse_from(adapter: Any) -> dict[str, Any]:
    """The adapter's answers to "where is the audio" and "is the server up", for analyse()."""
    return {"locate": getattr(adapter, "audio_location", None),
            "check_source": getattr(adapter, "check_reachable", None)}


async def resolve_track(store: LibraryStore, query: str) -> TrackRecord:
    """A path, a numeric id, or words from title/artist/album; ambiguity is an error."""
    if query.isdigit():
        track = await store.get_track(int(query))
        if track is not None:
            return track
    matches = await store.find_tracks(query, limit=10)
    if not matches:
        raise TrackNotFound(f"no track matches {query!r}")
    if len(matches) > 1:
        exact = [t for t in matches if (t.title or "").lower() == query.lower()]
        if len(exact) == 1:
            return exact[0]
        listing = "\n".join(f"  {t.id}: {describe_track(t)}" for t in matches)
        raise TrackNotFound(
            f"{query!r} matches several tracks; use a path, an id or more words:\n{listing}"
        )
    return matches[0]


def describe_track(track: TrackRecord) -> str:
    parts = [track.artist or "unknown artist", track.title or track.upstream_id]
    return " — ".join(parts) + (f" ({track.album})" if track.album else "")


def top_tags(analysis: StoredAnalysis, n: int = 8) -> list[tuple[str, float]]:
    scores = analysis.features.get("tags", [])
    ranked = sorted(zip(MSD_LABELS, scores, strict=False), key=lambda p: -p[1])
    return [(label, float(score)) for label, score in ranked[:n]]


async def library_geometry(
    store: LibraryStore, config: Config, embeddings: np.ndarray, save: bool = True
) -> Geometry:
    """The library's similarity geometry (index.geometry): the saved fit while it suits
    ``embeddings`` (the analyses of this version), else a refit, saved unless ``save`` is
    False (a replica only reads the writer's). Every feature's vectors go through it."""
    version = analyzer_settings(config).version
    stored = await store.geometry(version)
    saved = None if stored is None else Geometry(stored.method, stored.mean, stored.fitted_on,
                                                 stored.distance_scale)
    geometry = current_geometry(saved, embeddings, config.geometry)
    if geometry is not saved and save:
        await store.save_geometry(version, geometry.method, geometry.mean, geometry.fitted_on,
                                  geometry.distance_scale)
    return geometry


@dataclass(frozen=True)
class SimilarResult:
    seed: TrackRecord
    neighbours: list[tuple[TrackRecord, float]]


async def similar(store: LibraryStore, config: Config, seed: TrackRecord, n: int) -> SimilarResult:
    """Plain cosine neighbours of one track in the library's geometry, no playlist rules:
    the analysis checked by ear."""
    version = analyzer_settings(config).version
    ids, matrix = await store.embeddings(version)
    rows = np.flatnonzero(ids == seed.id)
    if not rows.size:
        raise TrackNotFound(
            f"{describe_track(seed)} has not been analysed yet; run `musegate analyze` first"
        )
    geometry = await library_geometry(store, config, matrix, save=config.role != "replica")
    vectors = geometry.apply(matrix)
    index = SimilarityIndex.build(ids, vectors, hnsw_threshold=config.hnsw_threshold)
    sims, found = index.search(vectors[rows[0]], min(n + 1, len(ids)))
    pairs = [(int(t), float(s)) for s, t in zip(sims[0], found[0], strict=True)
             if t >= 0 and int(t) != seed.id][:n]
    tracks = await store.tracks_by_ids([t for t, _ in pairs])
    return SimilarResult(seed, [(tracks[t], s) for t, s in pairs])


def track_json(track: TrackRecord) -> dict[str, Any]:
    return {
        "id": track.id,
        "title": track.title,
        "artist": track.artist,
        "album": track.album,
        "path": track.path,
    }


@dataclass(frozen=True)
class LoadedCatalogue:
    """A catalogue read from the store and each row's id at its source (same order)."""

    catalogue: Catalogue
    upstream_ids: list[str]


async def load_catalogue(
    store: LibraryStore, version: str, since: int | None = None
) -> LoadedCatalogue:
    """The store's analyses of ``version`` (or those changed after change number ``since``)
    as a catalogue.

    Streamed a chunk at a time into column arrays: at 100k tracks the per-track
    StoredAnalysis objects (parsed raw song JSON, a dict and a list of 50 floats each)
    took ~10 KB a track while loading, and the fragmented heap they left behind kept
    half of that after they were freed (bench/memory.py). Chunks are parsed in a worker
    thread so a reload in a running server does not stall its requests.
    """
    parts: list[_Columns] = []
    async for chunk in store.analysed_chunks(version, since=since):
        parts.append(await asyncio.to_thread(_chunk_columns, chunk))
    if not parts:
        return LoadedCatalogue(Catalogue.from_rows([]), [])
    catalogue = await asyncio.to_thread(_join_columns, parts)
    return LoadedCatalogue(catalogue, [u for p in parts for u in p.upstream])


@dataclass
class _Columns:
    """One chunk of store rows as arrays (see load_catalogue)."""

    ids: np.ndarray
    embeddings: np.ndarray
    tags: np.ndarray
    scalars: np.ndarray  # [n, 4]: tempo, energy, loudness, duration
    keys: np.ndarray
    minor: np.ndarray
    upstream: list[str]
    # packed per chunk, so no str object per track outlives its chunk's parse
    titles: TextColumn
    artists: TextColumn
    albums: TextColumn
    fingerprints: list[bytes | None]


def _chunk_columns(chunk: Sequence[tuple[Any, ...]]) -> _Columns:
    n = len(chunk)
    tag_count = len(MSD_LABELS)
    tags = np.zeros((n, tag_count), TAG_DTYPE)
    scalars = np.zeros((n, 4), np.float32)
    keys = np.full(n, -1, np.int8)
    minor = np.zeros(n, bool)
    for i, row in enumerate(chunk):
        f = json.loads(row[6])
        t = (f.get("tags") or [])[:tag_count]
        tags[i, : len(t)] = t
        scalars[i] = (float(f.get("tempo") or 0.0), float(f.get("energy") or 0.0),
                      float(f.get("loudness") or -100.0),
                      float(row[5] or f.get("duration") or 0.0))
        keys[i] = key_code(f.get("key"))
        minor[i] = f.get("scale") == "minor"
    return _Columns(
        ids=np.fromiter((r[0] for r in chunk), np.int64, count=n),
        embeddings=np.frombuffer(b"".join(r[7] for r in chunk), dtype="<f4").reshape(n, -1),
        tags=tags, scalars=scalars, keys=keys, minor=minor,
        upstream=[r[1] for r in chunk], titles=TextColumn([r[2] or "" for r in chunk]),
        artists=TextColumn([r[3] or "" for r in chunk]),
        albums=TextColumn([r[4] or "" for r in chunk]),
        fingerprints=[r[8] for r in chunk],
    )


def _join_columns(parts: Sequence[_Columns]) -> Catalogue:
    scalars = np.concatenate([p.scalars for p in parts])
    return Catalogue.from_columns(
        ids=np.concatenate([p.ids for p in parts]),
        embeddings=np.concatenate([p.embeddings for p in parts]).astype(np.float32, copy=False),
        tags=np.concatenate([p.tags for p in parts]),
        tempo=scalars[:, 0].copy(), energy=scalars[:, 1].copy(),
        loudness=scalars[:, 2].copy(), duration=scalars[:, 3].copy(),
        key=np.concatenate([p.keys for p in parts]),
        minor=np.concatenate([p.minor for p in parts]),
        titles=TextColumn.joined([p.titles for p in parts]),
        artists=TextColumn.joined([p.artists for p in parts]),
        albums=TextColumn.joined([p.albums for p in parts]),
        fingerprints=[f for p in parts for f in p.fingerprints],
    )


async def read_request(config: Config, text: str, use_llm: bool = True) -> Interpretation:
    """An instant-playlist sentence read by the configured LLM when there is one and the
    caller wants it, else (or on any LLM failure) by the built-in reader."""
    from index.instant import interpret

    if not (use_llm and config.llm_provider):
        return interpret(text)
    from musegate.llm_reading import interpret_with_llm

    return await interpret_with_llm(
        text, config.llm_provider, config.llm_url, config.llm_model,  # type: ignore[arg-type]
        api_key=config.llm_api_key or None,
    )

