"""From an audio file to a :class:`TrackAnalysis`: decode once, then every feature.

Pure apart from reading the file: the analyzer runs it in worker processes and
the benchmark runs it inline, so both measure the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from analysis import audio_fingerprint, features
from analysis.decode import DecodeError, probe, read_excerpts
from analysis.melspec import patches
from analysis.model import MusicnnModel
from analysis.sampling import SAMPLE_RATE, SamplingPlan, excerpt_spans
from analysis.types import TrackAnalysis
from analysis.version import FEATURES_VERSION, analysis_version  # noqa: F401 - re-exported

# Tempo, key and energy are stable over ~25 s of music; computing them over every
# sampled excerpt would cost as much as the network itself.
FEATURE_EXCERPTS = 8


def analyse_excerpts(
    excerpts: list[np.ndarray],
    duration: float,
    model: MusicnnModel,
    plan: SamplingPlan,
    starts: Sequence[float] | None = None,
) -> TrackAnalysis:
    """``starts`` (seconds) place the excerpts in the track for the duplicate fingerprint;
    without them a single excerpt is taken to start at 0 and several get no fingerprint."""
    if not excerpts or sum(e.size for e in excerpts) == 0:
        raise DecodeError("no audio samples")
    batch = patches(excerpts)
    tags, embeddings = model.run(batch)
    step = max(1, len(excerpts) // FEATURE_EXCERPTS)
    heard = excerpts[step // 2 :: step] if len(excerpts) > FEATURE_EXCERPTS else excerpts
    key, scale, strength = features.estimate_key(heard, SAMPLE_RATE)
    envelopes = features.onset_envelopes(heard, SAMPLE_RATE)
    if starts is None and len(excerpts) == 1:
        starts = [0.0]
    fingerprint = (
        audio_fingerprint.encode(audio_fingerprint.compute(excerpts, starts, SAMPLE_RATE))
        if starts is not None and len(starts) == len(excerpts)
        else None
    )
    return TrackAnalysis(
        embedding=embeddings.mean(axis=0).astype(np.float32),
        tags=tags.mean(axis=0).astype(np.float32),
        tempo=features.tempo_bpm(heard, SAMPLE_RATE, envelopes),
        key=key,
        scale=scale,
        key_strength=strength,
        energy=features.energy(heard, SAMPLE_RATE, envelopes),
        loudness=features.loudness_db(heard),
        duration=duration,
        patches=int(batch.shape[0]),
        version=analysis_version(model, plan),
        fingerprint=fingerprint,
    )


def analyse_file(
    path: str | os.PathLike[str], model: MusicnnModel, plan: SamplingPlan,
    max_duration: float = 0.0,
) -> TrackAnalysis:
    """Analyse one file; raises :class:`DecodeError` for audio that cannot be read.

    ``max_duration`` (seconds, 0: none) refuses longer tracks before any audio is
    decoded: in ``full`` mode a worker holds the whole track at 16 kHz plus its
    mel patches (measured: ~19 MB per minute of track), and a header can claim any
    length; in the sampled modes memory does not grow with the length.
    """
    info = probe(path)
    if max_duration > 0 and info.duration > max_duration:
        raise DecodeError(f"too long to analyse: {_hms(info.duration)}, the limit is "
                          f"{_hms(max_duration)} (setting max_duration)")
    spans = excerpt_spans(info.duration, plan)
    excerpts = read_excerpts(path, spans, sr=SAMPLE_RATE)
    starts = _kept_starts(spans, excerpts, info.duration)
    return analyse_excerpts(excerpts, info.duration, model, plan, starts)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _kept_starts(
    spans: Sequence[tuple[float, float]] | None, excerpts: list[np.ndarray], duration: float
) -> list[float] | None:
    """Start of each decoded excerpt; None when dropped spans make the pairing ambiguous.

    ``read_excerpts`` drops spans that fall outside the file (a header that
    overstates the duration), which can only be the last ones.
    """
    if spans is None:
        return [0.0] if len(excerpts) == 1 else None
    inside = [s for s, _ in spans if s < duration]
    return inside[: len(excerpts)] if len(inside) >= len(excerpts) else None
