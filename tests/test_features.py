"""Feature tests on synthetic signals whose tempo, key and level are known."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.features import energy, estimate_key, loudness_db, tempo_bpm

SR = 16000
NOTE = {
    n: i for i, n in enumerate(("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"))
}


def click_track(bpm: float, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    y = np.zeros(n, np.float32)
    length = int(0.02 * SR)
    t = np.arange(length) / SR
    click = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.003)).astype(np.float32)
    for onset in np.arange(0.0, seconds - 0.03, 60.0 / bpm):
        i = int(round(onset * SR))
        y[i : i + length] += click[: n - i]
    return 0.8 * y


def harmonic_chord(midis: list[int], seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = np.zeros_like(t)
    for m in midis:
        f0 = 440.0 * 2 ** ((m - 69) / 12)
        for h in range(1, 7):
            if f0 * h < SR / 2:
                y += np.sin(2 * np.pi * f0 * h * t) / h
    return y * np.minimum(1.0, t / 0.02) * np.exp(-1.5 * t)


def progression(chords: list[tuple[str, bool]], reps: int = 3) -> np.ndarray:
    parts = []
    for _ in range(reps):
        for root, minor in chords:
            r = 60 + NOTE[root]
            parts.append(harmonic_chord([r - 12, r, r + (3 if minor else 4), r + 7], 1.0))
    y = np.concatenate(parts)
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def drum_loop(bpm: float, seconds: float, gain: float = 0.9, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    y = np.zeros(n)
    tk = np.arange(int(0.25 * SR)) / SR
    kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-30 * tk)) * tk) * np.exp(-12 * tk)
    snare = 0.6 * rng.standard_normal(int(0.2 * SR)) * np.exp(-20 * np.arange(int(0.2 * SR)) / SR)
    hat = 0.2 * np.diff(rng.standard_normal(801)) * np.exp(-80 * np.arange(800) / SR)
    beat = 60.0 / bpm

    def put(sound: np.ndarray, at: float) -> None:
        i = int(round(at * SR))
        if i < n:
            y[i : i + len(sound)] += sound[: n - i]

    for b, at in enumerate(np.arange(0.0, seconds, beat)):
        put(kick if b % 2 == 0 else snare, at)
        put(hat, at)
        put(hat, at + beat / 2)
    y = np.tanh(2.5 * y)
    return (gain * y / np.abs(y).max()).astype(np.float32)


def soft_pad(seconds: float, gain: float = 0.05) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    y = sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t + m) for m in (57, 60, 64, 69))
    y = y * (0.8 + 0.2 * np.sin(2 * np.pi * 0.1 * t))
    return (gain * y / np.abs(y).max()).astype(np.float32)


@pytest.mark.parametrize("bpm", [90, 120, 128, 140, 174])
def test_tempo_click_track_whole(bpm: float) -> None:
    assert tempo_bpm([click_track(bpm, 30.0)]) == pytest.approx(bpm, rel=0.02)


@pytest.mark.parametrize("bpm", [90, 120, 128, 140, 174])
def test_tempo_click_track_excerpts(bpm: float) -> None:
    y = click_track(bpm, 40.0)
    # Discontinuous pieces at arbitrary phases: joins must not fake a pulse.
    excerpts = [y[int(a * SR) : int((a + 9.0) * SR)] for a in (0.7, 14.3, 27.9)]
    assert tempo_bpm(excerpts) == pytest.approx(bpm, rel=0.02)


@pytest.mark.parametrize("bpm", [100, 128])
def test_tempo_drums_not_doubled_by_hihats(bpm: float) -> None:
    assert tempo_bpm([drum_loop(bpm, 30.0)]) == pytest.approx(bpm, rel=0.02)


def test_tempo_silence_and_empty() -> None:
    assert tempo_bpm([np.zeros(SR * 10, np.float32)]) == 0.0
    assert tempo_bpm([]) == 0.0
    assert tempo_bpm([np.zeros(100, np.float32)]) == 0.0


@pytest.mark.parametrize(
    ("chords", "key", "scale"),
    [
        ([("D", False), ("G", False), ("A", False), ("D", False)], "D", "major"),
        ([("A", True), ("D", True), ("E", False), ("A", True)], "A", "minor"),
        ([("C", False), ("F", False), ("G", False), ("C", False)], "C", "major"),
        ([("F#", True), ("B", True), ("C#", False), ("F#", True)], "F#", "minor"),
        ([("A#", False), ("D#", False), ("F", False), ("A#", False)], "A#", "major"),
    ],
)
def test_key_of_progressions(chords: list[tuple[str, bool]], key: str, scale: str) -> None:
    y = progression(chords)
    name, mode, strength = estimate_key([y])
    assert (name, mode) == (key, scale)
    assert 0.5 < strength <= 1.0
    # Same answer from discontinuous excerpts.
    excerpts = [y[: 4 * SR], y[5 * SR : 9 * SR]]
    assert estimate_key(excerpts)[:2] == (key, scale)


def test_key_silence() -> None:
    assert estimate_key([np.zeros(SR * 5, np.float32)])[2] == 0.0


def test_loudness() -> None:
    t = np.arange(SR * 5) / SR
    sine = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    assert loudness_db([sine]) == pytest.approx(-3.01, abs=0.05)
    assert loudness_db([sine[: SR * 2], sine[SR * 3 :]]) == pytest.approx(-3.01, abs=0.05)
    assert loudness_db([0.1 * sine]) == pytest.approx(-23.01, abs=0.05)
    assert loudness_db([np.zeros(SR, np.float32)]) == -100.0
    assert loudness_db([]) == -100.0


def test_energy_ordering_and_range() -> None:
    drums = drum_loop(128, 20.0)
    pad = soft_pad(20.0)
    loud_pad = soft_pad(20.0, gain=0.9)
    quiet_drums = drum_loop(128, 20.0, gain=0.05)
    e_drums, e_pad = energy([drums]), energy([pad])
    assert e_drums > 0.8
    assert e_pad < 0.15
    assert e_drums > energy([loud_pad]) > e_pad
    assert e_drums > energy([quiet_drums])
    assert energy([np.zeros(SR * 5, np.float32)]) == 0.0
    for e in (e_drums, e_pad, energy([loud_pad]), energy([quiet_drums])):
        assert 0.0 <= e <= 1.0
    # Deterministic and independent of excerpt order.
    parts = [drums[: 5 * SR], drums[8 * SR : 15 * SR]]
    assert energy(parts) == energy(parts)
    assert energy(parts) == pytest.approx(energy(parts[::-1]), abs=1e-9)


def test_onset_spectrogram_matches_librosa() -> None:
    """The shared STFT replaced librosa.stft; the mel power must stay the same."""
    import librosa

    from analysis import features

    x = drum_loop(128, 6.0)
    spec = librosa.stft(x, n_fft=1024, hop_length=128, center=False)
    want = features._mel_filter(SR) @ (spec.real**2 + spec.imag**2)
    got = features._mel_power(x, SR)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * float(want.max()))


def test_key_strength_matches_per_frame_chroma() -> None:
    """Summing magnitudes before the chroma map is the same as mapping every frame."""
    import librosa

    from analysis import features

    y = progression([("D", False), ("G", False), ("A", False), ("D", False)])
    parts = [y[: 4 * SR], y[5 * SR : 11 * SR]]
    fb = features._chroma_filter(SR)
    chroma = sum(
        (fb @ np.abs(librosa.stft(x, n_fft=4096, hop_length=2048, center=False))).sum(axis=1)
        for x in parts
    )
    c = chroma - chroma.mean()
    corr = features._PROFILES @ (c / np.linalg.norm(c))
    name, scale, strength = estimate_key(parts)
    best = int(np.argmax(corr))
    assert (name, scale) == (features.KEY_NAMES[best % 12], "major" if best < 12 else "minor")
    assert strength == pytest.approx(float(corr[best]), abs=1e-5)


def test_shared_envelopes_give_the_same_features() -> None:
    """The pipeline computes onset envelopes once for tempo and energy; nothing may change."""
    from analysis import features

    parts = [drum_loop(128, 6.0), np.zeros(100, np.float32), soft_pad(5.0, gain=0.5)]
    envs = features.onset_envelopes(parts)
    assert [e.size > 0 for e, _ in envs] == [True, False, True]  # too short for one frame
    assert tempo_bpm(parts, envelopes=envs) == tempo_bpm(parts)
    assert energy(parts, envelopes=envs) == energy(parts)
