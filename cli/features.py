"""The playlist-feature commands: similar, path, alchemy, cluster, instant, fingerprint, serve.

Each loads the library once (catalogue + index, the same snapshot the server
uses), runs one pure function from ``index/``, prints the songs, and with
``--export NAME`` saves them as a playlist through the library source.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from analysis.store import LibraryStore, TrackRecord
from index.results import Match
from musegate.config import Config
from musegate.library import (
    TrackNotFound,
    adapter_for,
    close_adapter,
    describe_track,
    read_request,
    resolve_track,
    track_json,
)
from musegate.services import LibraryService, LibrarySnapshot, unique_ids


class CommandError(Exception):
    """A user mistake or an impossible request; printed without a traceback."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


Runner = Callable[[LibraryStore, LibraryService], Awaitable[int]]


async def _with_service(config: Config, fn: Runner) -> int:
    store = await LibraryStore.open(config.db_path)
    try:
        service = LibraryService(store, config)
        await service.refresh(force=True)
        if not len(service.snapshot.catalogue):
            raise CommandError("nothing is analysed yet; run `musegate analyze` first")
        return await fn(store, service)
    finally:
        await store.close()


async def _analysed_id(store: LibraryStore, snap: LibrarySnapshot, query: str) -> int:
    track = await resolve_track(store, query)
    if track.id is None or not snap.catalogue.has(track.id):
        raise TrackNotFound(f"{describe_track(track)} has not been analysed yet; "
                            "run `musegate analyze` first")
    return track.id


def _mpa(config: Config, args: argparse.Namespace) -> int:
    value = getattr(args, "max_per_artist", None)
    return config.max_per_artist if value is None else max(value, 0)


def _hide(config: Config, args: argparse.Namespace) -> bool:
    """--show-duplicates overrides the configured hide_duplicates for one command."""
    return config.hide_duplicates and not getattr(args, "show_duplicates", False)


async def _emit(
    store: LibraryStore,
    config: Config,
    args: argparse.Namespace,
    heading: str,
    ids: Sequence[int],
    scores: Sequence[float] | None = None,
    score_name: str = "similarity",
    extra: dict[str, Any] | None = None,
    list_key: str = "tracks",
) -> int:
    """Print the result (text or --json) and export it when --export NAME was given."""
    records = await store.tracks_by_ids(list(ids))
    tracks = [records[i] for i in ids if i in records]
    location = None
    if getattr(args, "export", None):
        location = await export_playlist(config, args.export, tracks)
    if args.json:
        out: dict[str, Any] = dict(extra or {})
        out[list_key] = [
            {"id": t.id, "title": t.title, "artist": t.artist, "album": t.album, "path": t.path,
             **({score_name: round(float(scores[k]), 4)} if scores is not None else {})}
            for k, t in enumerate(tracks)
        ]
        if location:
            out["exported"] = location
        print(json.dumps(out, indent=2))
        return 0
    print(heading)
    for rank, track in enumerate(tracks, 1):
        score = f"{scores[rank - 1]:.3f}  " if scores is not None else ""
        print(f"  {rank:2}. {score}{describe_track(track)}")
    if location:
        print(f"exported {len(tracks)} tracks to {location}")
    return 0


async def export_playlist(config: Config, name: str, tracks: list[TrackRecord]) -> str:
    from adapters.base import PlaylistWriter

    adapter = adapter_for(config)
    try:
        if adapter is None or not isinstance(adapter, PlaylistWriter):
            raise CommandError("cannot export: no library source is configured (library_path, "
                               "or source and upstream_url)")
        return await adapter.write_playlist(name, tracks)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    finally:
        await close_adapter(adapter)


def _check_n(n: int, what: str = "-n") -> None:
    if n < 1:
        raise CommandError(f"{what} must be at least 1", code=2)


def _mood(values: Sequence[str] | None) -> dict[str, float] | None:
    if not values:
        return None
    mood: dict[str, float] = {}
    for item in values:
        key, sep, value = item.rpartition("=")
        try:
            mood[key.strip()] = float(value)
        except ValueError:
            key = ""
        if not sep or not key.strip():
            raise CommandError(f"--mood takes TAG=VALUE such as sad=0.7, not {item!r}", code=2)
    return mood


def _matches(matches: Sequence[Match]) -> tuple[list[int], list[float]]:
    return [m.track_id for m in matches], [m.similarity for m in matches]


