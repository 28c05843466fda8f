"""Builds the held-out music set: game soundtracks the dev corpus does not use.

    .venv/bin/python bench/heldout_corpus.py      # prints the folder when done

Similarity is tuned on the dev corpus (three Debian soundtracks, see
shared/corpus/build-dev-corpus.sh); a figure measured only there says little
about music nobody tuned on. This set is 6 tracks from each of ~25 other game
soundtracks packaged in Debian (free licences: see each package's copyright
file), labelled by package. It is split once, here, before anything was
measured on it:

* ``tuning``: the soundtracks any choice of transform may be compared on,
  with leave-one-soundtrack-out figures;
* ``final``: the soundtracks kept aside and scored once, at the end, with the
  choice already fixed (docs/benchmarks.md records that run).

Result in $MUSEGATE_HELDOUT (default ~/.cache/musegate/heldout):
  ogg/<package>/<name>.ogg  every track as Ogg Vorbis (tracker modules, Opus, MP3
                            and WAV are rendered with ffmpeg; Ogg files are copied)
  manifest.tsv              path, package, title, duration_s, split
Idempotent: soundtracks already built are kept; sources added to SOURCES later are
built on the next run (set MUSEGATE_DEBS to a folder of already downloaded .debs). Needs apt-get download, dpkg-deb, ffmpeg.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: package -> folder (inside the package) holding its music. Chosen by reading the
#: package listings: folders that hold the game's music, not its sound effects.
SOURCES: dict[str, str] = {
    "a7xpg-data": "usr/share/games/a7xpg/sounds",
    "blobwars-data": "usr/share/games/blobwars/music",
    "drascula-music": "usr/share/scummvm/drascula/audio",
    "extremetuxracer-data": "usr/share/games/etr/music",
    "fillets-ng-data": "usr/share/games/fillets-ng/music",
    "gunroar-data": "usr/share/games/gunroar/sounds/musics",
    "hyperrogue-music": "usr/share/hyperrogue/music",
    "lincity-ng-data": "usr/share/games/lincity-ng/music",
    "lugaru-data": "usr/share/games/lugaru/Sounds",
    "mu-cade-data": "usr/share/games/mu-cade/sounds/musics",
    "nexuiz-music": "usr/share/games/nexuiz/data/music.pk3",
    "openclonk-data": "usr/share/games/openclonk/Music.ocg",
    "parsec47-data": "usr/share/games/parsec47/sounds",
    "pingus-data": "usr/share/games/pingus/data/music",
    "scorched3d-data": "usr/share/games/scorched3d/data/globalmods/none/data/music",
    "singularity-music": "usr/share/games/singularity/music",
    "titanion-data": "usr/share/games/titanion/sounds/musics",
    "torus-trooper-data": "usr/share/games/torus-trooper/sounds/musics",
    "tumiki-fighters-data": "usr/share/games/tumiki-fighters/sounds",
    "warmux-data": "usr/share/games/warmux/music",
    "warzone2100-music": "usr/share/games/warzone2100/music",
    "xmoto-data": "usr/share/games/xmoto/Textures/Musics",
    "caveexpress-data": "usr/share/games/caveexpress/sounds",
    "frozen-bubble-data": "usr/share/games/frozen-bubble",
    "supertux-data": "usr/share/games/supertux2/music",
    "megaglest-data": "usr/share/games/megaglest/techs/megapack/factions",
    # added for issue 11 target 6 (the first 26 gave 15 soundtracks of 6 tracks)
    "btanks-data": "usr/share/games/btanks/data/tunes",
    "flare-game": "usr/share/games/flare/mods/fantasycore/music",
    "freecol": "usr/share/games/freecol/default/resources/music/default",
    "freedroidrpg-data": "usr/share/freedroidrpg/data/sound/music",
    "naev-data": "usr/share/naev/dat/snd/music",
    "supertuxkart-data": "usr/share/games/supertuxkart/data/music",
    "tecnoballz-data": "usr/share/games/tecnoballz/musics",
    "ufoai-music": "usr/share/games/ufoai/base/0music.pk3",
}
#: The packages added later; their own final part is every third in name order.
ADDED = ("btanks-data", "flare-game", "freecol", "freedroidrpg-data", "naev-data",
         "supertuxkart-data", "tecnoballz-data", "ufoai-music")
#: Packages whose folder mixes music with other sounds: only files in a ``music`` folder.
MUSIC_FOLDERS_ONLY = frozenset({"megaglest-data"})

#: Kept aside before any measurement (every fourth of the first sources in name order,
#: then every third of the added ones, so the choice is mechanical, not picked by
#: looking at results). Written out, because adding sources must not move it.
FINAL = frozenset({"drascula-music", "megaglest-data", "supertux-data", "warmux-data",
                   *sorted(ADDED)[2::3]})

PER_SOUNDTRACK = 6
MIN_SECONDS = 30.0
AUDIO = {".ogg", ".oga", ".mp3", ".opus", ".flac", ".wav", ".it", ".xm", ".s3m", ".mod", ""}


def out_dir() -> Path:
    env = os.environ.get("MUSEGATE_HELDOUT")
    return Path(env) if env else Path.home() / ".cache" / "musegate" / "heldout"


def duration(path: Path) -> float:
    """Seconds of audio ffprobe reports, 0 for anything that is not audio."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "format=duration", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True,
    )
    try:
        return float(out.stdout.strip().splitlines()[0])
    except (ValueError, IndexError):
        return 0.0


