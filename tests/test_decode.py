"""Decoding tests: every supported container, excerpt placement and failure modes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from analysis.decode import AudioInfo, DecodeError, load_mono, probe, read_excerpts

SR_IN = 44100
DURATION = 12.0


def _stepped_sine(sr: int, seconds: float) -> np.ndarray:
    """A tone whose pitch changes every 2 s (300, 400, ... Hz) so placement is checkable."""
    t = np.arange(int(sr * seconds)) / sr
    freq = 300.0 + 100.0 * np.floor(t / 2.0)
    phase = 2 * np.pi * np.cumsum(freq) / sr
    return (0.5 * np.sin(phase)).astype(np.float32)


def _expected_freq(t: float) -> float:
    return 300.0 + 100.0 * np.floor(t / 2.0)


def _dominant_freq(x: np.ndarray, sr: int = 16000) -> float:
    win = np.hanning(len(x))
    spec = np.abs(np.fft.rfft(x * win))
    return float(np.argmax(spec) * sr / len(x))


def _write_sf(path: Path, fmt: str, subtype: str, sr: int = SR_IN) -> Path:
    mono = _stepped_sine(sr, DURATION)
    stereo = np.stack([mono, mono], axis=1)
    try:
        sf.write(str(path), stereo, sr, format=fmt, subtype=subtype)
    except (sf.LibsndfileError, ValueError, TypeError) as exc:
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype}: {exc}")
    return path


def _write_m4a(path: Path, sr: int = SR_IN) -> Path:
    mono = _stepped_sine(sr, DURATION)
    planar = np.ascontiguousarray(np.stack([mono, mono]))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr, layout="stereo")
        for i in range(0, planar.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(planar[:, i : i + 1024]), format="fltp", layout="stereo"
            )
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


FORMATS = {
    "wav": lambda p: _write_sf(p / "a.wav", "WAV", "PCM_16"),
    "flac": lambda p: _write_sf(p / "a.flac", "FLAC", "PCM_16"),
    "ogg": lambda p: _write_sf(p / "a.ogg", "OGG", "VORBIS"),
    "opus": lambda p: _write_sf(p / "a.opus", "OGG", "OPUS", sr=48000),
    "mp3": lambda p: _write_sf(p / "a.mp3", "MP3", "MPEG_LAYER_III"),
    "m4a": lambda p: _write_m4a(p / "a.m4a"),
}


@pytest.fixture(params=sorted(FORMATS))
def encoded(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    return request.param, FORMATS[request.param](tmp_path)


def test_probe(encoded: tuple[str, Path]) -> None:
    fmt, path = encoded
    info = probe(path)
    assert isinstance(info, AudioInfo)
    assert info.duration == pytest.approx(DURATION, abs=0.1)  # AAC/MP3 padding
    assert info.channels == 2
    assert info.samplerate in (SR_IN, 48000)
    assert info.backend == ("av" if fmt == "m4a" else "soundfile")
    assert info.seekable


def test_excerpts_lengths_and_content(encoded: tuple[str, Path]) -> None:
    _, path = encoded
    spans = [(0.5, 1.0), (8.3, 1.2), (4.4, 1.0)]  # deliberately not in time order
    out = read_excerpts(path, spans, sr=16000)
    assert len(out) == 3
    for (start, dur), x in zip(spans, out, strict=True):
        assert x.dtype == np.float32 and x.ndim == 1
        assert abs(len(x) - dur * 16000) <= 2
        # Codec delay (AAC priming, MP3 decoder delay) is a few ms: trim the edges.
        mid = x[800:-800]
        assert _dominant_freq(mid) == pytest.approx(_expected_freq(start + dur / 2), abs=8)
        assert np.sqrt(np.mean(mid**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_spans_clipped_to_file(encoded: tuple[str, Path]) -> None:
    _, path = encoded
    out = read_excerpts(path, [(10.0, 5.0), (30.0, 2.0)], sr=16000)
    assert len(out) == 1  # second span lies entirely past the end
    assert 1.9 * 16000 <= len(out[0]) <= 2.1 * 16000
    with pytest.raises(DecodeError):
        read_excerpts(path, [(100.0, 5.0)], sr=16000)


def test_whole_file(encoded: tuple[str, Path]) -> None:
    _, path = encoded
    x = load_mono(path, sr=16000)
    assert x.dtype == np.float32
    assert len(x) == pytest.approx(DURATION * 16000, abs=0.1 * 16000)
    assert read_excerpts(path, None, sr=22050)[0].size == pytest.approx(
        DURATION * 22050, abs=0.1 * 22050
    )


def test_m4a_seek_far_ahead(tmp_path: Path) -> None:
    """A long M4A where later spans are reached by seeking, not decoding the gap."""
    sr = 22050
    seconds = 40.0
    t = np.arange(int(sr * seconds)) / sr
    freq = 300.0 + 100.0 * np.floor(t / 10.0)
    mono = (0.5 * np.sin(2 * np.pi * np.cumsum(freq) / sr)).astype(np.float32)
    path = tmp_path / "long.m4a"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sr, layout="mono")
        for i in range(0, mono.size, 1024):
            frame = av.AudioFrame.from_ndarray(
                mono[None, i : i + 1024].copy(), format="fltp", layout="mono"
            )
            frame.sample_rate = sr
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    spans = [(2.0, 2.0), (33.0, 2.0), (14.0, 2.0)]
    out = read_excerpts(path, spans)
    for (start, dur), x in zip(spans, out, strict=True):
        assert abs(len(x) - dur * 16000) <= 2
        assert _dominant_freq(x[800:-800]) == pytest.approx(
            300.0 + 100.0 * np.floor(start / 10.0), abs=8
        )


def test_stereo_is_averaged_to_mono(tmp_path: Path) -> None:
    sr = 16000
    t = np.arange(sr * 2) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = -left  # cancels exactly in a mono mix
    path = tmp_path / "st.wav"
    sf.write(str(path), np.stack([left, right], axis=1), sr, subtype="FLOAT")
    x = load_mono(path, sr=sr)
    assert np.max(np.abs(x)) < 1e-6

    sf.write(str(path), np.stack([left, np.zeros_like(left)], axis=1), sr, subtype="FLOAT")
    x = load_mono(path, sr=sr)
    assert np.max(np.abs(x)) == pytest.approx(0.25, rel=1e-3)


@pytest.mark.parametrize("suffix", [".flac", ".mp3", ".m4a", ".wav"])
def test_random_bytes_raise(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"junk{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(40000))
    with pytest.raises(DecodeError):
        probe(path)
    with pytest.raises(DecodeError):
        read_excerpts(path, None)


def test_truncated_wav_header(tmp_path: Path) -> None:
    good = _write_sf(tmp_path / "good.wav", "WAV", "PCM_16")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(good.read_bytes()[:30])
    with pytest.raises(DecodeError):
        probe(bad)
    with pytest.raises(DecodeError):
        read_excerpts(bad, [(0.0, 1.0)])


def test_corrupt_data_mid_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for fmt, sub, name in [("FLAC", "PCM_16", "c.flac"), ("OGG", "VORBIS", "c.ogg")]:
        path = _write_sf(tmp_path / name, fmt, sub)
        data = bytearray(path.read_bytes())
        # Damage a stretch in the first half; the final pages stay intact so
        # the header still promises the full length.
        start = len(data) // 3
        data[start : start + 4000] = rng.bytes(4000)
        path.write_bytes(bytes(data))
        with pytest.raises(DecodeError):
            read_excerpts(path, None)


def test_empty_and_missing(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.touch()
    with pytest.raises(DecodeError, match="empty"):
        probe(empty)
    with pytest.raises(DecodeError, match="empty"):
        read_excerpts(empty, None)

    header_only = tmp_path / "header.wav"
    sf.write(str(header_only), np.zeros((0, 1)), 16000)
    with pytest.raises(DecodeError, match="empty"):
        probe(header_only)
    with pytest.raises(DecodeError):
        read_excerpts(header_only, None)

    with pytest.raises(DecodeError, match="file not found"):
        probe(tmp_path / "nope.flac")
    with pytest.raises(DecodeError, match="file not found"):
        read_excerpts(tmp_path / "nope.flac", [(0.0, 1.0)])
