"""``musegate demo``: the main job end to end on embedded defaults, with no music needed."""

from __future__ import annotations

import time
from pathlib import Path

import soundfile as sf
from mutagen.flac import FLAC
from mutagen.oggvorbis import OggVorbis

from musegate.config import Config
from musegate.demosynth import SR, STYLES, render_track

TRACKS_PER_STYLE = 4
DEMO_LIBRARY_NAME = "musegate demo library (generated audio)"


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


async def run_demo(config: Config, directory: str) -> int:
    from adapters.folder import FolderAdapter
    from analysis.store import LibraryStore
    from musegate import library

    base = Path(directory).resolve()
    lib_root = base / DEMO_LIBRARY_NAME
    print(f"1/3 generating the demo library in {lib_root} …")
    started = time.monotonic()
    generate_demo_library(lib_root)
    print(f"    {len(STYLES) * TRACKS_PER_STYLE} tracks in {len(STYLES)} styles "
          f"({time.monotonic() - started:.1f} s)")

    config = config.replace(data_dir=str(base / "data"), library_path=str(lib_root))
    store = await LibraryStore.open(config.db_path)
    try:
        sync = await library.scan(store, FolderAdapter(lib_root))
        print(f"2/3 analysing ({sync.added} new tracks, mode {config.analysis_mode}, "
              f"{config.workers} workers) …")
        report = await library.analyse(store, config)
        print(f"    {report.analysed} analysed, {report.failed} failed in {report.seconds:.1f} s")

        print("3/3 similar songs (by sound only; the genre tag is shown to check by):")
        hits = total = 0
        for style in STYLES:
            seed = (await store.find_tracks(f"{style.name} 1", limit=1))[0]
            result = await library.similar(store, config, seed, 3)
            print(f"  {seed.title}  [{seed.genre}]")
            for track, sim in result.neighbours:
                print(f"     {sim:.3f}  {track.title}  [{track.genre}]")
                hits += track.genre == seed.genre
                total += 1
        print(f"  {hits} of {total} neighbours share the seed's style.")
        print(f"\nTry: .venv/bin/musegate --data-dir {base / 'data'} similar 'techno 2'")
        return 0
    finally:
        await store.close()
