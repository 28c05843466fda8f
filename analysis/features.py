"""Cheap musical descriptors: tempo, key, loudness and energy.

Every function takes a sequence of excerpts (mono float32 at ``sr``) rather
than one signal, because the analyser usually decodes only a few
discontinuous pieces of a track (e.g. 4 x 9 s).  Statistics are therefore
pooled *across* excerpts and never computed over the artificial joins
between them.  The same functions work on a whole track passed as a single
excerpt.

They must stay cheap next to the neural network that runs on the same audio,
so everything is a handful of STFTs plus vectorised numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import librosa
import numpy as np

from analysis.melspec import power_blocks

__all__ = ["KEY_NAMES", "energy", "estimate_key", "loudness_db", "onset_envelopes", "tempo_bpm"]

#: Per excerpt: (dB flux, pulse flux) onset envelopes, see :func:`onset_envelopes`.
Envelopes = list[tuple[np.ndarray, np.ndarray]]

KEY_NAMES: tuple[str, ...] = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
_KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

_SILENCE_DB = -100.0
_SILENT_RMS = 10.0 ** (_SILENCE_DB / 20.0)

# Onset envelope: hop 128 at 16 kHz gives 8 ms frames, fine enough that the
# autocorrelation lag grid alone is ~1 % at 174 bpm, before interpolation.
_ONSET_HOP = 128
_ONSET_NFFT = 1024
_ONSET_MELS = 64

_BPM_MIN, _BPM_MAX = 40.0, 220.0
_BPM_PRIOR_CENTRE = 120.0
_BPM_PRIOR_OCTAVES = 1.0  # std-dev of the log2-normal prior: mild on purpose

# Below this normalised autocorrelation there is no pulse worth reporting
# (sustained pads, noise): 0.0 is more useful downstream than a random bpm.
_MIN_PULSE = 0.05
# Off-beat / on-beat strength above which the faster level is the beat.
# Equal clicks give ~1.0; drum patterns with accented beats and eighth-note
# hi-hats stay around 0.6-0.7 with the envelope used here.
_HALF_PERIOD_RATIO = 0.85

_ACF_SMOOTH = np.exp(-0.5 * (np.arange(-3, 4) / 1.0) ** 2)
_ACF_SMOOTH /= _ACF_SMOOTH.sum()

_KEY_NFFT = 4096  # 3.9 Hz bins at 16 kHz: semitone-resolving from ~70 Hz up
_KEY_HOP = 2048


# --------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------


def _nonempty(excerpts: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(x, dtype=np.float32).reshape(-1) for x in excerpts if np.size(x) > 0]


def _mean_power(excerpts: Sequence[np.ndarray]) -> float:
    """Mean square over all samples of all excerpts, without concatenating."""
    xs = _nonempty(excerpts)
    n = sum(x.size for x in xs)
    if n == 0:
        return 0.0
    total = sum(float(np.dot(x.astype(np.float64), x.astype(np.float64))) for x in xs)
    return total / n


@lru_cache(maxsize=8)
def _mel_filter(sr: int) -> np.ndarray:
    return librosa.filters.mel(sr=sr, n_fft=_ONSET_NFFT, n_mels=_ONSET_MELS).astype(np.float32)


_ONSET_WINDOW = librosa.filters.get_window("hann", _ONSET_NFFT, fftbins=True).astype(np.float32)
_KEY_WINDOW = librosa.filters.get_window("hann", _KEY_NFFT, fftbins=True).astype(np.float32)


def _mel_power(x: np.ndarray, sr: int) -> np.ndarray:
    """(n_mels, frames) power mel spectrogram shared by tempo and energy."""
    fb = _mel_filter(sr).T
    blocks = [p @ fb for p in power_blocks(x, _ONSET_NFFT, _ONSET_HOP, _ONSET_WINDOW)]
    return np.concatenate(blocks).T


def _envelopes(x: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Two onset envelopes from one mel spectrogram: (dB flux, pulse flux).

    *dB flux* - mean positive rise per mel band in dB.  Level-independent,
    so ``energy`` can judge activity apart from loudness, and every band's
    onset counts equally, which makes it a robust beat-period detector.
    The floor 80 dB below the excerpt's peak keeps noise in near-silent
    bands from counting as activity.

    *pulse flux* - the same on ``log1p(S / mean)``, close to linear for
    ordinary levels and logarithmic only for strong transients, so loud
    events (kick, snare) outweigh quiet broadband ones (hi-hats).  Used only
    to decide whether the off-beats are as strong as the beats.
    """
    if x.size < _ONSET_NFFT:
        empty = np.zeros(0, np.float32)
        return empty, empty
    mel = _mel_power(x, sr)
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    db_flux = np.maximum(np.diff(db, axis=1), 0.0).mean(axis=0)
    mean = float(mel.mean())
    comp = np.log1p(mel / mean) if mean > 0.0 else np.zeros_like(mel)
    pulse = np.maximum(np.diff(comp, axis=1), 0.0).mean(axis=0)
    return db_flux.astype(np.float32), pulse.astype(np.float32)


