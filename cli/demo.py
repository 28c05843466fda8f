"""``musegate demo``: the main job end to end on embedded defaults, with no music needed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import soundfile as sf
from mutagen.flac import FLAC
from mutagen.oggvorbis import OggVorbis

from musegate.config import Config
from musegate.demosynth import SR, STYLES, render_track

TRACKS_PER_STYLE = 4
DEMO_LIBRARY_NAME = "musegate demo library (generated audio)"
DEMO_USER = "demo"
DEMO_PASSWORD = "demo"


def generate_demo_library(root: Path, tracks_per_style: int = TRACKS_PER_STYLE) -> list[Path]:
    """Write the demo tracks (FLAC, every fourth one OGG) with tags; existing files are kept."""
    written: list[Path] = []
    for style in STYLES:
        folder = root / style.genre
        folder.mkdir(parents=True, exist_ok=True)
        for variant in range(tracks_per_style):
            ogg = variant == tracks_per_style - 1
            path = folder / f"{variant + 1:02d} {style.name}.{'ogg' if ogg else 'flac'}"
            written.append(path)
            if path.exists():
                continue
            audio, tags = render_track(style, variant)
            tmp = path.with_name(path.name + ".part")
            sf.write(tmp, audio, SR, format="OGG" if ogg else "FLAC",
                     subtype="VORBIS" if ogg else "PCM_16")
            meta = OggVorbis(tmp) if ogg else FLAC(tmp)
            for key, value in tags.items():
                meta[key] = value
            meta.save()
            tmp.replace(path)
    return written


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for_library_job(app: Any, timeout: float = 900.0) -> dict[str, Any]:
    from gateway import keys

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        state = app[keys.SCHEDULER].state
        if state.message != last:
            print(f"    {state.status}: {state.message}", flush=True)
            last = state.message
        if state.status in ("done", "failed") and state.finished:
            return state.to_json()
        await asyncio.sleep(0.5)
    raise TimeoutError("the demo library was not analysed in time")


def _similar_through_musegate(port: int, seeds: list[tuple[str, str]]) -> tuple[int, int]:
    """Ask musegate with py-sonic, exactly as a Subsonic app would; returns (same style, total)."""
    import libsonic

    conn = libsonic.Connection("http://127.0.0.1", DEMO_USER, DEMO_PASSWORD, port=port,
                               legacyAuth=True, appName="musegate-demo")
    hits = total = 0
    for song_id, genre in seeds:
        seed = conn.getSong(song_id)["song"]
        answer = conn.getSimilarSongs2(song_id, count=3)
        songs = answer.get("similarSongs2", {}).get("song", [])
        print(f"  getSimilarSongs2 {seed['title']}  [{genre}]")
        for song in songs:
            same = song.get("genre") == genre
            hits += same
            total += 1
            print(f"     {song['title']}  [{song.get('genre')}]")
    return hits, total


async def run_demo(config: Config, directory: str, wait: bool | None = None) -> int:
    """Demo library → real Subsonic server (supysonic) → musegate in front → a real client."""
    from aiohttp import web

    from analysis.store import LibraryStore
    from gateway import keys
    from gateway.access_log import RedactingAccessLogger
    from gateway.app import create_app
    from musegate.supysonic_runner import Supysonic

    base = Path(directory).resolve()
    lib_root = base / DEMO_LIBRARY_NAME
    print(f"1/4 generating the demo library in {lib_root} …", flush=True)
    started = time.monotonic()
    generate_demo_library(lib_root)
    print(f"    {len(STYLES) * TRACKS_PER_STYLE} tracks in {len(STYLES)} styles "
          f"({time.monotonic() - started:.1f} s)")

    print("2/4 starting a Subsonic server (supysonic) on the demo library …", flush=True)
    async with Supysonic.start(base / "supysonic", lib_root, users={DEMO_USER: DEMO_PASSWORD},
                               admins=(DEMO_USER,)) as server:
        print(f"    {server.url}/rest  (user {DEMO_USER!r}, password {DEMO_PASSWORD!r})")
        config = config.replace(
            data_dir=str(base / "data"), source="subsonic", upstream_url=server.url,
            upstream_user=DEMO_USER, upstream_password=DEMO_PASSWORD, library_path="",
            path_map=f"={lib_root}", host="127.0.0.1", port=config.port or _free_port(),
        )
        app = create_app(config, schedule=True)
        runner = web.AppRunner(app, access_log_class=RedactingAccessLogger)
        await runner.setup()
        port = config.port
        try:
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
        except OSError:
            port = _free_port()
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
        try:
            print(f"3/4 musegate in front of it on http://127.0.0.1:{port}: scanning and "
                  f"analysing ({config.analysis_mode} mode, {config.workers} workers) …",
                  flush=True)
            state = await _wait_for_library_job(app)
            if state["status"] != "done":
                print(f"    the library job failed: {state.get('error')}")
                return 1
            store: LibraryStore = app[keys.STORE]
            seeds = []
            for style in STYLES:
                track = (await store.find_tracks(f"{style.name} 1", limit=1))[0]
                seeds.append((track.upstream_id, style.genre))
            print("4/4 similar songs asked through musegate by a Subsonic client (py-sonic):")
            hits, total = await asyncio.to_thread(_similar_through_musegate, port, seeds)
            print(f"  {hits} of {total} similar songs share the seed's style.")
            print(
                "\nPoint a Subsonic app (Symfonium, Feishin, DSub, Supersonic…) at\n"
                f"    http://127.0.0.1:{port}   user {DEMO_USER!r}  password {DEMO_PASSWORD!r}\n"
                "and use its instant mix / song radio / similar songs.\n"
                f"\nOpen the web UI at\n    http://127.0.0.1:{port}{config.base_path}/\n"
                f"and log in as {DEMO_USER!r} with password {DEMO_PASSWORD!r} (the demo Subsonic "
                "server's own account)."
            )
            if wait is None:
                wait = sys.stdin.isatty()
            if wait:
                print("Press Ctrl-C to stop the demo servers.", flush=True)
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            return 0
        finally:
            await runner.cleanup()