async def cmd_similar(config: Config, args: argparse.Namespace) -> int:
    from index.similar import similar_tracks

    _check_n(args.n)
    if not (args.track or args.album or args.artist):
        raise CommandError("give one or more tracks, --album or --artist", code=2)
    mood = _mood(args.mood)

    async def run(store: LibraryStore, service: LibraryService) -> int:
        snap = service.snapshot
        seeds = [await _analysed_id(store, snap, q) for q in args.track]
        if args.album:
            found = snap.ids_of_album(args.album)
            if not found:
                raise CommandError(f"no analysed tracks on an album called {args.album!r}")
            seeds += found
        if args.artist:
            found = snap.ids_of_artist(args.artist)
            if not found:
                raise CommandError(f"no analysed tracks by an artist called {args.artist!r}")
            seeds += found
        seeds = unique_ids(seeds)
        try:
            matches = await service.run(similar_tracks, seeds, n=args.n,
                                        max_per_artist=_mpa(config, args), mood=mood,
                                        hide_duplicates=_hide(config, args))
        except ValueError as exc:
            raise CommandError(str(exc), code=2) from None
        seed_records = await store.tracks_by_ids(seeds)
        names = [describe_track(seed_records[s]) for s in seeds if s in seed_records]
        heading = "Similar to " + ("; ".join(names) if len(names) <= 3
                                   else f"{len(names)} seed tracks") + ":"
        ids, sims = _matches(matches)
        seed_json = [track_json(seed_records[s]) for s in seeds if s in seed_records]
        # "seed" and "similar" keep the shape `similar --json` had before several seeds existed
        return await _emit(store, config, args, heading, ids, sims,
                           extra={"seed": seed_json[0], "seeds": seed_json}, list_key="similar")

    return await _with_service(config, run)


async def cmd_path(config: Config, args: argparse.Namespace) -> int:
    from index.path import song_path

    if args.n < 2:
        raise CommandError("-n must be at least 2 (the two ends)", code=2)

    async def run(store: LibraryStore, service: LibraryService) -> int:
        snap = service.snapshot
        start = await _analysed_id(store, snap, args.start)
        end = await _analysed_id(store, snap, args.end)
        via = [await _analysed_id(store, snap, v) for v in args.via]
        try:
            result = await service.run(song_path, start, end, length=args.n, waypoints=via,
                                       max_per_artist=_mpa(config, args),
                                       hide_duplicates=_hide(config, args))
        except ValueError as exc:
            raise CommandError(str(exc), code=2) from None
        heading = (f"Path of {len(result.steps)} songs "
                   f"(largest step {result.max_jump:.3f}, mean {result.mean_jump:.3f}):")
        return await _emit(
            store, config, args, heading,
            [s.track_id for s in result.steps], [s.distance for s in result.steps],
            score_name="distance",
            extra={"max_jump": result.max_jump, "mean_jump": result.mean_jump},
        )

    return await _with_service(config, run)


async def _ingredient(store: LibraryStore, snap: LibrarySnapshot, text: str) -> Any:
    from index.alchemy import Ingredient

    kind, sep, value = text.partition(":")
    if sep and kind in ("song", "artist", "tag"):
        if kind == "song":
            return Ingredient("song", await _analysed_id(store, snap, value))
        return Ingredient(kind, value.strip())  # type: ignore[arg-type]
    return Ingredient("song", await _analysed_id(store, snap, text))


async def cmd_alchemy(config: Config, args: argparse.Namespace) -> int:
    from index.alchemy import alchemy

    _check_n(args.n)
    if not args.add:
        raise CommandError("give at least one --add", code=2)
    if args.temperature < 0:
        raise CommandError("--temperature must be 0 or more", code=2)

    async def run(store: LibraryStore, service: LibraryService) -> int:
        snap = service.snapshot
        add = [await _ingredient(store, snap, a) for a in args.add]
        subtract = [await _ingredient(store, snap, s) for s in args.subtract]
        try:
            result = await service.run(
                alchemy, add, subtract, n=args.n, min_subtract_distance=args.min_distance,
                temperature=args.temperature, seed=args.seed, max_per_artist=_mpa(config, args),
                hide_duplicates=_hide(config, args),
            )
        except ValueError as exc:
            raise CommandError(str(exc), code=2) from None
        label = " + ".join(i.label for i in add) + "".join(f" - {i.label}" for i in subtract)
        ids, sims = _matches(result.matches)
        return await _emit(store, config, args, f"Alchemy {label}:", ids, sims,
                           extra={"projection": result.projection})

    return await _with_service(config, run)