# --------------------------------------------------------------------------
# tempo
# --------------------------------------------------------------------------


def _parabolic(y: np.ndarray, i: int) -> float:
    """Sub-sample peak position: the lag grid alone is too coarse for 2 %."""
    if i <= 0 or i >= len(y) - 1:
        return float(i)
    a, b, c = float(y[i - 1]), float(y[i]), float(y[i + 1])
    den = a - 2.0 * b + c
    if den >= 0.0:  # not a maximum (flat or convex)
        return float(i)
    return i + 0.5 * (a - c) / den


def _pooled_autocorrelation(envs: list[np.ndarray], max_lag: int) -> np.ndarray:
    """Unbiased autocorrelation pooled over excerpts.

    Each excerpt is correlated only with itself so the joins between
    discontinuous excerpts add no false periodicity; dividing the summed
    products by the summed overlaps weights long excerpts more and keeps
    long lags from being penalised just for having fewer terms.
    """
    acc = np.zeros(max_lag + 1)
    count = np.zeros(max_lag + 1)
    lags = np.arange(max_lag + 1)
    for env in envs:
        n = env.size
        e = env.astype(np.float64) - env.mean()
        nfft = 1 << int(np.ceil(np.log2(2 * n)))
        spec = np.fft.rfft(e, nfft)
        ac = np.fft.irfft(spec.real**2 + spec.imag**2, nfft)[: max_lag + 1]
        m = min(max_lag + 1, n)
        acc[:m] += ac[:m]
        count += np.maximum(n - lags, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, acc / np.maximum(count, 1), 0.0)
    return out


def _local_peak(ac: np.ndarray, lo: float, hi: float) -> tuple[float, float] | None:
    """Highest local maximum of ``ac`` with lag in [lo, hi]: (interpolated lag, value)."""
    a = max(1, int(np.floor(lo)))
    b = min(len(ac) - 2, int(np.ceil(hi)))
    if b < a:
        return None
    seg = ac[a : b + 1]
    left = ac[a - 1 : b]
    right = ac[a + 1 : b + 2]
    peaks = np.flatnonzero((seg >= left) & (seg > right))
    if peaks.size == 0:
        return None
    i = a + int(peaks[np.argmax(seg[peaks])])
    return _parabolic(ac, i), float(ac[i])


def _normalised_acf(envs: list[np.ndarray], max_lag: int) -> np.ndarray | None:
    ac = _pooled_autocorrelation(envs, max_lag)
    if ac[0] <= 1e-12:
        return None
    # A beat period that is not a whole number of frames splits its peak over
    # two lags; a light smoothing restores comparable peak heights.
    return np.convolve(ac, _ACF_SMOOTH, mode="same") / ac[0]


def onset_envelopes(excerpts: Sequence[np.ndarray], sr: int = 16000) -> Envelopes:
    """Onset envelopes of each non-empty excerpt, for :func:`tempo_bpm` and :func:`energy`.

    Both need them and the STFT behind them is most of either's cost, so a
    caller that wants both computes them once and passes them to each.
    """
    return [_envelopes(x, sr) for x in _nonempty(excerpts)]


