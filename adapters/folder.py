"""A plain directory of audio files: the embedded default source and the test path.

Incremental by (path, size, mtime): files that did not change are not opened
again, so rescanning a large library costs one ``stat`` per file.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mutagen

from adapters.base import HistoryEntry, NoListeningHistory
from adapters.common import SourceError
from analysis.store import TrackRecord

log = logging.getLogger(__name__)


class FolderMissing(SourceError, FileNotFoundError):
    """The music folder is not there (an unmounted disk): the message says which."""

AUDIO_EXTENSIONS = frozenset(
    [".mp3", ".flac", ".ogg", ".oga", ".opus", ".wav", ".wave", ".m4a", ".mp4", ".aac", ".alac", ".wma", ".aif", ".aiff", ".wv", ".ape", ".mpc"]
)


def _first(tags: Any, *names: str) -> str | None:
    for name in names:
        try:
            values = tags.get(name) if tags is not None else None
        except (KeyError, ValueError):
            values = None
        if values:
            value = values[0] if isinstance(values, list) else values
            text = str(value).strip()
            if text:
                return text
    return None


def _year(text: str | None) -> int | None:
    if not text:
        return None
    digits = text.strip()[:4]
    return int(digits) if digits.isdigit() else None


def read_tags(path: Path) -> dict[str, Any]:
    """Title, artist, album, genre, year and duration from the file's tags (best effort)."""
    try:
        audio = mutagen.File(path, easy=True)
    except Exception as exc:  # mutagen raises many kinds for damaged headers
        log.debug("cannot read tags of %s: %s", path, exc)
        audio = None
    tags = getattr(audio, "tags", None)
    info = getattr(audio, "info", None)
    length = getattr(info, "length", None)
    return {
        "title": _first(tags, "title") or path.stem,
        "artist": _first(tags, "artist", "albumartist"),
        "album": _first(tags, "album"),
        "genre": _first(tags, "genre"),
        "year": _year(_first(tags, "date", "year", "originaldate")),
        "duration": float(length) if length else None,
    }


def scan_folder(
    root: Path, source: str, known: Mapping[str, TrackRecord]
) -> list[TrackRecord]:
    records: list[TrackRecord] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or Path(name).suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            path = Path(dirpath) / name
            try:
                st = path.stat()
            except OSError:
                continue  # vanished between listing and stat: it is not in the library
            rel = path.relative_to(root).as_posix()
            old = known.get(rel)
            if old is not None and (old.size, old.mtime) == (st.st_size, st.st_mtime):
                records.append(old)
                continue
            if not path.exists():
                continue
            records.append(
                TrackRecord(
                    source=source,
                    upstream_id=rel,
                    path=str(path),
                    size=st.st_size,
                    mtime=st.st_mtime,
                    raw={"relative_path": rel},
                    **read_tags(path),
                )
            )
    return records


_UNSAFE_NAME = re.compile(r'[\x00-\x1f/\\:*?"<>|]+')


def playlist_filename(name: str) -> str:
    """A file name for playlist ``name`` that cannot escape the playlist folder."""
    cleaned = _UNSAFE_NAME.sub(" ", name).strip().strip(".").strip()
    cleaned = " ".join(cleaned.split())[:120]
    if not cleaned:
        raise ValueError(f"playlist name {name!r} has no usable characters")
    return f"{cleaned}.m3u8"


def render_m3u8(tracks: list[TrackRecord], playlist_file: Path) -> str:
    """Extended M3U, UTF-8, paths relative to the playlist so the folder can move as a whole."""
    lines = ["#EXTM3U"]
    base = playlist_file.parent
    for t in tracks:
        if not t.path:
            continue  # a track without a local file cannot be played from an M3U
        seconds = int(round(t.duration)) if t.duration else -1
        label = " - ".join(p for p in (t.artist, t.title) if p) or Path(t.path).stem
        lines.append(f"#EXTINF:{seconds},{label}")
        try:
            entry = os.path.relpath(t.path, base)
        except ValueError:  # another drive on Windows: only an absolute path works
            entry = t.path
        lines.append(Path(entry).as_posix())
    return "\n".join(lines) + "\n"


class FolderAdapter:
    """Tracks are the audio files under ``root``; the upstream id is the relative path."""

    def __init__(
        self, root: str | os.PathLike[str], playlist_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.source = f"folder:{self.root}"
        self.playlist_dir = (
            Path(playlist_dir).expanduser().resolve() if playlist_dir else self.root / "Playlists"
        )

    async def write_playlist(self, name: str, tracks: list[TrackRecord]) -> str:
        """Write ``name``.m3u8 into the playlist folder (replacing one of that name); returns its path."""
        target = self.playlist_dir / playlist_filename(name)
        text = render_m3u8(tracks, target)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)

        await asyncio.to_thread(write)
        return str(target)

    async def listening_history(self, user: str | None = None) -> list[HistoryEntry]:
        """A folder of files records no plays, so a fingerprint cannot be made from it."""
        raise NoListeningHistory(
            "the folder source has no listening history, so there is no sonic fingerprint to "
            "compute; connect a media server (Navidrome, Jellyfin, LMS...) that records plays"
        )

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        if not self.root.is_dir():
            raise FolderMissing(f"music folder {self.root} does not exist or is not a folder")
        return await asyncio.to_thread(scan_folder, self.root, self.source, known)