async def cmd_cluster(config: Config, args: argparse.Namespace) -> int:
    import asyncio

    from index.clustering import cluster_playlists

    _check_n(args.playlists, "--playlists")

    async def run(store: LibraryStore, service: LibraryService) -> int:
        cat = service.snapshot.catalogue
        show = not args.json and sys.stderr.isatty()

        def progress(fraction: float, message: str) -> None:
            if show:
                print(f"\r{fraction:4.0%} {message[:60]:60}", end="", file=sys.stderr, flush=True)

        try:
            result = await asyncio.to_thread(
                cluster_playlists, cat, n_playlists=args.playlists, trials=args.trials,
                max_songs=args.max_songs, seed=args.seed,
                max_per_artist=config.max_per_artist, progress=progress,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        finally:
            if show:
                print(file=sys.stderr)
        records = await store.tracks_by_ids([t for pl in result.playlists for t in pl.track_ids])
        exported: dict[str, str] = {}
        if args.export:
            for pl in result.playlists:
                exported[pl.name] = await export_playlist(
                    config, pl.name, [records[t] for t in pl.track_ids if t in records])
        if args.json:
            print(json.dumps({
                "algorithm": result.algorithm, "params": result.params,
                "silhouette": result.silhouette, "score": result.score,
                "playlists": [{"name": pl.name, "tempo": pl.tempo, "energy": pl.energy,
                               "tags": [[t, s] for t, s in pl.tags], "track_ids": pl.track_ids,
                               **({"exported": exported[pl.name]} if pl.name in exported else {})}
                              for pl in result.playlists],
            }, indent=2))
            return 0
        print(f"{len(result.playlists)} playlists from {result.algorithm} {result.params} "
              f"(silhouette {result.silhouette:.3f})")
        for pl in result.playlists:
            print(f"\n{pl.name}  ({len(pl.track_ids)} songs, {pl.tempo:.0f} bpm, "
                  f"energy {pl.energy:.2f})")
            for t in pl.track_ids[:5]:
                if t in records:
                    print(f"    {describe_track(records[t])}")
            if len(pl.track_ids) > 5:
                print(f"    ... and {len(pl.track_ids) - 5} more")
            if pl.name in exported:
                print(f"    exported to {exported[pl.name]}")
        return 0

    return await _with_service(config, run)


async def cmd_instant(config: Config, args: argparse.Namespace) -> int:
    from index.instant import constraints_to_json, instant_playlist

    _check_n(args.n)

    async def run(store: LibraryStore, service: LibraryService) -> int:
        reading = await read_request(config, args.text, use_llm=not args.no_llm)
        c = reading.constraints
        mpa = _mpa(config, args)

        def play(cat: Any, index: Any) -> list[Match]:
            return instant_playlist(cat, c, n=args.n, max_per_artist=mpa,
                                    hide_duplicates=_hide(config, args))

        matches = await service.run(play)
        ids, scores = _matches(matches)
        heading = "Read as (" + reading.source + "):\n" + "\n".join(
            f"  - {line}" for line in reading.explanation) + "\nPlaylist:"
        return await _emit(store, config, args, heading, ids, scores, score_name="score",
                           extra={"interpretation": {"source": reading.source,
                                                     "explanation": reading.explanation,
                                                     "constraints": constraints_to_json(c)}})

    return await _with_service(config, run)


async def cmd_fingerprint(config: Config, args: argparse.Namespace) -> int:
    from adapters.base import HistorySource, NoListeningHistory
    from index.fingerprint import Play, sonic_fingerprint

    _check_n(args.n)
    adapter = adapter_for(config)
    try:
        if adapter is None or not isinstance(adapter, HistorySource):
            raise CommandError("no library source with listening history is configured; the "
                               "sonic fingerprint needs play counts from a media server")
        history = await adapter.listening_history(args.user)
    except NoListeningHistory as exc:
        raise CommandError(str(exc)) from None
    finally:
        await close_adapter(adapter)

    async def run(store: LibraryStore, service: LibraryService) -> int:
        snap = service.snapshot
        plays = [Play(snap.by_upstream[h.upstream_id], h.play_count, h.last_played)
                 for h in history if h.upstream_id in snap.by_upstream]
        try:
            matches = await service.run(sonic_fingerprint, plays, n=args.n, now=time.time(),
                                        max_per_artist=_mpa(config, args),
                                        hide_duplicates=_hide(config, args))
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        ids, sims = _matches(matches)
        return await _emit(store, config, args, "Your sonic fingerprint:", ids, sims)

    return await _with_service(config, run)


async def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from gateway.app import serve

    await serve(config)
    return 0
