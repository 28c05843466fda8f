"""A library store filled with synthetic analyses, for API and CLI tests (no audio, no model).

Five "styles" of twelve tracks each; every style has its own embedding
cluster, three artists, one album per artist, a few characteristic tags and
its own tempo/energy, so similar songs, paths, clustering and instant
playlists all have structure to find.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from analysis.labels import MSD_LABELS
from analysis.store import LibraryStore, TrackRecord
from analysis.types import TrackAnalysis
from musegate.config import Config, load_config
from musegate.library import analyzer_settings


def synthetic_analysis(embedding: np.ndarray, version: str, **fields: object) -> TrackAnalysis:
    """An analysis as the analyzer would store it, for tests and benchmarks that need an
    analysed library fast: neutral features unless ``fields`` say otherwise."""
    values: dict[str, object] = dict(
        tags=np.zeros(len(MSD_LABELS), np.float32), tempo=100.0, key="A", scale="minor",
        key_strength=0.5, energy=0.5, loudness=-12.0, duration=30.0, patches=1,
    )
    values.update(fields)
    return TrackAnalysis(embedding=np.asarray(embedding, np.float32), version=version,
                         **values)  # type: ignore[arg-type]


STYLES = (
    ("Piano", ("beautiful", "sad", "Mellow"), 70.0, 0.2, "minor"),
    ("Techno", ("electronic", "dance", "House"), 130.0, 0.9, "minor"),
    ("Folk", ("folk", "acoustic", "guitar"), 100.0, 0.4, "major"),
    ("Metal", ("metal", "heavy metal", "hard rock"), 160.0, 0.95, "minor"),
    ("Jazz", ("jazz", "instrumental", "chill"), 90.0, 0.35, "major"),
)
PER_STYLE = 12
ARTISTS_PER_STYLE = 3


@dataclass
class FilledLibrary:
    config: Config
    source: str
    root: Path
    ids: dict[str, int]  # upstream id -> musegate id
    style_of: dict[int, str]  # musegate id -> style name
    artist_of: dict[int, str]


def make_config(tmp_path: Path, **overrides: object) -> Config:
    root = tmp_path / "music"
    root.mkdir(parents=True, exist_ok=True)
    values = {"data_dir": str(tmp_path / "data"), "library_path": str(root),
              "playlist_dir": str(tmp_path / "music" / "Playlists")}
    values.update({k: v for k, v in overrides.items()})
    return load_config(None, env={}, overrides=values)


async def fill_store(config: Config, seed: int = 0) -> FilledLibrary:
    rng = np.random.default_rng(seed)
    root = Path(config.library_path)
    source = f"folder:{root.resolve()}"
    version = analyzer_settings(config).version
    centres = rng.standard_normal((len(STYLES), 200))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    records: list[TrackRecord] = []
    plan: list[tuple[str, int, int]] = []
    for s, (style, _tags, _tempo, _energy, _scale) in enumerate(STYLES):
        for i in range(PER_STYLE):
            a = i % ARTISTS_PER_STYLE
            artist = f"{style} Artist {a + 1}"
            rel = f"{style}/{artist}/{i + 1:02d} {style} song {i + 1}.flac"
            records.append(TrackRecord(
                source=source, upstream_id=rel, path=str(root / rel), size=1000 + i, mtime=1.0,
                title=f"{style} song {i + 1}", artist=artist, album=f"{artist} album",
                duration=180.0 + i,
            ))
            plan.append((style, s, i))
    store = await LibraryStore.open(config.db_path)
    try:
        await store.sync_source(source, records)
        known = await store.tracks_of_source(source)
        analyses = []
        ids: dict[str, int] = {}
        style_of: dict[int, str] = {}
        artist_of: dict[int, str] = {}
        for rec, (style, s, _i) in zip(records, plan, strict=True):
            track = known[rec.upstream_id]
            assert track.id is not None
            ids[rec.upstream_id] = track.id
            style_of[track.id] = style
            artist_of[track.id] = rec.artist or ""
            _name, tag_names, tempo, energy, scale = STYLES[s]
            tags = rng.uniform(0.0, 0.1, len(MSD_LABELS))
            for t in tag_names:
                tags[MSD_LABELS.index(t)] = rng.uniform(0.6, 0.9)
            embedding = centres[s] + rng.standard_normal(200) * (0.5 / np.sqrt(200))
            analyses.append((track.id, TrackAnalysis(
                embedding=embedding.astype(np.float32), tags=tags.astype(np.float32),
                tempo=tempo + rng.uniform(-3, 3), key="A", scale=scale, key_strength=0.7,
                energy=float(np.clip(energy + rng.uniform(-0.05, 0.05), 0, 1)),
                loudness=-12.0, duration=rec.duration or 180.0, patches=4, version=version,
            )))
        await store.write_results(analyses)
    finally:
        await store.close()
    return FilledLibrary(config, source, root, ids, style_of, artist_of)


async def add_track(config: Config, lib: FilledLibrary, style_index: int, title: str) -> int:
    """One more analysed track (to test reloading)."""
    version = analyzer_settings(config).version
    store = await LibraryStore.open(config.db_path)
    try:
        existing = await store.tracks_of_source(lib.source)
        rel = f"new/{title}.flac"
        rec = TrackRecord(source=lib.source, upstream_id=rel, path=str(lib.root / rel), size=1,
                          mtime=1.0, title=title, artist="New Artist", album="New album",
                          duration=200.0)
        await store.sync_source(lib.source, [*existing.values(), rec])
        track = (await store.tracks_of_source(lib.source))[rel]
        rng = np.random.default_rng(99)
        ids, vectors = await store.embeddings(version)
        style_ids = [i for i, s in lib.style_of.items() if s == STYLES[style_index][0]]
        centre = vectors[np.searchsorted(ids, style_ids)].mean(axis=0)
        await store.write_results([(track.id or 0, synthetic_analysis(
            centre + rng.standard_normal(200) * 0.001, version, key="C", scale="major",
            loudness=-10.0, duration=200.0, patches=4))])
        return track.id or 0
    finally:
        await store.close()
