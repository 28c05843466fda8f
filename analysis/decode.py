"""Audio decoding for analysis.

Decoding is a large share of the per-track cost, so a track is decoded once
and, where the format allows seeking, only the excerpts that will actually be
analysed are read.  Two backends are used:

* libsndfile (via ``soundfile``) for WAV, FLAC, OGG/Vorbis, Opus and MP3 - it
  seeks sample-accurately and is cheap to open;
* PyAV (bundled FFmpeg) for everything else (M4A/AAC, ALAC, WMA, ...), and
  for every file libsndfile opens but then gives up on mid-read (Opus and some
  Vorbis that ffmpeg wrote, a FLAC with a damaged stretch): FFmpeg resyncs
  where libsndfile stops, and a read that still ends early is an error.

Every failure surfaces as :class:`DecodeError` with a short human reason, so
callers can record *why* a track was skipped without knowing which backend
was involved.

A location may also be an ``http(s)://`` URL (a media server's ``download``
endpoint when the library is not mounted locally).  It is fetched into memory
with a size cap - never a temp file, so nothing is left behind by a killed
worker - and both backends decode the in-memory copy.  Such URLs carry
credentials in their query string, so reasons and logs only ever show them
through :func:`redact_url`. A download the *server* failed (no connection, no
answer in time, the connection cut, its own 5xx, an HTML page where audio was
due) is a :class:`DownloadUnavailable`: the analyzer then asks the server whether
it is up before it blames the track.
"""

from __future__ import annotations

import base64
import http.client
import io
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import soundfile as sf
import soxr

__all__ = [
    "AudioInfo",
    "DecodeError",
    "DownloadUnavailable",
    "MAX_REMOTE_BYTES",
    "fetch",
    "is_url",
    "load_mono",
    "probe",
    "read_excerpts",
    "redact_url",
]

#: A location: a local path, an http(s) URL, or audio already in memory.
Location = str | os.PathLike[str] | BinaryIO

#: Downloads larger than this are refused rather than filling a worker's memory
#: (a 24-bit/192 kHz hour of FLAC is ~1.5 GB; ordinary tracks are < 100 MB).
MAX_REMOTE_BYTES = 512 * 1024 * 1024

#: Seconds without progress before a download is abandoned.
REMOTE_TIMEOUT = 60.0