def candidates(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    return [p for p in files if p.suffix.lower() in AUDIO]


def pick(tracks: list[tuple[Path, float]], n: int) -> list[tuple[Path, float]]:
    """``n`` tracks spread evenly over the name-sorted list (no cherry-picking)."""
    if len(tracks) <= n:
        return tracks
    step = len(tracks) / n
    return [tracks[int(i * step + step / 2)] for i in range(n)]


def _download(pkg: str, debs: Path) -> Path:
    """The package's .deb: from $MUSEGATE_DEBS when it is there, else apt-get download."""
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True, capture_output=True)
        found = sorted(debs.glob(f"{pkg}_*.deb"))
    return found[-1]


def _package_rows(pkg: str, inner: str, deb: Path, work: Path, out: Path) -> list[str]:
    """The manifest rows of one soundtrack (its tracks written under ``out``), [] if skipped."""
    tree = work / f"x-{pkg}"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    root = tree / inner
    if root.suffix == ".pk3" and root.is_file():  # a zip archive (Quake-engine games)
        unzipped = work / f"z-{pkg}"
        with zipfile.ZipFile(root) as z:
            z.extractall(unzipped)
        root = unzipped
    if not root.exists():
        print(f"  {pkg}: {inner} not found, skipped", file=sys.stderr)
        return []
    files = candidates(root)
    if pkg in MUSIC_FOLDERS_ONLY:
        files = [p for p in files if p.parent.name == "music"]
    # faster renditions of another track of the same game (SuperTuxKart's "_fast", "_f")
    files = [p for p in files if not p.stem.endswith(("_fast", "_f"))]
    found = [(p, duration(p)) for p in files]
    music = [(p, d) for p, d in found if d >= MIN_SECONDS]
    if len(music) < PER_SOUNDTRACK:
        print(f"  {pkg}: only {len(music)} tracks of {MIN_SECONDS:.0f} s or more, skipped",
              file=sys.stderr)
        return []
    (out / "ogg" / pkg).mkdir(parents=True, exist_ok=True)
    split = "final" if pkg in FINAL else "tuning"
    rows = []
    for src, secs in pick(music, PER_SOUNDTRACK):
        rel = src.relative_to(root) if src != root else Path(src.name)
        name = "_".join(rel.with_suffix("").parts)  # unique across sub-folders
        dest = out / "ogg" / pkg / f"{name}.ogg"
        if src.suffix.lower() == ".ogg":
            shutil.copyfile(src, dest)
        else:
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-vn",
                            "-codec:a", "libvorbis", "-q:a", "5", str(dest)], check=True)
            secs = duration(dest)
        rows.append(f"ogg/{pkg}/{dest.name}\t{pkg}\t{name}\t{secs:.1f}\t{split}")
    return rows


def build(out: Path) -> Path:
    """Adds every source not tried yet; soundtracks already in the manifest are kept as they
    are (their tracks and split never change once measured), skipped ones are remembered."""
    manifest = out / "manifest.tsv"
    lines = (manifest.read_text().splitlines() if manifest.exists()
             else ["path\tpackage\ttitle\tduration_s\tsplit"])
    skipped_file = out / "skipped.txt"
    skipped = set(skipped_file.read_text().split()) if skipped_file.exists() else set()
    if (out / ".complete").exists() and not skipped_file.exists():
        # built before skips were remembered: every source of that build was tried
        skipped = {p for p in SOURCES if p not in ADDED} - {ln.split("\t")[1] for ln in lines[1:]}
    have = {ln.split("\t")[1] for ln in lines[1:] if ln.strip()}
    todo = [p for p in SOURCES if p not in have and p not in skipped]
    if not todo:
        return out
    debs_env = os.environ.get("MUSEGATE_DEBS")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        debs = Path(debs_env) if debs_env else work / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        for pkg in todo:
            rows = _package_rows(pkg, SOURCES[pkg], _download(pkg, debs), work, out)
            if rows:
                lines += rows
            else:
                skipped.add(pkg)
            shutil.rmtree(work / f"x-{pkg}", ignore_errors=True)
            shutil.rmtree(work / f"z-{pkg}", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    manifest.write_text("\n".join(lines) + "\n")
    skipped_file.write_text("\n".join(sorted(skipped)) + "\n")
    (out / ".complete").touch()
    return out


def read_heldout(root: Path) -> list[tuple[Path, str, str]]:
    """(path, soundtrack, split) per track."""
    rows = (root / "manifest.tsv").read_text().splitlines()[1:]
    return [(root / c[0], c[1], c[4]) for c in (r.split("\t") for r in rows if r.strip())]


if __name__ == "__main__":
    print(build(out_dir()))
