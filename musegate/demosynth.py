"""Synthesised demo music: a handful of clearly different styles, several tracks each.

The demo must run on a fresh machine with no music, so it makes its own: short
pieces that differ in tempo, timbre, key and texture the way real genres do,
so that "similar songs" has an answer a listener can check. Everything is
generated from a seed; the same call always makes the same audio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SR = 22050
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def tone(freq: float, dur: float, harmonics: np.ndarray, decay: float, attack: float = 0.005) -> np.ndarray:
    """A harmonic tone whose upper partials die faster: the basic shape of plucked and struck sounds."""
    t = np.arange(int(dur * SR)) / SR
    k = np.arange(1, len(harmonics) + 1)[:, None]
    partials = np.sin(2 * np.pi * freq * k * t) * harmonics[:, None] * np.exp(-t * decay * k)
    env = np.minimum(1.0, t / attack) if attack > 0 else 1.0
    return (partials.sum(axis=0) * env).astype(np.float32)


def kick(dur: float = 0.35) -> np.ndarray:
    t = np.arange(int(dur * SR)) / SR
    freq = 45 + 90 * np.exp(-t * 30)
    phase = 2 * np.pi * np.cumsum(freq) / SR
    return (np.sin(phase) * np.exp(-t * 9)).astype(np.float32)


def noise_hit(rng: np.random.Generator, dur: float, decay: float, bright: bool) -> np.ndarray:
    n = rng.standard_normal(int(dur * SR)).astype(np.float32)
    if bright:
        n = np.diff(n, prepend=0.0).astype(np.float32)
    t = np.arange(n.size) / SR
    return n * np.exp(-t * decay).astype(np.float32)


def place(buf: np.ndarray, sound: np.ndarray, at: float, gain: float) -> None:
    start = int(at * SR)
    if start >= buf.size:
        return
    end = min(buf.size, start + sound.size)
    buf[start:end] += gain * sound[: end - start]


MINOR_PROG = ((0, 3, 7), (5, 8, 12), (7, 11, 14), (0, 3, 7))
MAJOR_PROG = ((0, 4, 7), (5, 9, 12), (7, 11, 14), (0, 4, 7))


@dataclass(frozen=True)
class Style:
    name: str
    genre: str
    tempo: float
    render: Callable[[np.random.Generator, float, int, float], np.ndarray]


def _piano_ballad(rng: np.random.Generator, tempo: float, root: int, dur: float) -> np.ndarray:
    buf = np.zeros(int(dur * SR), np.float32)
    beat = 60 / tempo
    harm = np.array([1.0, 0.5, 0.3, 0.15, 0.08, 0.04])
    t, bar = 0.0, 0
    while t < dur:
        chord = MINOR_PROG[bar % 4]
        place(buf, tone(midi_hz(root - 12 + chord[0]), 4 * beat, harm, 0.8), t, 0.35)
        for i in range(8):
            note = root + chord[i % 3] + 12 * (i // 3 % 2)
            place(buf, tone(midi_hz(note), 2 * beat, harm, 1.6), t + i * beat / 2, 0.22)
        t += 4 * beat
        bar += 1
    return buf


def _techno(rng: np.random.Generator, tempo: float, root: int, dur: float) -> np.ndarray:
    buf = np.zeros(int(dur * SR), np.float32)
    beat = 60 / tempo
    k = kick()
    saw = np.array([1 / n for n in range(1, 16)])
    n_beats = int(dur / beat)
    for b in range(n_beats):
        t = b * beat
        place(buf, k, t, 0.9)
        place(buf, noise_hit(rng, 0.06, 60, True), t + beat / 2, 0.25)
        if b % 2 == 1:
            place(buf, noise_hit(rng, 0.2, 18, False), t, 0.35)
        for s in range(2):
            note = root - 24 + (0, 0, 7, 3)[(b + s) % 4]
            place(buf, tone(midi_hz(note), beat / 2, saw, 6.0), t + s * beat / 2, 0.3)
    return buf


def _ambient(rng: np.random.Generator, tempo: float, root: int, dur: float) -> np.ndarray:
    n = int(dur * SR)
    t = np.arange(n) / SR
    buf = np.zeros(n, np.float32)
    chord_len = 8 * 60 / tempo
    for i, chord in enumerate(MAJOR_PROG * int(dur / chord_len / 4 + 1)):
        seg = (t >= i * chord_len) & (t < (i + 1) * chord_len + 2)
        local = t[seg] - i * chord_len
        env = np.clip(local / 2.0, 0, 1) * np.clip((chord_len + 2 - local) / 2.0, 0, 1)
        for interval in chord:
            f = midi_hz(root + interval)
            for detune in (-0.004, 0.0, 0.004):
                buf[seg] += (0.05 * env * np.sin(2 * np.pi * f * (1 + detune) * t[seg])).astype(np.float32)
    shimmer = rng.standard_normal(n).astype(np.float32) * 0.004
    return buf + np.convolve(shimmer, np.ones(32) / 32, mode="same").astype(np.float32)


def _breakbeat(rng: np.random.Generator, tempo: float, root: int, dur: float) -> np.ndarray:
    buf = np.zeros(int(dur * SR), np.float32)
    beat = 60 / tempo
    k = kick(0.2)
    bass = np.array([1.0, 0.3, 0.1])
    pattern = ("k", "h", "s", "h", "h", "k", "s", "h")
    for step in range(int(dur / (beat / 2))):
        t = step * beat / 2
        hit = pattern[step % 8]
        if hit == "k":
            place(buf, k, t, 0.8)
        elif hit == "s":
            place(buf, noise_hit(rng, 0.18, 22, True), t, 0.6)
        place(buf, noise_hit(rng, 0.04, 90, True), t, 0.18)
        if step % 8 == 0:
            place(buf, tone(midi_hz(root - 24), 4 * beat, bass, 0.6), t, 0.5)
    return buf


def _folk_guitar(rng: np.random.Generator, tempo: float, root: int, dur: float) -> np.ndarray:
    buf = np.zeros(int(dur * SR), np.float32)
    beat = 60 / tempo
    harm = np.array([1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.12, 0.08])
    t, bar = 0.0, 0
    while t < dur:
        chord = MAJOR_PROG[bar % 4]
        for b in range(4):
            for j, interval in enumerate((chord[0] - 12, *chord)):
                strum = t + b * beat + j * 0.012
                place(buf, tone(midi_hz(root + interval), 1.5 * beat, harm, 3.5, 0.002), strum, 0.12)
        t += 4 * beat
        bar += 1
    return buf


STYLES: tuple[Style, ...] = (
    Style("Slow piano ballad", "Piano", 68, _piano_ballad),
    Style("Four-to-the-floor techno", "Techno", 130, _techno),
    Style("Ambient pads", "Ambient", 60, _ambient),
    Style("Breakbeat drum and bass", "Drum and Bass", 174, _breakbeat),
    Style("Strummed folk guitar", "Folk", 100, _folk_guitar),
)


def render_track(style: Style, variant: int, seconds: float = 40.0) -> tuple[np.ndarray, dict[str, str]]:
    """One track of ``style``: tempo, key and noise vary with ``variant``; returns audio and tags."""
    rng = np.random.default_rng(1000 * STYLES.index(style) + variant)
    tempo = style.tempo * (1 + 0.04 * (variant - 1.5) / 1.5)
    root = 57 + int(rng.integers(-4, 5))
    audio = style.render(rng, tempo, root, seconds)
    peak = float(np.max(np.abs(audio))) or 1.0
    audio = (audio / peak * 0.8).astype(np.float32)
    fade = np.minimum(1.0, np.arange(audio.size) / (0.5 * SR))
    audio *= np.minimum(fade, fade[::-1]).astype(np.float32)
    key = NOTE_NAMES[root % 12]
    tags = {
        "title": f"{style.name} {variant + 1}",
        "artist": f"musegate demo — {style.genre}",
        "album": "musegate demo library (generated audio)",
        "genre": style.genre,
        "comment": f"generated: {tempo:.0f} bpm, root {key}",
    }
    return audio, tags
