"""Bad audio files, generated: corrupt, truncated, empty, mislabelled, huge and sparse.

Every case is written by code here (numpy + libsndfile, ffmpeg for MP3 where the
libsndfile build has no MP3 encoder), so the suite needs no fixtures on disk. The
multi-GB cases are sparse (``truncate``): they cost no disk space, and reading them
returns zeros, which is exactly what a huge silent file would decode to.

``expect`` is the outcome the product promises for each case: ``"analysed"`` or a
regular expression the recorded failure reason must match.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
GOOD_SECONDS = 30.0  # long enough that a 10 % cut loses more than the 1 s + 2 % tolerance


@dataclass(frozen=True)
class Case:
    name: str  # file name inside the library folder
    expect: str  # "analysed" or a regex for the failure reason
    note: str  # the case in words, for the report table


def tone(seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Stereo music-like signal: two drifting tones plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f = 220.0 * (1 + seed / 10)
    y = 0.3 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 1.5 * f * t + t)
    y = y + 0.02 * rng.standard_normal(t.size)
    return np.stack([y, y[::-1]], axis=1).astype(np.float32)


def write_mp3(path: Path, audio: np.ndarray, sr: int = SR) -> Path:
    """MP3 through libsndfile when it has the encoder (1.1+), else ffmpeg."""
    try:
        sf.write(str(path), audio, sr, format="MP3", subtype="MPEG_LAYER_III")
        return path
    except (sf.LibsndfileError, ValueError, TypeError):
        pass
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("neither libsndfile nor ffmpeg can write MP3 here")
    wav = path.with_suffix(".src.wav")
    sf.write(str(wav), audio, sr)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav),
                    "-b:a", "128k", "-f", "mp3", str(path)], check=True, timeout=120)
    wav.unlink()
    return path


def _valid(path: Path, seconds: float = GOOD_SECONDS, seed: int = 0) -> Path:
    """A valid file of ``seconds`` in the format its suffix names."""
    audio = tone(seconds, seed=seed)
    suffix = path.suffix.lower()
    if suffix == ".mp3":
        return write_mp3(path, audio)
    fmt = {".flac": "FLAC", ".ogg": "OGG", ".wav": "WAV"}[suffix]
    sf.write(str(path), audio, SR, format=fmt, subtype="VORBIS" if fmt == "OGG" else "PCM_16")
    return path


def _truncated(path: Path, keep: float) -> Path:
    data = _valid(path).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def wav_header(data_bytes: int, sr: int = SR, channels: int = 2, bits: int = 16) -> bytes:
    """A canonical 44-byte PCM WAV header promising ``data_bytes`` of samples."""
    block = channels * bits // 8
    riff = min(0xFFFFFFFF, 36 + data_bytes)
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, sr, sr * block, block, bits)
            + b"data" + struct.pack("<I", min(0xFFFFFFFF, data_bytes)))


def _huge_header_small_body(path: Path) -> Path:
    """The header claims ~4 GB of samples; 2 s are really there."""
    body = (tone(2.0) * 32767).astype("<i2").tobytes()
    path.write_bytes(wav_header(0xFFFFFFF0 - 36) + body)
    return path


def sparse_wav(path: Path, size: int) -> Path:
    """A WAV of ``size`` bytes whose data chunk covers all of it: the first seconds are a
    tone, the rest a hole (zeros) that takes no disk."""
    head = wav_header(size - 44) + (tone(5.0) * 32767).astype("<i2").tobytes()
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _random(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(len(path.name)).bytes(200_000))
    return path


def _empty(path: Path) -> Path:
    path.touch()
    return path


def _wav_named_mp3(path: Path) -> Path:
    sf.write(str(path), tone(GOOD_SECONDS, seed=3), SR, format="WAV", subtype="PCM_16")
    return path


def _mp3_named_flac(path: Path) -> Path:
    tmp = write_mp3(path.with_suffix(".tmp.mp3"), tone(GOOD_SECONDS, seed=4))
    tmp.rename(path)
    return path


def _flac_named_ogg(path: Path) -> Path:
    sf.write(str(path), tone(GOOD_SECONDS, seed=5), SR, format="FLAC", subtype="PCM_16")
    return path


def _text_named_flac(path: Path) -> Path:
    path.write_text("<html><body>404 Not Found</body></html>\n" * 50)
    return path


#: name -> (builder, case). Good songs are interleaved so "the others are analysed" is
#: checked next to every bad one.
FAST_CASES: dict[str, tuple[Callable[[Path], Path], Case]] = {
    c.name: (b, c) for b, c in [
        (_random, Case("random.mp3", r"unsupported or corrupt audio", "random bytes named .mp3")),
        (_random, Case("random.flac", r"unsupported or corrupt audio", "random bytes named .flac")),
        (_text_named_flac, Case("html.flac", r"unsupported or corrupt audio",
                                "an HTML error page saved as .flac")),
        (lambda p: _truncated(p, 0.1), Case("trunc10.flac", r"corrupt or truncated",
                                            "valid FLAC cut at 10 %")),
        (lambda p: _truncated(p, 0.5), Case("trunc50.flac", r"corrupt or truncated",
                                            "valid FLAC cut at 50 %")),
        (lambda p: _truncated(p, 0.1), Case("trunc10.ogg", r"corrupt or truncated",
                                            "valid Ogg Vorbis cut at 10 %")),
        (lambda p: _truncated(p, 0.5), Case("trunc50.ogg", r"corrupt or truncated",
                                            "valid Ogg Vorbis cut at 50 %")),
        (lambda p: _truncated(p, 0.1), Case("trunc10.mp3", r"corrupt or truncated",
                                            "valid MP3 (LAME/Xing header) cut at 10 %")),
        (lambda p: _truncated(p, 0.5), Case("trunc50.mp3", r"corrupt or truncated",
                                            "valid MP3 (LAME/Xing header) cut at 50 %")),
        (lambda p: _truncated(p, 0.1), Case("trunc10.wav", r"corrupt or truncated",
                                            "valid WAV cut at 10 %")),
        (_empty, Case("empty.flac", r"^empty audio file$", "zero-length .flac")),
        (_empty, Case("empty.mp3", r"^empty audio file$", "zero-length .mp3")),
        (_wav_named_mp3, Case("wav-named.mp3", "analysed", "a WAV named .mp3")),
        (_mp3_named_flac, Case("mp3-named.flac", "analysed", "an MP3 named .flac")),
        (_flac_named_ogg, Case("flac-named.ogg", "analysed", "a FLAC named .ogg")),
        (_huge_header_small_body, Case("huge-header.wav", "analysed",
                                       "WAV header claims 4 GB, 2 s of samples present")),
        (lambda p: _valid(p, seed=7), Case("ünï cødé ☃ 音楽 \u202etxt.flac", "analysed",
                                           "odd unicode name (combining, RTL override, CJK)")),
        (lambda p: _valid(p, seed=8), Case("e\u0301 nfd.flac", "analysed",
                                           "NFD (decomposed) name")),
    ]
}

#: Good songs that must be analysed in the same run.
GOOD = [f"good{i}.{ext}" for i, ext in enumerate(["flac", "mp3", "ogg", "wav"])]


def build(root: Path, cases: dict[str, tuple[Callable[[Path], Path], Case]]) -> list[Case]:
    """Write ``cases`` and the good songs into ``root``; return the cases."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(GOOD):
        _valid(root / name, seed=10 + i)
    for name, (builder, _) in cases.items():
        builder(root / name)
    return [c for _, c in cases.values()]


def non_utf8_name(root: Path) -> Path:
    """A file whose name is not valid UTF-8 (Latin-1 bytes, as old rips have)."""
    raw = os.fsencode(root) + b"/caf\xe9 latin1.flac"
    sf.write(raw, tone(GOOD_SECONDS, seed=9), SR, format="FLAC", subtype="PCM_16")
    return Path(os.fsdecode(raw))
