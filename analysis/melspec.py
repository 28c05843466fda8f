"""musicnn's input representation: log-compressed mel patches of 187 frames × 96 bands."""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np

from analysis.sampling import HOP, N_FFT, N_MELS, PATCH_FRAMES, SAMPLE_RATE

_MEL_BASIS = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)
_WINDOW = librosa.filters.get_window("hann", N_FFT, fftbins=True).astype(np.float32)


def log_mel(y: np.ndarray) -> np.ndarray:
    """[frames, 96] log10(1 + 10000·mel power), as the MSD_musicnn network was trained on.

    Same parameters as musicnn's own extractor (librosa's Slaney mel filters,
    power spectrogram, centred frames); computed with a precomputed filter bank
    so that the per-track cost is one STFT and one matrix product.
    """
    y = np.ascontiguousarray(y, dtype=np.float32)
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    spec = librosa.stft(y, n_fft=N_FFT, hop_length=HOP, window=_WINDOW, center=True)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    mel = _MEL_BASIS @ power
    return np.log10(1.0 + 10000.0 * mel).T.astype(np.float32)


def patches(excerpts: Sequence[np.ndarray]) -> np.ndarray:
    """Non-overlapping [N, 187, 96] patches from each excerpt.

    An excerpt shorter than one patch is zero-padded (silence in log-mel is 0)
    so that even a very short track yields one patch.
    """
    out: list[np.ndarray] = []
    for y in excerpts:
        mel = log_mel(y)
        n = mel.shape[0] // PATCH_FRAMES
        if n == 0:
            padded = np.zeros((PATCH_FRAMES, N_MELS), dtype=np.float32)
            padded[: mel.shape[0]] = mel
            out.append(padded[None])
            continue
        out.append(mel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, N_MELS))
    if not out:
        return np.zeros((0, PATCH_FRAMES, N_MELS), dtype=np.float32)
    return np.concatenate(out, axis=0)
