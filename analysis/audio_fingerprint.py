"""A cheap audio fingerprint for telling "the same recording" from "a similar song".

The musicnn embedding of a song and of its MP3 re-encode, its first 80 % or a
louder copy with a little leading silence can sit further apart than two
different songs of one soundtrack, so duplicates cannot be found by cosine
alone. This fingerprint describes the *waveform's* fine structure instead:
per frame, 16 bits saying whether the energy difference between neighbouring
frequency bands rose or fell since the previous frame (the Haitsma-Kalker
idea). Signs of log-energy differences do not change with gain, survive lossy
coding, and two recordings agree on them only when they are the same audio.

It is computed from the excerpts the analyzer already decoded, so it costs
one small STFT and no extra decoding. Frames sit on one absolute time grid
(``HOP`` samples from the start of the file) whatever excerpt they come from,
so two fingerprints of the same recording taken from *different* excerpts
still line up wherever the excerpts overlap in time; :func:`compare` tries
every time offset up to ``MAX_OFFSET_S`` (leading silence, cut intros) and
reports the bit error rate at the best one.

Stored form (``encode``): ``b"MGF1"``, uint16 run count, per run (uint32
first frame, uint16 length), then the uint16 codes: about 1.5 KB for a
sampled 4-minute track.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "Fingerprint",
    "FingerprintMatch",
    "compare",
    "compute",
    "decode",
    "encode",
]

SAMPLE_RATE = 16000
#: Frame step: 128 ms. Coarse enough to keep the fingerprint small and the
#: offset search short; the window is twice as long, so a misalignment of half
#: a step (an arbitrary silence length) still leaves most bits intact.
HOP = 2048
WINDOW = 4096
#: 17 log-spaced bands from 250 Hz to 4 kHz give 16 difference bits per frame;
#: below 4 kHz so that a 64 kbit/s MP3's low-pass leaves the bands untouched.
BANDS = 17
F_LO, F_HI = 250.0, 4000.0
#: Frames quieter than this (mean power in the bands, dBFS) carry no sign
#: information - digital silence would "match" any other silence.
SILENT_DB = -70.0
#: Offsets searched in :func:`compare`, in seconds either way.
MAX_OFFSET_S = 12.0
#: Fewer common frames than this (~2.5 s) is not enough evidence either way.
MIN_OVERLAP = 20

_MAGIC = b"MGF1"
_POPCOUNT16 = np.array([bin(i).count("1") for i in range(1 << 16)], np.uint8)


@dataclass(frozen=True)
class Fingerprint:
    """Codes of the heard frames: ``frames`` (int64, ascending, absolute index) and ``codes`` (uint16)."""

    frames: np.ndarray
    codes: np.ndarray

    def __len__(self) -> int:
        return int(self.frames.size)


@dataclass(frozen=True)
class FingerprintMatch:
    """Best alignment of two fingerprints: ``b`` time = ``a`` time + ``offset_s``."""

    bit_error_rate: float  # 0 = identical; unrelated audio sits near 0.5
    offset_s: float
    overlap: int  # common frames at that offset


@lru_cache(maxsize=1)
def _band_edges() -> np.ndarray:
    """First FFT bin of each log-spaced band, then the end of the last one (for reduceat)."""
    freqs = np.fft.rfftfreq(WINDOW, 1.0 / SAMPLE_RATE)
    return np.searchsorted(freqs, np.geomspace(F_LO, F_HI, BANDS + 1))


@lru_cache(maxsize=1)
def _window() -> np.ndarray:
    return np.hanning(WINDOW).astype(np.float32)


def _excerpt_codes(x: np.ndarray, start: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames of one excerpt on the absolute grid: frame g starts at sample g*HOP."""
    import scipy.fft  # only analysis computes fingerprints; readers just decode them

    first = -(-start // HOP)  # first grid frame starting inside the excerpt
    offset = first * HOP - start
    n = (x.size - offset - WINDOW) // HOP + 1
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.uint16)
    view = np.lib.stride_tricks.sliding_window_view(x[offset:], WINDOW)[::HOP][:n]
    spec = scipy.fft.rfft(view * _window(), axis=-1)
    edges = _band_edges()
    # Band sums by reduceat, not a matrix product: BLAS would start threads per call.
    power = np.add.reduceat(spec.real**2 + spec.imag**2, edges, axis=1)[:, :BANDS]
    loud = 10.0 * np.log10(np.maximum(np.einsum("ij,ij->i", view, view) / WINDOW, 1e-20)) > SILENT_DB
    energy = np.log(np.maximum(power, 1e-20))
    diff = energy[:, :-1] - energy[:, 1:]  # across bands: gain cancels
    bits = (diff[1:] - diff[:-1]) > 0  # change since the previous frame
    codes = (bits.astype(np.uint16) << np.arange(BANDS - 1, dtype=np.uint16)).sum(
        axis=1, dtype=np.uint16
    )
    keep = loud[1:] & loud[:-1]
    frames = np.arange(first + 1, first + n, dtype=np.int64)
    return frames[keep], codes[keep]


