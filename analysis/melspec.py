"""musicnn's input representation: log-compressed mel patches of 187 frames × 96 bands.

Also home of the short-time power spectrum that :mod:`analysis.features` shares.
``librosa.stft`` transforms along the strided frame axis in 256 KB column
blocks; framing with a strided view and transforming contiguous rows in
cache-sized blocks gives the same float32 spectra ~1.5x faster on 3 s
excerpts and ~3x faster on whole tracks, and STFTs were the largest
non-network cost after decoding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import librosa
import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from analysis.sampling import HOP, N_FFT, N_MELS, PATCH_FRAMES, SAMPLE_RATE

__all__ = ["log_mel", "patches", "power_blocks"]

_MEL_BASIS = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)
_MEL_BASIS_T = np.ascontiguousarray(_MEL_BASIS.T)
_WINDOW = librosa.filters.get_window("hann", N_FFT, fftbins=True).astype(np.float32)

#: Windowed frames transformed per FFT call (1 MB of float32): large enough to
#: amortise call overhead, small enough that the frames, their spectrum and its
#: power stay in L2 cache (twice as fast as whole-excerpt blocks) and that an
#: hour-long track never materialises all its frames at once.
_BLOCK_VALUES = 1 << 18

#: Excerpts whose lengths differ by at most this many samples are stacked and
#: transformed together; the extra zero padding only adds frames that are cut off.
_STACK_SLACK = 4 * HOP


def power_blocks(
    y: np.ndarray, n_fft: int, hop: int, window: np.ndarray, center: bool = False
) -> Iterator[np.ndarray]:
    """Power spectrum ``|STFT|²`` of ``y`` (..., samples), yielded in blocks of frames.

    Each block is float32 (..., frames, n_fft // 2 + 1) and the blocks follow
    each other in time; frame placement is librosa's (``center`` pads
    ``n_fft // 2`` zeros at both ends).  The FFT runs in the precision of
    ``y * window``.
    """
    if center:
        pad = [(0, 0)] * (y.ndim - 1) + [(n_fft // 2, n_fft // 2)]
        y = np.pad(y, pad)
    if y.shape[-1] < n_fft:
        return
    frames = sliding_window_view(y, n_fft, axis=-1)[..., ::hop, :]
    n = frames.shape[-2]
    lead = int(np.prod(frames.shape[:-2], dtype=np.int64))
    step = max(1, _BLOCK_VALUES // (n_fft * max(1, lead)))
    for j in range(0, n, step):
        spec = scipy.fft.rfft(frames[..., j : j + step, :] * window, axis=-1, overwrite_x=True)
        power = spec.real**2
        power += spec.imag**2
        yield power.astype(np.float32, copy=False)


def _log_mel_rows(y: np.ndarray, center: bool = True) -> np.ndarray:
    """[..., frames, 96] log-mel of float32 signals y (..., samples)."""
    if center:
        pad = [(0, 0)] * (y.ndim - 1) + [(N_FFT // 2, N_FFT // 2)]
        y = np.pad(y, pad)
    frames = 1 + (y.shape[-1] - N_FFT) // HOP
    mel = np.empty((*y.shape[:-1], frames, N_MELS), dtype=np.float32)
    j = 0
    for p in power_blocks(y, N_FFT, HOP, _WINDOW):
        n = p.shape[-2]
        rows = p.reshape(-1, p.shape[-1]) @ _MEL_BASIS_T
        mel[..., j : j + n, :] = rows.reshape(*p.shape[:-1], N_MELS)
        j += n
    mel *= 10000.0
    mel += 1.0
    return np.log10(mel, out=mel)


def log_mel(y: np.ndarray) -> np.ndarray:
    """[frames, 96] log10(1 + 10000·mel power), as the MSD_musicnn network was trained on.

    Same parameters as musicnn's own extractor (librosa's Slaney mel filters,
    power spectrogram, centred frames); computed with a precomputed filter bank
    so that the per-track cost is one STFT and one matrix product.
    """
    y = np.ascontiguousarray(y, dtype=np.float32).reshape(-1)
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    return _log_mel_rows(y)


def _whole_patches(mel: np.ndarray) -> np.ndarray:
    n = mel.shape[0] // PATCH_FRAMES
    if n == 0:
        # Silence in log-mel is 0, so zero-padding keeps a very short track usable.
        padded = np.zeros((PATCH_FRAMES, N_MELS), dtype=np.float32)
        padded[: mel.shape[0]] = mel
        return padded[None]
    return mel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, N_MELS)


def patches(excerpts: Sequence[np.ndarray]) -> np.ndarray:
    """Non-overlapping [N, 187, 96] patches from each excerpt.

    An excerpt shorter than one patch is zero-padded (silence in log-mel is 0)
    so that even a very short track yields one patch.  The sampled plan's
    excerpts all have (almost) the same length, so they are transformed as one
    stacked array: one FFT and one matrix product per track instead of per
    excerpt.
    """
    xs = [np.ascontiguousarray(y, dtype=np.float32).reshape(-1) for y in excerpts]
    if not xs:
        return np.zeros((0, PATCH_FRAMES, N_MELS), dtype=np.float32)
    sizes = [max(x.size, N_FFT) for x in xs]
    if len(xs) > 1 and max(sizes) - min(sizes) <= _STACK_SLACK:
        # Zero rows with the centring pad built in: one copy of the audio.
        half = N_FFT // 2
        stacked = np.zeros((len(xs), max(sizes) + 2 * half), dtype=np.float32)
        for row, x in zip(stacked, xs, strict=True):
            row[half : half + x.size] = x
        mels = _log_mel_rows(stacked, center=False)
        # Frames an excerpt would have had on its own (centred STFT).
        out = [_whole_patches(mel[: 1 + n // HOP]) for mel, n in zip(mels, sizes, strict=True)]
    else:
        out = [_whole_patches(log_mel(x)) for x in xs]
    return np.concatenate(out, axis=0)
