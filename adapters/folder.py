"""A plain directory of audio files: the embedded default source and the test path.

Incremental by (path, size, mtime): files that did not change are not opened
again, so rescanning a large library costs one ``stat`` per file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mutagen

from analysis.store import TrackRecord

log = logging.getLogger(__name__)

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


class FolderAdapter:
    """Tracks are the audio files under ``root``; the upstream id is the relative path."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.source = f"folder:{self.root}"

    async def list_tracks(self, known: Mapping[str, TrackRecord]) -> list[TrackRecord]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"music folder {self.root} does not exist or is not a folder")
        return await asyncio.to_thread(scan_folder, self.root, self.source, known)