def tempo_bpm(
    excerpts: Sequence[np.ndarray], sr: int = 16000, envelopes: Envelopes | None = None
) -> float:
    """Tempo in beats per minute (40-220), or 0.0 when there is no usable pulse.

    librosa's tempo estimator picks an integer autocorrelation lag, which is
    ~2 % coarse at typical hops; here the lag is interpolated and refined
    from several multiples of the beat period.

    Octave choice: a mild log-normal prior around 120 bpm picks among the
    autocorrelation peaks of the dB flux.  The prior alone would report a
    174 bpm click as 87 (87 is nearer 120 on a log scale), so the winner is
    then replaced by its half-period whenever, in the loudness-weighted
    envelope, the off-beat is nearly as strong as the beat: equal on- and
    off-beats mean the real pulse is the faster one, whereas accented beats
    with eighth-note hi-hats keep the slower level.
    """
    nonempty = _nonempty(excerpts)
    xs = [x for x in nonempty if x.size >= _ONSET_NFFT]
    if not xs or _mean_power(xs) <= _SILENT_RMS**2:
        return 0.0
    fps = sr / _ONSET_HOP
    if envelopes is None:
        envelopes = onset_envelopes(xs, sr)
    pairs = [p for p in envelopes if p[0].size > 4]
    if not pairs:
        return 0.0
    lag_min = 60.0 * fps / _BPM_MAX
    lag_max = 60.0 * fps / _BPM_MIN
    longest = max(p[0].size for p in pairs)
    max_lag = int(min(longest - 2, max(lag_max + 2, 4.0 * fps)))
    if max_lag < lag_min + 2:
        return 0.0
    ac = _normalised_acf([p[0] for p in pairs], max_lag)
    ac_pulse = _normalised_acf([p[1] for p in pairs], max_lag)
    if ac is None or ac_pulse is None:
        return 0.0

    # Candidate periods: every local maximum within the bpm range, weighted by the prior.
    lo = max(1, int(np.floor(lag_min)))
    hi = min(len(ac) - 2, int(np.ceil(lag_max)))
    seg = ac[lo : hi + 1]
    is_peak = (seg >= ac[lo - 1 : hi]) & (seg > ac[lo + 1 : hi + 2]) & (seg > 0)
    idx = lo + np.flatnonzero(is_peak)
    if idx.size == 0:
        return 0.0
    bpm = 60.0 * fps / idx
    prior = np.exp(-0.5 * (np.log2(bpm / _BPM_PRIOR_CENTRE) / _BPM_PRIOR_OCTAVES) ** 2)
    best = int(idx[np.argmax(ac[idx] * prior)])
    period, strength = _parabolic(ac, best), float(ac[best])
    if strength < _MIN_PULSE:
        return 0.0

    # Prefer the faster pulse when its off-beat is (almost) as strong as its beat.
    while 0.55 * period >= lag_min:
        beat = _local_peak(ac_pulse, 0.93 * period, 1.07 * period)
        half = _local_peak(ac_pulse, max(lag_min, 0.45 * period), 0.55 * period)
        if beat is None or half is None or half[1] < _HALF_PERIOD_RATIO * beat[1]:
            break
        near = _local_peak(ac, max(lag_min, 0.45 * period), 0.55 * period)
        period, strength = near if near is not None else (half[0], strength)

    # Refine with the multiples of the period that are still clearly there.
    ks, ps = [1.0], [period]
    k = 2
    while (k + 0.1) * period < max_lag and k <= 16:
        pk = _local_peak(ac, (k - 0.1) * period, (k + 0.1) * period)
        if pk is not None and pk[1] >= 0.5 * strength:
            ks.append(float(k))
            ps.append(pk[0])
        k += 1
    karr, parr = np.array(ks), np.array(ps)
    period = float(np.dot(karr, parr) / np.dot(karr, karr))
    return float(np.clip(60.0 * fps / period, _BPM_MIN, _BPM_MAX))


# --------------------------------------------------------------------------
# key
# --------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _chroma_filter(sr: int) -> np.ndarray:
    """STFT-bin to pitch-class weights, built once per sample rate."""
    fb = librosa.filters.chroma(sr=sr, n_fft=_KEY_NFFT, tuning=0.0, norm=None)
    freqs = np.fft.rfftfreq(_KEY_NFFT, 1.0 / sr)
    # Below ~60 Hz bins are wider than a semitone and mostly rumble; above
    # ~5 kHz there is little pitch information, mostly noise and overtones.
    fb[:, (freqs < 60.0) | (freqs > 5000.0)] = 0.0
    return fb.astype(np.float32)


def _key_profiles() -> np.ndarray:
    """All 24 rotated, z-scored profiles: rows 0-11 major C..B, 12-23 minor C..B."""
    rows = [np.roll(p, k) for p in (_KK_MAJOR, _KK_MINOR) for k in range(12)]
    prof = np.array(rows)
    prof = prof - prof.mean(axis=1, keepdims=True)
    return prof / np.linalg.norm(prof, axis=1, keepdims=True)


_PROFILES = _key_profiles()