def compute(excerpts: Sequence[np.ndarray], starts: Sequence[float], sr: int = SAMPLE_RATE) -> Fingerprint:
    """Fingerprint of decoded excerpts (mono float32 at 16 kHz) starting at ``starts`` seconds."""
    if sr != SAMPLE_RATE:
        raise ValueError(f"fingerprints are computed at {SAMPLE_RATE} Hz, not {sr}")
    frames: list[np.ndarray] = []
    codes: list[np.ndarray] = []
    for x, s in zip(excerpts, starts, strict=True):
        f, c = _excerpt_codes(np.asarray(x, np.float32).reshape(-1), int(round(float(s) * sr)))
        frames.append(f)
        codes.append(c)
    if not frames:
        return Fingerprint(np.zeros(0, np.int64), np.zeros(0, np.uint16))
    f_all, c_all = np.concatenate(frames), np.concatenate(codes)
    f_all, first = np.unique(f_all, return_index=True)  # overlapping excerpts: keep one code
    return Fingerprint(f_all, c_all[first])


def encode(fp: Fingerprint) -> bytes:
    """Compact bytes for the store: runs of consecutive frames, then the codes."""
    f = fp.frames
    if f.size == 0:
        return _MAGIC + struct.pack("<H", 0)
    breaks = np.flatnonzero(np.diff(f) != 1) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [f.size]]))
    # Runs are at most 65535 frames (2.3 h); longer runs are split.
    runs: list[tuple[int, int]] = []
    for s, n in zip(starts, lengths, strict=True):
        s, n = int(s), int(n)
        while n > 0:
            take = min(n, 0xFFFF)
            runs.append((int(f[s]), take))
            s += take
            n -= take
    head = _MAGIC + struct.pack("<H", len(runs)) + b"".join(struct.pack("<IH", a, n) for a, n in runs)
    return head + fp.codes.astype("<u2").tobytes()


def decode(blob: bytes) -> Fingerprint:
    """Inverse of :func:`encode`; ValueError for bytes that are not a fingerprint."""
    if len(blob) < 6 or blob[:4] != _MAGIC:
        raise ValueError("not a musegate fingerprint")
    (n_runs,) = struct.unpack_from("<H", blob, 4)
    pos = 6
    frames: list[np.ndarray] = []
    for _ in range(n_runs):
        a, n = struct.unpack_from("<IH", blob, pos)
        pos += 6
        frames.append(np.arange(a, a + n, dtype=np.int64))
    f = np.concatenate(frames) if frames else np.zeros(0, np.int64)
    codes = np.frombuffer(blob, dtype="<u2", offset=pos).astype(np.uint16)
    if codes.size != f.size:
        raise ValueError("truncated fingerprint")
    return Fingerprint(f, codes)


def compare(a: Fingerprint, b: Fingerprint, max_offset_s: float = MAX_OFFSET_S) -> FingerprintMatch | None:
    """Best time alignment of ``b`` against ``a``; None when they never share MIN_OVERLAP frames.

    Every offset is scored at once: ``a``'s frames shifted by each offset index
    into ``b`` laid out densely, so the cost is one (offsets x frames) gather,
    XOR and popcount. Most pairs asked about are different songs, so every
    ``SCREEN_STEP``-th frame is scored first and a pair far from matching stops
    there (4x cheaper; a true copy never comes close to ``SCREEN_RATE``).
    """
    if len(a) < MIN_OVERLAP or len(b) < MIN_OVERLAP:
        return None
    if len(a) > len(b):  # gather from the denser side's layout: fewer rows to score
        m = compare(b, a, max_offset_s)
        return None if m is None else FingerprintMatch(m.bit_error_rate, -m.offset_s, m.overlap)
    span = int(round(max_offset_s * SAMPLE_RATE / HOP))
    lo = int(b.frames[0])
    dense = np.zeros(int(b.frames[-1]) - lo + 1, np.uint16)
    heard = np.zeros(dense.size, bool)
    dense[b.frames - lo] = b.codes
    heard[b.frames - lo] = True
    offsets = np.arange(-span, span + 1)
    if len(a) >= SCREEN_STEP * 2 * MIN_OVERLAP:
        screen = _score(a.frames[::SCREEN_STEP], a.codes[::SCREEN_STEP], dense, heard, lo,
                        offsets, MIN_OVERLAP // SCREEN_STEP)
        if screen is None or screen[0] > SCREEN_RATE:
            return None if screen is None else FingerprintMatch(
                screen[0], float(offsets[screen[1]] * HOP / SAMPLE_RATE), screen[2])
    best = _score(a.frames, a.codes, dense, heard, lo, offsets, MIN_OVERLAP)
    if best is None:
        return None
    rate, k, overlap = best
    return FingerprintMatch(rate, float(offsets[k] * HOP / SAMPLE_RATE), overlap)


#: The screening pass of :func:`compare`: one frame in 4, given up above this error rate.
SCREEN_STEP = 4
SCREEN_RATE = 0.36


def _score(frames: np.ndarray, codes: np.ndarray, dense: np.ndarray, heard: np.ndarray, lo: int,
           offsets: np.ndarray, min_overlap: int) -> tuple[float, int, int] | None:
    """(bit error rate, offset index, overlap) at the best offset with enough common frames."""
    idx = frames[None, :] - lo + offsets[:, None]
    inside = (idx >= 0) & (idx < dense.size)
    idx = np.where(inside, idx, 0)
    common = inside & heard[idx]
    overlap = common.sum(axis=1)
    errors = np.where(common, _POPCOUNT16[codes[None, :] ^ dense[idx]], 0).sum(axis=1)
    ok = overlap >= max(1, min_overlap)
    if not ok.any():
        return None
    rate = np.where(ok, errors / np.maximum(overlap, 1) / (BANDS - 1), 1.0)
    k = int(np.argmin(rate))
    return float(rate[k]), k, int(overlap[k])
