import numpy as np
import pytest

from analysis.melspec import log_mel, patches
from analysis.sampling import (
    DEFAULT,
    FULL,
    PATCH_FRAMES,
    PATCH_SECONDS,
    SamplingPlan,
    excerpt_spans,
    plan_for_mode,
)


def test_full_reads_everything() -> None:
    assert excerpt_spans(240.0, FULL) is None


def test_sampled_spans_are_spread_inside_the_track() -> None:
    spans = excerpt_spans(240.0, DEFAULT)
    assert spans is not None and len(spans) == DEFAULT.segments
    starts = [s for s, _ in spans]
    assert starts == sorted(starts)
    for start, length in spans:
        assert start >= 240 * DEFAULT.skip_edges - 1e-6
        assert start + length <= 240 * (1 - DEFAULT.skip_edges) + 1e-6
    for (s1, _), (s2, _) in zip(spans, spans[1:], strict=False):
        assert s2 - s1 >= PATCH_SECONDS - 1e-6  # distinct patches
    # On the full mode's patch grid: the same STFT frames as full analysis.
    for start, _ in spans:
        k = start / PATCH_SECONDS
        assert abs(k - round(k)) < 1e-6


def test_spans_stay_inside_odd_durations() -> None:
    for duration in (121.3, 137.0, 200.01, 3600.5):
        spans = excerpt_spans(duration, DEFAULT)
        assert spans is not None and len({s for s, _ in spans}) == DEFAULT.segments
        assert spans[0][0] >= 0 and spans[-1][0] + spans[-1][1] <= duration + 1e-6


def test_short_tracks_are_read_whole() -> None:
    assert excerpt_spans(20.0, DEFAULT) is None
    assert excerpt_spans(0.0, DEFAULT) is None


def test_excerpts_yield_whole_patches() -> None:
    plan = SamplingPlan(segments=2, patches_per_segment=3)
    y = np.zeros(int(plan.excerpt_seconds * 16000), np.float32)
    assert patches([y, y]).shape == (6, PATCH_FRAMES, 96)


def test_short_audio_gives_one_padded_patch() -> None:
    p = patches([np.ones(1000, np.float32) * 0.1])
    assert p.shape == (1, PATCH_FRAMES, 96)
    assert np.all(p[0, 10:] == 0)


def test_log_mel_is_compressed_power() -> None:
    y = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    mel = log_mel(y)
    assert mel.shape[1] == 96 and mel.min() >= 0
    assert int(mel.mean(axis=0).argmax()) in range(30, 60)  # ~1 kHz band


def test_plan_for_mode() -> None:
    assert plan_for_mode("full") is FULL and plan_for_mode("sampled") is DEFAULT
    with pytest.raises(ValueError, match="unknown analysis mode"):
        plan_for_mode("quick")


@pytest.mark.parametrize("suffix", [".wav", ".flac"])
def test_sampled_patches_are_full_mode_patches(tmp_path, suffix) -> None:
    """A sampled patch is the patch full analysis computes at that place (bar the first frame)."""
    from analysis.decode import read_excerpts
    from tests.conftest import write_track

    rng = np.random.default_rng(3)
    seconds = 150.0
    t = np.arange(int(seconds * 16000)) / 16000
    # Changing pitch and noise so that every patch differs from its neighbours.
    audio = 0.3 * np.sin(2 * np.pi * (200 + 2 * t) * t) + 0.05 * rng.standard_normal(t.size)
    path = write_track(tmp_path / f"sweep{suffix}", audio.astype(np.float32), sr=16000)

    spans = excerpt_spans(seconds, DEFAULT)
    assert spans is not None
    sampled = patches(read_excerpts(path, spans, sr=16000))
    full = patches(read_excerpts(path, None, sr=16000))
    assert sampled.shape[0] == len(spans)
    for patch, (start, _) in zip(sampled, spans, strict=True):
        k = round(start / PATCH_SECONDS)
        np.testing.assert_allclose(patch[1:], full[k, 1:], rtol=0, atol=1e-4)
