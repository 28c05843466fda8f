"""The hand-rolled STFT must match librosa's, and stacking excerpts must not change patches."""

from __future__ import annotations

import librosa
import numpy as np
import pytest

import analysis.melspec as melspec
from analysis.melspec import log_mel, patches, power_blocks
from analysis.sampling import HOP, N_FFT, PATCH_FRAMES


def _signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    y = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(n)
    return y.astype(np.float32)


@pytest.mark.parametrize("center", [False, True])
@pytest.mark.parametrize(("n_fft", "hop"), [(512, 256), (1024, 128), (4096, 2048)])
def test_power_blocks_match_librosa(
    n_fft: int, hop: int, center: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(melspec, "_BLOCK_VALUES", 5 * n_fft)  # several blocks
    y = _signal(40000)
    window = librosa.filters.get_window("hann", n_fft, fftbins=True).astype(np.float32)
    got = np.concatenate(list(power_blocks(y, n_fft, hop, window, center=center)))
    spec = librosa.stft(y, n_fft=n_fft, hop_length=hop, window=window, center=center)
    want = (spec.real**2 + spec.imag**2).T
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(want.max()))


def test_power_blocks_of_a_too_short_signal_is_empty() -> None:
    window = np.ones(N_FFT, np.float32)
    assert list(power_blocks(np.zeros(100, np.float32), N_FFT, HOP, window)) == []


def test_log_mel_matches_librosa_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(melspec, "_BLOCK_VALUES", 7 * N_FFT)
    y = _signal(50000)
    spec = librosa.stft(y, n_fft=N_FFT, hop_length=HOP, window=melspec._WINDOW, center=True)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    want = np.log10(1.0 + 10000.0 * (melspec._MEL_BASIS @ power)).T
    np.testing.assert_allclose(log_mel(y), want, rtol=1e-5, atol=1e-5)


def test_stacked_patches_equal_one_excerpt_at_a_time() -> None:
    # Lengths as read_excerpts returns them: equal to within a few samples.
    excerpts = [_signal(48128 + d, seed=i) for i, d in enumerate((0, 1, -1, 0, 37))]
    one_by_one = np.concatenate([patches([x]) for x in excerpts])
    stacked = patches(excerpts)
    assert stacked.shape == one_by_one.shape == (5, PATCH_FRAMES, 96)
    np.testing.assert_allclose(stacked, one_by_one, rtol=0, atol=1e-5)


def test_mixed_lengths_are_not_stacked() -> None:
    excerpts = [_signal(100), _signal(48128), _signal(3 * 48128, seed=2)]
    out = patches(excerpts)
    assert out.shape == (1 + 1 + 3, PATCH_FRAMES, 96)
    np.testing.assert_allclose(out[2:], patches([excerpts[2]]), atol=1e-6)
    assert patches([]).shape == (0, PATCH_FRAMES, 96)