def estimate_key(excerpts: Sequence[np.ndarray], sr: int = 16000) -> tuple[str, str, float]:
    """(key name, 'major'|'minor', strength in [0, 1]) by Krumhansl-Kessler matching.

    Chroma is pooled over all frames of all excerpts; summing magnitudes
    rather than per-frame-normalised chroma keeps near-silent frames from
    voting as loudly as the music.  Linear magnitudes are used: compressing
    them (sqrt, log) lifts the upper partials, whose fifths and thirds pull
    the estimate towards the dominant key.  Strength is the
    Pearson correlation with the winning profile, clipped to [0, 1]; an
    ambiguous or atonal excerpt gives a low value.
    """
    xs = [x for x in _nonempty(excerpts) if x.size >= _KEY_NFFT]
    if not xs or _mean_power(xs) <= _SILENT_RMS**2:
        return "C", "major", 0.0
    fb = _chroma_filter(sr)
    # The filter bank is linear, so summing magnitudes over frames first and
    # mapping once gives the same pooled chroma as mapping every frame.
    mag_sum = np.zeros(_KEY_NFFT // 2 + 1)
    for x in xs:
        for p in power_blocks(x, _KEY_NFFT, _KEY_HOP, _KEY_WINDOW):
            mag_sum += np.sqrt(p).sum(axis=0, dtype=np.float64)
    chroma = fb.astype(np.float64) @ mag_sum
    c = chroma - chroma.mean()
    norm = np.linalg.norm(c)
    if norm <= 1e-12:
        return "C", "major", 0.0
    corr = _PROFILES @ (c / norm)
    best = int(np.argmax(corr))
    scale = "major" if best < 12 else "minor"
    return KEY_NAMES[best % 12], scale, float(np.clip(corr[best], 0.0, 1.0))


# --------------------------------------------------------------------------
# loudness and energy
# --------------------------------------------------------------------------


def loudness_db(excerpts: Sequence[np.ndarray]) -> float:
    """RMS level in dBFS over all samples (a full-scale sine is about -3 dB), floored at -100."""
    p = _mean_power(excerpts)
    if p <= _SILENT_RMS**2:
        return _SILENCE_DB
    return float(max(_SILENCE_DB, 10.0 * np.log10(p)))


# Mapping constants for ``energy``.
_LOUD_FLOOR_DB = -40.0  # at or below: no loudness contribution
_LOUD_FULL_DB = -10.0  # at or above: full loudness contribution (mastered pop/EDM)
_FLUX_SCALE = 60.0  # dB/s of spectral flux that gives ~63 % of the activity term
_ACTIVITY_WEIGHT = 0.65


def energy(
    excerpts: Sequence[np.ndarray], sr: int = 16000, envelopes: Envelopes | None = None
) -> float:
    """Perceptual energy in [0, 1]: how loud *and* how busy the music is.

    Two terms, each in [0, 1]:

    * loudness ``L``: RMS level mapped linearly from -40 dBFS (0) to
      -10 dBFS (1), clipped;
    * activity ``A``: onset/spectral-flux density, i.e. the mean rise of the
      log-mel spectrum per second (dB/s), mapped by ``1 - exp(-flux / 60)``.
      It is level-independent, so it measures attacks, not volume.

    ``energy = L * (0.35 + 0.65 * A)``.  The product makes loudness a gate -
    a quiet track is never energetic however busy - while activity decides
    how much of that loudness counts: a loud sustained pad lands around
    0.35-0.45, a soft pad near 0, a loud busy drum track near 1.
    Deterministic: no randomness, no dependence on excerpt order.
    """
    xs = _nonempty(excerpts)
    level = loudness_db(xs)
    loud = float(np.clip((level - _LOUD_FLOOR_DB) / (_LOUD_FULL_DB - _LOUD_FLOOR_DB), 0.0, 1.0))
    if loud <= 0.0:
        return 0.0
    if envelopes is None:
        envelopes = onset_envelopes(xs, sr)
    envs = [e for e, _ in envelopes if e.size]
    frames = sum(e.size for e in envs)
    if frames == 0:
        activity = 0.0
    else:
        flux_per_s = float(sum(float(e.sum()) for e in envs) / frames) * (sr / _ONSET_HOP)
        activity = 1.0 - float(np.exp(-flux_per_s / _FLUX_SCALE))
    return float(np.clip(loud * ((1.0 - _ACTIVITY_WEIGHT) + _ACTIVITY_WEIGHT * activity), 0.0, 1.0))