_CHUNK = 1 << 20
_URL_QUERY = re.compile(r"(https?://[^\s?#'\"]*)\?[^\s#'\"]*", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(https?://)[^\s/?#@'\"]*@", re.IGNORECASE)

#: Exceptions the decoding libraries raise for bad input; all are mapped to
#: DecodeError so one corrupt file can never take down a scan.
_BACKEND_ERRORS: tuple[type[BaseException], ...] = (
    sf.LibsndfileError,
    av.FFmpegError,
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
)

#: With PyAV, seek instead of decoding through gaps longer than this: a seek
#: costs a demuxer index lookup plus a little pre-roll, decoding costs time
#: proportional to the gap.
_AV_SEEK_GAP_S = 8.0

#: Consecutive undecodable packets after which a stream counts as not audio.
_AV_MAX_BAD_PACKETS = 32

#: Containers whose seeks land on real timestamps.  Raw elementary streams
#: (ADTS AAC, raw MP3 through FFmpeg ...) seek by byte estimate, which would
#: put excerpts at the wrong place, so those are decoded sequentially.
_AV_INDEXED_FORMATS = ("mp4", "mov", "matroska", "webm", "asf", "ogg", "flac", "wav", "aiff", "caf")

#: The full-track reference (librosa.load) resamples with soxr_hq; MQ saves
#: only ~10 % of resampling time and LQ changes the log-mel patches visibly.
_SOXR_QUALITY = "HQ"

#: Frames decoded and dropped before each Vorbis excerpt: half the largest
#: Vorbis block (8192), which is how far a seek's bad first half-block reaches.
_VORBIS_PREROLL = 4096

#: Native-rate reads go through a buffer of at most this many bytes.
_BLOCK_BYTES = 8 << 20

#: Mono native-rate samples above which resampling switches to streaming.
_STREAM_FRAMES = 1 << 20


class DecodeError(Exception):
    """A track could not be decoded; ``str(err)`` is a short human reason."""


class DownloadUnavailable(DecodeError):
    """The server did not deliver a download (unreachable, silent, cut off, its own 5xx or
    an HTML page): maybe the track's fault, maybe the whole server's, which only asking
    the server can tell."""


@dataclass(frozen=True)
class AudioInfo:
    """What is known about a file before decoding it."""

    duration: float
    samplerate: int
    channels: int
    seekable: bool
    backend: str  # 'soundfile' or 'av'


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def is_url(location: object) -> bool:
    """True for an ``http(s)://`` location (fetched into memory, not opened as a file)."""
    return isinstance(location, str) and location[:8].lower().startswith(("http://", "https://"))


def redact_url(text: str) -> str:
    """``text`` with every URL's query string (where Subsonic credentials live) and
    user:password part (HTTP Basic credentials, as for a password-protected LMS) replaced."""
    return _URL_QUERY.sub(r"\1?<redacted>", _URL_USERINFO.sub(r"\1<redacted>@", text))


def _basic_auth(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` part, and the Authorization header it stood for.

    urllib does not send credentials written into a URL, so they become a header.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return url, {}
    user = urllib.parse.unquote(parts.username)
    password = urllib.parse.unquote(parts.password or "")
    host = parts.netloc.rpartition("@")[2]
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), {"Authorization": f"Basic {token}"}


def fetch(url: str, max_bytes: int = MAX_REMOTE_BYTES, timeout: float = REMOTE_TIMEOUT) -> io.BytesIO:
    """Download ``url`` into memory (at most ``max_bytes``); DecodeError on any failure.

    Runs in analysis worker processes, which are synchronous, hence urllib. The
    whole file is needed anyway: the decoders seek in it to read the excerpts.
    """
    shown = redact_url(url)
    url, auth = _basic_auth(url)
    request = urllib.request.Request(url, headers={"User-Agent": "musegate", **auth})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise DecodeError(
                    f"remote audio too large ({int(declared)} bytes, limit {max_bytes}): {shown}"
                )
            ctype = (resp.headers.get("Content-Type") or "").lower()
            buf = io.BytesIO()
            while chunk := resp.read(_CHUNK):
                if buf.tell() + len(chunk) > max_bytes:
                    raise DecodeError(f"remote audio larger than the limit of {max_bytes} bytes: {shown}")
                buf.write(chunk)
            # http.client's read(n) ends quietly when the connection closes early; the
            # decoder would then blame the file for being truncated.
            if declared and declared.isdigit() and buf.tell() < int(declared):
                raise DownloadUnavailable(
                    f"download failed (the connection closed after {buf.tell()} of "
                    f"{int(declared)} bytes): {shown}")
    except DecodeError:
        raise
    except urllib.error.HTTPError as exc:
        failed = DownloadUnavailable if exc.code >= 500 else DecodeError
        raise failed(f"download failed with HTTP {exc.code}: {shown}") from None
    except TimeoutError:
        raise DownloadUnavailable(
            f"download failed (the server sent nothing for {timeout:g} s): {shown}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        # No connection, a reset, bytes that are not HTTP, a body cut short.
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, TimeoutError):
            raise DownloadUnavailable(
                f"download failed (the server sent nothing for {timeout:g} s): {shown}") from None
        raise DownloadUnavailable(
            f"download failed ({type(exc).__name__}: {redact_url(_reason_text(reason))}): "
            f"{shown}") from None
    except ValueError as exc:
        raise DecodeError(f"download failed ({redact_url(_reason_text(exc))}): {shown}") from None
    if ctype.startswith(("text/xml", "application/xml", "application/json", "text/html")):
        # A Subsonic server answers errors (bad credentials, unknown id) with 200 + XML/JSON;
        # an HTML page is a proxy's or a portal's, not the music server's verdict on the track.
        failed = DownloadUnavailable if ctype.startswith("text/html") else DecodeError
        snippet = redact_url(buf.getvalue()[:200].decode("utf-8", errors="replace"))
        raise failed(f"server answered with {ctype.split(';')[0]} instead of audio: {snippet}")
    if buf.tell() == 0:
        raise DecodeError("empty audio file")
    buf.seek(0)
    return buf


def probe(path: Location) -> AudioInfo:
    """Read the header only, so callers can plan excerpts before decoding."""
    p = _check_file(path)
    sfile = _open_soundfile(p)
    if sfile is not None:
        with sfile:
            return _soundfile_info(sfile)
    with _open_av(p) as container:
        return _av_info(container)


def read_excerpts(
    path: Location,
    spans: Sequence[tuple[float, float]] | None,
    sr: int = 16000,
) -> list[np.ndarray]:
    """Decode only the requested ``(start_s, duration_s)`` spans as mono float32 at ``sr``.

    Spans are clipped to the file; spans falling entirely outside it are
    dropped, so the result can be shorter than ``spans``.  ``spans=None``
    returns the whole file as a single array.  Raises :class:`DecodeError`
    when nothing could be decoded.
    """
    if sr <= 0:
        raise ValueError("sr must be positive")
    p = _check_file(path)
    sfile = _open_soundfile(p)
    try:
        out = None
        gave_up: sf.LibsndfileError | None = None
        if sfile is not None:
            try:
                with sfile:
                    counted = sfile.format != "MP3" or _mp3_counted(p)
                    out = _read_soundfile(sfile, spans, sr, counted)
            except sf.LibsndfileError as exc:
                # libsndfile gives up on files FFmpeg reads: Opus and some Vorbis that
                # ffmpeg wrote fail a few seconds in as "malformed", a FLAC with one
                # damaged stretch stops at "lost sync" where FFmpeg resyncs. FFmpeg
                # gets a try; a read that stops early is still caught there.
                gave_up = exc
        if out is None:
            try:
                with _open_av(p) as container:
                    out = _read_av(container, spans, sr)
            except DecodeError as exc:
                if gave_up is None:
                    raise
                raise DecodeError(f"{exc} (libsndfile: {_reason(gave_up)})") from exc
            except _BACKEND_ERRORS as exc:
                if gave_up is None:
                    raise
                raise DecodeError(f"unsupported or corrupt audio: libsndfile: {_reason(gave_up)}; "
                                  f"FFmpeg: {_reason(exc)}") from exc
    except DecodeError:
        raise
    except _BACKEND_ERRORS as exc:
        raise DecodeError(f"unsupported or corrupt audio: {_reason(exc)}") from exc

    out = [x for x in out if x.size]
    if not out:
        if spans is None:
            raise DecodeError("empty audio file")
        raise DecodeError("no audio decoded in the requested spans")
    return out


def load_mono(path: Location, sr: int = 16000) -> np.ndarray:
    """Whole file as one mono float32 array at ``sr``."""
    return read_excerpts(path, None, sr)[0]


# --------------------------------------------------------------------------
# helpers shared by both backends
# --------------------------------------------------------------------------


_Source = Path | BinaryIO


def _check_file(path: Location) -> _Source:
    """A local file checked to exist and be non-empty, or the bytes of a remote/in-memory one."""
    if is_url(path):
        return fetch(str(path))
    if not isinstance(path, (str, os.PathLike)):
        try:
            size = path.seek(0, io.SEEK_END)
            path.seek(0)
        except (OSError, ValueError) as exc:
            raise DecodeError(f"cannot read audio stream: {_reason(exc)}") from exc
        if size == 0:
            raise DecodeError("empty audio file")
        return path
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError as exc:
        raise DecodeError("file not found") from exc
    except OSError as exc:
        raise DecodeError(f"cannot access file: {_reason(exc)}") from exc
    if not p.is_file():
        raise DecodeError("not a regular file")
    if size == 0:
        raise DecodeError("empty audio file")
    return p


def _reason_text(value: object) -> str:
    text = str(value).strip() or type(value).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _reason(exc: BaseException) -> str:
    return redact_url(_reason_text(exc))


def _frame_ranges(
    spans: Sequence[tuple[float, float]] | None, native_sr: int, total: int | None
) -> list[tuple[int, int]]:
    """Convert second-based spans to clipped ``[start, stop)`` sample ranges.

    ``total`` may be None when the length is unknown up front (PyAV without
    a duration); clipping to the end then happens while decoding.
    """
    end_cap = total if total is not None else np.iinfo(np.int64).max
    if spans is None:
        return [(0, end_cap)]
    ranges: list[tuple[int, int]] = []
    for start_s, dur_s in spans:
        if not (np.isfinite(start_s) and np.isfinite(dur_s)) or dur_s <= 0:
            continue
        a = max(0, int(round(start_s * native_sr)))
        b = min(end_cap, int(round((start_s + dur_s) * native_sr)))
        ranges.append((a, b))
    return ranges


def _to_mono(block: np.ndarray) -> np.ndarray:
    """Average (frames, channels) into a new mono float32 array (never a view of ``block``).

    A matrix-vector product with 1/channels weights: ``block.mean(axis=1)``
    reduces over a 2-element axis so slowly that it cost more than the
    resampling.  For stereo (weights 0.5, exact in binary) the result is
    bit-identical to the mean.
    """
    channels = block.shape[1]
    if channels == 1:
        return np.array(block[:, 0], dtype=np.float32)
    weights = np.full(channels, 1.0 / channels, dtype=np.float32)
    return np.ascontiguousarray(block.astype(np.float32, copy=False) @ weights)


class _Resampled:
    """Consecutive mono pieces of one excerpt in, one float32 array at ``sr`` out.

    An excerpt is resampled with a single soxr call; input beyond
    ``_STREAM_FRAMES`` (a whole long track) goes through soxr's streaming
    resampler instead, so it is never held at the native rate.  soxr's
    streaming output is bit-identical to its one-shot output, so the switch
    does not change results.
    """

    def __init__(self, native_sr: int, sr: int) -> None:
        self._native_sr = native_sr
        self._sr = sr
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._stream: soxr.ResampleStream | None = None
        self._out: list[np.ndarray] = []

    def add(self, mono: np.ndarray) -> None:
        """Append samples; ``mono`` must not be modified afterwards."""
        self._pending.append(mono)
        self._pending_frames += mono.size
        if self._pending_frames >= _STREAM_FRAMES:
            self._flush(last=False)

    def _flush(self, last: bool) -> None:
        if not self._pending and self._stream is None:
            return
        x = (
            self._pending[0]
            if len(self._pending) == 1
            else np.concatenate(self._pending or [np.zeros(0, np.float32)])
        )
        self._pending, self._pending_frames = [], 0
        if self._native_sr == self._sr:
            self._out.append(x)
        elif self._stream is None and last:
            self._out.append(soxr.resample(x, self._native_sr, self._sr, quality=_SOXR_QUALITY))
        else:
            if self._stream is None:
                self._stream = soxr.ResampleStream(
                    self._native_sr, self._sr, 1, dtype="float32", quality=_SOXR_QUALITY
                )
            self._out.append(self._stream.resample_chunk(x, last=last))

    def result(self) -> np.ndarray:
        self._flush(last=True)
        if not self._out:
            return np.zeros(0, np.float32)
        y = self._out[0] if len(self._out) == 1 else np.concatenate(self._out)
        return np.ascontiguousarray(y, dtype=np.float32)


# --------------------------------------------------------------------------
# soundfile backend
# --------------------------------------------------------------------------


def _open_soundfile(p: _Source) -> sf.SoundFile | None:
    """Open with libsndfile, or None when it does not handle the file (PyAV gets a try)."""
    try:
        if isinstance(p, Path):
            # bytes: a name that is not valid UTF-8 (old Latin-1 rips) arrives with
            # surrogate escapes, which soundfile cannot encode from a str.
            f = sf.SoundFile(os.fsencode(p))
        else:
            p.seek(0)
            f = sf.SoundFile(p)
    except _BACKEND_ERRORS:
        return None
    if f.frames <= 0 or f.samplerate <= 0:
        # libsndfile sometimes opens things it cannot really decode (or an
        # MP3 without frame count); let FFmpeg have a look before giving up.
        f.close()
        return None
    cut = _cut_short(f)
    if cut is not None:
        f.close()
        raise DecodeError(f"corrupt or truncated audio: {cut}")
    return f


#: A WAV data size this large or 0 is a placeholder for "length unknown" (written
#: by a streaming encoder that could not seek back), not a promise of samples.
_WAV_PLACEHOLDER = 0xFFFF0000
_WAV_DATA = re.compile(r"^data : (\d+) \(should be (\d+)\)", re.MULTILINE)


def _cut_short(f: sf.SoundFile) -> str | None:
    """Why ``f`` is visibly the start of a longer file, or None.

    libsndfile quietly shortens a truncated WAV to the bytes present and an Ogg
    to its last page, so the file would pass as a shorter, complete track and be
    analysed (and its duration stored) wrongly. Its open log says what the
    header promised: a WAV's data size, an Ogg's missing end-of-stream page.
    """
    try:
        log = f.extra_info
    except (sf.LibsndfileError, RuntimeError):  # pragma: no cover - log unavailable
        return None
    if f.format == "OGG" and "lacks an end-of-stream" in log:
        return "the Ogg stream ends without its last page"
    m = _WAV_DATA.search(log)
    if m is not None and f.format in ("WAV", "WAVEX"):
        declared, present = int(m.group(1)), int(m.group(2))
        byte_rate = max(1, f.samplerate * f.channels * _sample_bytes(f.subtype))
        tolerance = byte_rate + declared // 50  # the same 1 s + 2 % as _check_complete
        if 0 < declared < _WAV_PLACEHOLDER and declared - present > tolerance:
            return (f"the header promises {declared / byte_rate:.1f} s, "
                    f"the file holds {present / byte_rate:.1f} s")
    return None


def _sample_bytes(subtype: str) -> int:
    for bits, size in (("8", 1), ("16", 2), ("24", 3), ("32", 4), ("64", 8), ("FLOAT", 4),
                       ("DOUBLE", 8)):
        if subtype.endswith(bits) or subtype == bits:
            return size
    return 2


def _mp3_counted(p: _Source) -> bool:
    """Whether an MP3 carries a Xing/Info or VBRI header, i.e. its real frame count.

    Without one, libsndfile estimates the length from the file size, which says
    nothing about truncation; with one, a read that stops early is a cut file.
    """
    try:
        if isinstance(p, Path):
            with open(p, "rb") as fh:
                head = fh.read(64 * 1024)
        else:
            pos = p.tell()
            p.seek(0)
            head = p.read(64 * 1024)
            p.seek(pos)
    except OSError:
        return False
    if head[:3] == b"ID3" and len(head) >= 10:  # skip an ID3v2 tag (synchsafe size)
        size = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]
        start = 10 + size
        if start > len(head) - 4096:
            return False
        head = head[start:]
    frame = head.find(b"\xff")
    window = head[frame : frame + 4096] if frame >= 0 else b""
    return any(tag in window for tag in (b"Xing", b"Info", b"VBRI"))


def _soundfile_info(f: sf.SoundFile) -> AudioInfo:
    return AudioInfo(
        duration=f.frames / f.samplerate,
        samplerate=int(f.samplerate),
        channels=int(f.channels),
        seekable=bool(f.seekable()),
        backend="soundfile",
    )


def _read_soundfile(
    f: sf.SoundFile, spans: Sequence[tuple[float, float]] | None, sr: int,
    counted: bool = True,
) -> list[np.ndarray]:
    """Seek to each span and read just it: decoding the gaps would cost more than the spans.

    Reads go through one reused buffer of bounded size, so even a whole
    hour of 96 kHz audio passes through in blocks instead of being held at
    its native rate.  Not seekable: one sequential pass up to the end of the
    last span.

    Vorbis needs care (libsndfile 1.2; libsndfile#794, #885): a seek less
    than 2 s ahead skips packets with bookkeeping that sometimes lands on
    the wrong samples, and after any seek the first half-block comes out
    without its overlap (wrong for up to ~1000 samples).  Seeking back to
    the start first forces the exact bisection path, and starting
    ``_VORBIS_PREROLL`` frames early moves the bad half-block out of the
    span.  Costs ~3 % more decoding; on files from libsndfile's own encoder
    the plain seeks got most excerpts' starts wrong.
    """
    native_sr = int(f.samplerate)
    total = int(f.frames)
    ranges = _frame_ranges(spans, native_sr, total)
    sinks = [_Resampled(native_sr, sr) for _ in ranges]
    vorbis = f.subtype == "VORBIS"
    preroll = _VORBIS_PREROLL if vorbis else 0
    longest = max((b - a for a, b in ranges), default=0) + preroll
    channels = int(f.channels)
    block = max(4096, _BLOCK_BYTES // (4 * channels))
    buf = np.empty((max(1, min(block, longest)), channels), np.float32)
    exact = f.format != "MP3" or counted  # an MP3's frame count is an estimate without Xing
    if f.seekable():
        for (a, b), sink in zip(ranges, sinks, strict=True):
            if b <= a:
                continue
            start = max(0, a - preroll)
            if vorbis and start > 0:
                f.seek(0)
            f.seek(start)
            end = _pump(f, start, b, buf, [(a, b, sink)])
            if exact:
                _check_complete(max(0, end - a), b - a, native_sr, total)
    else:
        stop = max((b for a, b in ranges if b > a), default=0)
        end = _pump(f, 0, stop, buf, [(a, b, s) for (a, b), s in zip(ranges, sinks, strict=True)])
        for a, b in ranges:
            if b > a:
                _check_complete(min(max(end, a), b) - a, b - a, native_sr, total)
    return [s.result() for s in sinks]


def _pump(
    f: sf.SoundFile,
    pos: int,
    stop: int,
    buf: np.ndarray,
    targets: Sequence[tuple[int, int, _Resampled]],
) -> int:
    """Read frames ``[pos, stop)`` block by block, handing each ``(a, b, sink)`` its share.

    Returns the position actually reached (short of ``stop`` at end of file).
    """
    while pos < stop:
        want = min(len(buf), stop - pos)
        block = f.read(dtype="float32", always_2d=True, out=buf[:want])
        n = len(block)
        for a, b, sink in targets:
            lo, hi = max(a, pos), min(b, pos + n)
            if hi > lo:
                sink.add(_to_mono(block[lo - pos : hi - pos]))
        pos += n
        if n < want:
            break
    return pos


def _check_complete(got: int, want: int, native_sr: int, total: int) -> None:
    """Turn a decoder that silently stops early into an error.

    libsndfile (and some FFmpeg demuxers) end a read at the first corrupt
    page instead of failing; analysing what came before would describe a
    different track than the one on disk.
    """
    tolerance = native_sr + total // 50  # 1 s + 2 %: header lengths are not exact
    if want - got > tolerance:
        raise DecodeError(
            f"corrupt or truncated audio: decoded {got / native_sr:.1f} s of {want / native_sr:.1f} s"
        )


# --------------------------------------------------------------------------
# PyAV backend
# --------------------------------------------------------------------------


class _AVContainer:
    """Context manager that maps PyAV open failures to DecodeError."""

    def __init__(self, p: _Source) -> None:
        self._file: BinaryIO | None = None
        try:
            if isinstance(p, Path) and not _utf8_name(p):
                # FFmpeg takes UTF-8 names only: read a non-UTF-8 name through Python.
                self._file = open(p, "rb")  # noqa: SIM115 - closed in __exit__
                self.container = av.open(self._file, mode="r")
            elif isinstance(p, Path):
                self.container = av.open(str(p), mode="r")
            else:
                p.seek(0)
                self.container = av.open(p, mode="r")
        except _BACKEND_ERRORS as exc:
            self._close_file()
            raise DecodeError(f"unsupported or corrupt audio: {_reason(exc)}") from exc
        if not self.container.streams.audio:
            self.container.close()
            self._close_file()
            raise DecodeError("no audio stream")

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()

    def __enter__(self) -> av.container.InputContainer:
        return self.container

    def __exit__(self, *exc: object) -> None:
        self.container.close()
        self._close_file()


def _utf8_name(p: Path) -> bool:
    try:
        str(p).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _open_av(p: _Source) -> _AVContainer:
    return _AVContainer(p)


def _av_duration(container: av.container.InputContainer) -> float | None:
    stream = container.streams.audio[0]
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _av_seekable(container: av.container.InputContainer) -> bool:
    name = container.format.name or ""
    return _av_duration(container) is not None and any(k in name for k in _AV_INDEXED_FORMATS)


def _av_info(container: av.container.InputContainer) -> AudioInfo:
    stream = container.streams.audio[0]
    ctx = stream.codec_context
    rate = int(ctx.sample_rate or stream.rate or 0)
    channels = int(ctx.layout.nb_channels) if ctx.layout is not None else 0
    duration = _av_duration(container)
    if duration is None:
        # No header duration (some raw streams): count by decoding once.
        try:
            samples = sum(fr.samples for fr in container.decode(stream))
        except _BACKEND_ERRORS as exc:
            raise DecodeError(f"unsupported or corrupt audio: {_reason(exc)}") from exc
        duration = samples / rate if rate else 0.0
    if rate <= 0 or channels <= 0:
        raise DecodeError("unsupported or corrupt audio: no sample rate or channels")
    if duration <= 0:
        raise DecodeError("empty audio file")
    return AudioInfo(
        duration=duration,
        samplerate=rate,
        channels=channels,
        seekable=_av_seekable(container),
        backend="av",
    )


def _frame_to_mono(frame: av.AudioFrame) -> np.ndarray:
    """Convert any FFmpeg sample format to mono float32 in [-1, 1]."""
    arr = frame.to_ndarray()
    channels = frame.layout.nb_channels or 1
    # Planar arrives as (channels, samples), packed as (1, samples * channels).
    block = arr.T if frame.format.is_planar else arr.reshape(-1, channels)
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        if info.min == 0:  # u8: unsigned, centred at 128
            block = (block.astype(np.float32) - 128.0) / 128.0
        else:
            block = block.astype(np.float32) / float(-int(info.min))
    return _to_mono(block)


def _av_frames(
    container: av.container.InputContainer, stream: av.audio.stream.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decoded frames; a packet FFmpeg cannot decode is skipped, as the ffmpeg tool does.

    A cut file ends in a partial packet and a damaged stretch yields a few bad
    ones: skipping them lets the read reach what follows, and
    :func:`_check_complete` still judges whether enough came out. A run of
    ``_AV_MAX_BAD_PACKETS`` bad packets in a row is not audio: the error stands.
    """
    bad = 0
    for packet in container.demux(stream):
        try:
            decoded = packet.decode()
        except av.error.InvalidDataError:
            bad += 1
            if bad > _AV_MAX_BAD_PACKETS:
                raise
            continue
        bad = 0
        yield from decoded


def _read_av(
    container: av.container.InputContainer, spans: Sequence[tuple[float, float]] | None, sr: int
) -> list[np.ndarray]:
    """Decode once, front to back, keeping only samples that fall inside a span.

    Sample positions come from counting decoded samples, which is exact;
    after a seek they are re-anchored on the first frame's timestamp.
    """
    stream = container.streams.audio[0]
    native_sr = int(stream.codec_context.sample_rate or 0)
    if native_sr <= 0:
        raise DecodeError("unsupported or corrupt audio: unknown sample rate")
    ranges = _frame_ranges(spans, native_sr, None)
    duration = _av_duration(container)
    if duration is not None:
        # Spans starting past the header's end can only be reached by seeking
        # to nowhere; drop them up front (ends are clipped while decoding).
        end = int(duration * native_sr)
        ranges = [(a, b) if a < end else (a, a) for a, b in ranges]
    sinks = [_Resampled(native_sr, sr) for _ in ranges]
    filled = [0] * len(ranges)
    # Visit spans in start order; the output keeps the caller's order.
    order = sorted((i for i, (a, b) in enumerate(ranges) if b > a), key=lambda i: ranges[i][0])
    if not order:
        return [np.zeros(0, np.float32) for _ in ranges]

    can_seek = _av_seekable(container) and stream.time_base is not None
    gap = int(_AV_SEEK_GAP_S * native_sr)
    pos = 0  # sample index of the next decoded sample
    frames = _av_frames(container, stream)
    anchor = False  # re-read position from the next frame's pts
    k = 0  # index into `order` of the first span not yet complete
    sought = -1  # last `k` a seek was made for: at most one seek per span
    while k < len(order):
        next_start = ranges[order[k]][0]
        if can_seek and sought != k and next_start - pos > gap:
            sought = k
            target = (next_start / native_sr - 1.0) / stream.time_base
            container.seek(max(0, int(target)), stream=stream, backward=True)
            frames = _av_frames(container, stream)
            anchor = True
        frame = next(frames, None)
        if frame is None:
            break
        if anchor:
            if frame.pts is None:
                # Cannot place samples after the seek: start over sequentially.
                container.seek(0, stream=stream, backward=True)
                frames = _av_frames(container, stream)
                pos, can_seek, anchor = 0, False, False
                sinks = [_Resampled(native_sr, sr) for _ in ranges]
                filled = [0] * len(ranges)
                continue
            pos = int(round(float(frame.pts * frame.time_base) * native_sr))
            anchor = False
        n = frame.samples
        f_start, f_stop = pos, pos + n
        pos = f_stop
        if f_stop <= next_start:
            continue
        mono: np.ndarray | None = None
        for i in order[k:]:
            a, b = ranges[i]
            if a >= f_stop:
                break
            lo, hi = max(a, f_start), min(b, f_stop)
            if hi <= lo:
                continue
            if mono is None:
                mono = _frame_to_mono(frame)
            # Never take samples twice when a re-anchored position overlaps.
            lo = max(lo, a + filled[i])
            if hi > lo:
                sinks[i].add(mono[lo - f_start : hi - f_start])
                filled[i] = hi - a
        while k < len(order) and ranges[order[k]][1] <= pos:
            k += 1
    if duration is not None:
        total = int(duration * native_sr)
        for (a, b), got in zip(ranges, filled, strict=True):
            _check_complete(got, max(0, min(b, total) - a), native_sr, total)
    return [s.result() for s in sinks]
