"""The ``musegate`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from musegate.config import FIELDS, Config, ConfigError, describe, load_config

log = logging.getLogger("musegate")


def _result_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--export", metavar="NAME",
                   help="also save the result as playlist NAME (an M3U8 file for a music folder)")
    p.add_argument("--max-per-artist", type=int, help="songs per artist (default: max_per_artist)")
    p.add_argument("--show-duplicates", action="store_true",
                   help="also offer copies of one recording (default: hide_duplicates hides them)")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="musegate",
        description="Sonic similarity for self-hosted music: analyse a library, find similar songs.",
    )
    parser.add_argument("--config", help="configuration file (default ./musegate.toml)")
    parser.add_argument("--data-dir", help="where the database lives (overrides configuration)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("analyze", help="scan the library and analyse new or changed tracks")
    p.add_argument("path", nargs="?",
                   help="music folder (default: the configured source: library_path, or the "
                   "music server at upstream_url)")
    p.add_argument("--mode", choices=("sampled", "fast", "full"), help="patch selection")
    p.add_argument("--workers", type=int, help="analysis processes (default: cores)")
    p.add_argument("--limit", type=int, help="analyse at most this many tracks in this run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("status", help="library and analysis counts")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--failures", action="store_true", help="list failed tracks and reasons")

    p = sub.add_parser("show", help="features and top tags of one track")
    p.add_argument("track", help="a path, a track id, or words from title/artist/album")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("similar", help="tracks that sound most like one or more tracks, an album or an artist")
    p.add_argument("track", nargs="*", help="paths, track ids, or words from title/artist/album")
    p.add_argument("--album", help="seed with every analysed track of this album")
    p.add_argument("--artist", help="seed with every analysed track of this artist")
    p.add_argument("-n", type=int, default=10, help="how many (default 10)")
    p.add_argument("--mood", action="append", metavar="TAG=VALUE",
                   help="keep songs near this tag score (or energy/tempo), e.g. sad=0.7; repeatable")
    _result_flags(p)

    p = sub.add_parser("duplicates", help="groups of near-duplicate songs (the same recording "
                       "as another encode, cut, gain or with leading silence)")
    p.add_argument("track", nargs="?", help="only the group of this track (path, id or words)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("path", help="a smooth path of songs from track A to track B")
    p.add_argument("start", help="first track")
    p.add_argument("end", help="last track")
    p.add_argument("-n", type=int, default=25, help="songs in the path, both ends included (default 25)")
    p.add_argument("--via", action="append", default=[], metavar="TRACK",
                   help="a waypoint the path must pass (repeatable, in order)")
    _result_flags(p)

    p = sub.add_parser("alchemy", help="songs like the ADD ingredients and unlike the SUBTRACT ones")
    p.add_argument("--add", action="append", default=[], metavar="INGREDIENT",
                   help="TRACK, song:TRACK, artist:NAME or tag:NAME (repeatable)")
    p.add_argument("--subtract", action="append", default=[], metavar="INGREDIENT",
                   help="same forms as --add (repeatable)")
    p.add_argument("-n", type=int, default=20, help="how many (default 20)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="0 = plain nearest (default); higher = more varied picks")
    p.add_argument("--min-distance", type=float, default=0.2,
                   help="least cosine distance from the SUBTRACT centroid (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="random seed for temperature > 0")
    _result_flags(p)

    p = sub.add_parser("cluster", help="cluster the library into named playlists")
    p.add_argument("-n", "--playlists", type=int, default=10, help="how many playlists (default 10)")
    p.add_argument("--trials", type=int, default=16, help="parameter settings to try (default 16)")
    p.add_argument("--max-songs", type=int, default=100, help="songs per playlist at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--export", action="store_true",
                   help="also export every playlist (named as shown) through the library source")

    p = sub.add_parser("instant", help="a playlist from a sentence, e.g. 'sad piano around 70 bpm'")
    p.add_argument("text", help="what you want to hear")
    p.add_argument("-n", type=int, default=30, help="how many (default 30)")
    p.add_argument("--no-llm", action="store_true", help="use only the built-in interpreter")
    _result_flags(p)

    p = sub.add_parser("fingerprint", help="songs like what you play most (needs listening history)")
    p.add_argument("--user", help="whose history (media-server sources)")
    p.add_argument("-n", type=int, default=50, help="how many (default 50)")
    _result_flags(p)

    p = sub.add_parser("serve", help="run musegate's HTTP API (and later the proxy)")
    p.add_argument("--host", help="listen address (default: host setting)")
    p.add_argument("--port", type=int, help="listen port (default: port setting)")

    p = sub.add_parser(
        "health", help="exit 0 when the running server answers (for container healthchecks)")
    p.add_argument("--ready", action="store_true",
                   help="also need the store, the index and the music server (readiness)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing")

    p = sub.add_parser("config", help="print the effective configuration (secrets masked)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "demo",
        help="generate a demo library, serve it with a real Subsonic server, put musegate in "
        "front of it and ask for similar songs like an app would",
    )
    p.add_argument("--dir", default="demo-data", help="where the demo library and database go")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the demo servers running until Ctrl-C (default: when interactive)")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data_dir": getattr(args, "data_dir", None),
        "analysis_mode": getattr(args, "mode", None),
        "workers": getattr(args, "workers", None),
        "library_path": getattr(args, "path", None) if args.command == "analyze" else None,
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
    }


async def _with_store(config: Config, fn: Callable[[Any], Awaitable[int]]) -> int:
    from analysis.store import LibraryStore

    # A replica's configuration reads the writer's store and must never change it.
    store = await LibraryStore.open(config.db_path, read_only=config.role == "replica")
    try:
        return await fn(store)
    finally:
        await store.close()


def _progress_bar(enabled: bool) -> tuple[Callable[[Any], None], Callable[[], None]]:
    if not enabled:
        return (lambda report: None), (lambda: None)
    from tqdm import tqdm

    bar: dict[str, Any] = {}

    def update(report: Any) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=report.total, unit="track", smoothing=0.1, file=sys.stderr)
        b = bar["bar"]
        b.n = report.analysed + report.failed
        b.set_postfix(failed=report.failed, refresh=False)
        b.refresh()

    def close() -> None:
        if "bar" in bar:
            bar["bar"].close()

    return update, close


async def cmd_analyze(config: Config, args: argparse.Namespace) -> int:
    from musegate import library

    if args.path:  # a folder on the command line wins over a configured server
        config = config.replace(source="folder")
    adapter = library.adapter_for(config)
    if adapter is None:
        print("musegate analyze: give a music folder, or configure library_path or "
              "source and upstream_url", file=sys.stderr)
        return 2

    async def run(store: Any) -> int:
        from adapters.common import SourceError
        from analysis.analyzer import SourceDown

        try:
            sync = await library.scan(store, adapter)
        except SourceError as exc:  # the server's or folder's own words say it all
            print(f"musegate analyze: the library scan failed: {exc}", file=sys.stderr)
            return 1
        print(
            f"scanned {adapter.source}: {sync.added} new, {sync.changed} changed, "
            f"{sync.removed} removed, {sync.unchanged} unchanged"
        )
        update, close = _progress_bar(not args.no_progress and sys.stderr.isatty())
        try:
            report = await library.analyse(store, config, update, args.limit,
                                           **library.analyse_from(adapter))
        except SourceDown as exc:
            print(f"musegate analyze: {exc}", file=sys.stderr)
            return 1
        finally:
            close()
        print(
            f"analysed {report.analysed} tracks in {report.seconds:.1f} s "
            f"({report.tracks_per_second:.2f} tracks/s), {report.failed} failed"
        )
        for path, reason in report.failures[:20]:
            print(f"  failed: {path}: {reason}")
        return 0

    try:
        return await _with_store(config, run)
    finally:
        await library.close_adapter(adapter)


async def cmd_status(config: Config, args: argparse.Namespace) -> int:
    from analysis.model import model_version
    from musegate import library

    async def run(store: Any) -> int:
        settings = library.analyzer_settings(config)
        st = await store.status(settings.version, settings.max_attempts)
        data = {
            "database": str(config.db_path),
            "tracks": st.tracks,
            "analysed": st.analysed,
            "failed": st.failed,
            "pending": st.pending,
            "outdated": st.outdated,
            "model_version": model_version(),
            "analysis_version": settings.version,
            "schema_version": await store.schema_version(),
        }
        from musegate.scheduler import read_state

        job = read_state(config.data_dir)
        if job is not None:
            data["library_job"] = {k: job.get(k) for k in (
                "status", "message", "progress", "started", "finished", "next_run", "error")}
        failures = await store.failures() if args.failures else []
        if args.json:
            if args.failures:
                data["failures"] = [
                    {"path": t.path, "reason": r, "attempts": a} for t, r, a in failures
                ]
            print(json.dumps(data, indent=2))
        else:
            for key, value in data.items():
                if key == "library_job":
                    print(f"{'library job':17} {_describe_job(value)}")
                else:
                    print(f"{key:17} {value}")
            for track, reason, attempts in failures:
                print(f"  failed ({attempts}x): {track.path}: {reason}")
        return 0

    return await _with_store(config, run)


def _describe_job(job: dict[str, Any]) -> str:
    import time as _time

    def when(ts: float | None) -> str:
        return _time.strftime("%Y-%m-%d %H:%M", _time.localtime(ts)) if ts else "-"

    text = f"{job.get('status')}: {job.get('message') or ''}"
    if job.get("status") in ("scanning", "analysing"):
        text += f" ({100 * float(job.get('progress') or 0):.0f}%)"
    return text + f"; last finished {when(job.get('finished'))}, next {when(job.get('next_run'))}"


async def cmd_show(config: Config, args: argparse.Namespace) -> int:
    from musegate import library

    async def run(store: Any) -> int:
        track = await library.resolve_track(store, args.track)
        analysis = await store.get_analysis(track.id)
        if analysis is None:
            print(f"{library.describe_track(track)}: not analysed yet", file=sys.stderr)
            return 1
        feats = {k: v for k, v in analysis.features.items() if k != "tags"}
        tags = library.top_tags(analysis)
        if args.json:
            out = {
                "track": library.track_json(track),
                "version": analysis.version,
                "features": feats,
                "top_tags": dict(tags),
            }
            print(json.dumps(out, indent=2))
            return 0
        print(library.describe_track(track))
        print(f"  path       {track.path}")
        print(f"  tempo      {feats['tempo']:.1f} bpm")
        print(f"  key        {feats['key']} {feats['scale']} (strength {feats['key_strength']:.2f})")
        print(f"  energy     {feats['energy']:.2f}")
        print(f"  loudness   {feats['loudness']:.1f} dBFS")
        print(f"  duration   {feats['duration']:.1f} s ({feats['patches']} patches analysed)")
        print(f"  version    {analysis.version}")
        print("  top tags   " + ", ".join(f"{label} {score:.2f}" for label, score in tags))
        return 0

    return await _with_store(config, run)


def cmd_config(config: Config, args: argparse.Namespace) -> int:
    shown = describe(config)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    helps = {f.name: f.help for f in FIELDS}
    for key, value in shown.items():
        print(f"{key} = {json.dumps(value)}  # {helps[key]}")
    return 0


def cmd_health(config: Config, args: argparse.Namespace) -> int:
    from musegate.probe import check

    healthy, line = check(config, ready=args.ready)
    if not args.quiet:
        print(line, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        config = load_config(args.config, overrides=_overrides(args))
    except ConfigError as exc:
        print(f"musegate: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # CPU-feature probing noise
    if args.command == "config":
        return cmd_config(config, args)
    if args.command == "health":
        return cmd_health(config, args)
    if args.command == "demo":
        from cli.demo import run_demo

        try:
            return asyncio.run(run_demo(config, args.dir, args.wait))
        except KeyboardInterrupt:
            return 0
    if args.command == "analyze" and config.role == "replica":
        print("musegate: role = replica reads the writer's store and cannot analyse; run "
              "`musegate analyze` with the writer's configuration", file=sys.stderr)
        return 2
    if args.command == "serve":  # before the engine's imports allocate: musegate.heap
        from musegate.heap import map_large_blocks

        map_large_blocks()
    # The engine is imported only for the commands that use it (`health` must start fast).
    from analysis.store import StorageFullError
    from cli.duplicates import cmd_duplicates
    from cli.features import (
        CommandError,
        cmd_alchemy,
        cmd_cluster,
        cmd_fingerprint,
        cmd_instant,
        cmd_path,
        cmd_serve,
        cmd_similar,
    )
    from musegate.library import TrackNotFound

    commands = {
        "duplicates": cmd_duplicates,
        "analyze": cmd_analyze,
        "status": cmd_status,
        "show": cmd_show,
        "similar": cmd_similar,
        "path": cmd_path,
        "alchemy": cmd_alchemy,
        "cluster": cmd_cluster,
        "instant": cmd_instant,
        "fingerprint": cmd_fingerprint,
        "serve": cmd_serve,
    }
    try:
        return asyncio.run(commands[args.command](config, args))
    except CommandError as exc:
        print(f"musegate {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except (TrackNotFound, StorageFullError) as exc:
        print(f"musegate {args.command}: {exc}", file=sys.stderr)
        return 1
    except FileNotFoundError as exc:
        print(f"musegate {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: finished analyses are saved; run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
