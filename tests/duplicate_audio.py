"""Generated music for the duplicate tests: a melody over a pulse, and the copies of it users have.

Real MP3s and cuts of real music are measured by bench/duplicates.py on the dev
corpus; these tests need only audio with music-like fine structure, made in
milliseconds and identical on every run.
"""

from __future__ import annotations

import numpy as np

from analysis import audio_fingerprint as afp
from analysis.sampling import DEFAULT, SAMPLE_RATE, excerpt_spans


def song(seed: int, seconds: float = 150.0) -> np.ndarray:
    """A random melody (quarter-second notes with two harmonics) over noise-burst drums."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    note_len = 0.25
    notes = rng.integers(45, 80, int(seconds / note_len) + 1)
    freq = 440.0 * 2.0 ** ((notes - 69) / 12.0)
    idx = (t / note_len).astype(np.int64)
    phase = 2 * np.pi * np.cumsum(freq[idx]) / SAMPLE_RATE
    frac = (t / note_len) - idx
    env = np.exp(-3.0 * frac)
    tone = (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)) * env
    beat = np.exp(-20.0 * ((t / 0.5) % 1.0))
    drums = rng.standard_normal(n) * beat * 0.3
    y = 0.2 * (tone + drums)
    return y.astype(np.float32)


def louder_with_silence(y: np.ndarray, db: float = 3.0, silence_s: float = 0.5) -> np.ndarray:
    return np.concatenate([np.zeros(int(silence_s * SAMPLE_RATE), np.float32),
                           (y * 10.0 ** (db / 20.0)).astype(np.float32)])


def first_part(y: np.ndarray, share: float = 0.8) -> np.ndarray:
    return y[: int(len(y) * share)].copy()


def lossy(y: np.ndarray, seed: int = 7) -> np.ndarray:
    """A stand-in for a lossy re-encode: treble dulled, a little delay, noise at -45 dB."""
    rng = np.random.default_rng(seed)
    smooth = np.convolve(y, np.ones(3) / 3.0, mode="same")
    delayed = np.concatenate([np.zeros(17, np.float32), smooth[:-17]])
    return (delayed + rng.standard_normal(len(y)) * 0.2 * 10 ** (-45 / 20)).astype(np.float32)


def fingerprint_of(y: np.ndarray) -> afp.Fingerprint:
    """What the analyzer computes: the default plan's excerpts of ``y``, then the fingerprint."""
    duration = len(y) / SAMPLE_RATE
    spans = excerpt_spans(duration, DEFAULT)
    if spans is None:
        return afp.compute([y], [0.0])
    excerpts = [y[int(round(s * SAMPLE_RATE)): int(round((s + d) * SAMPLE_RATE))] for s, d in spans]
    return afp.compute(excerpts, [s for s, _ in spans])
