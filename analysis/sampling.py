"""Which parts of a track are analysed: the biggest speed lever of the whole engine.

Even pruned, musicnn is most of a track's analysis time, and a 4-minute track
is ~80 patches. The sampled plan reads single patches spread evenly across the
track and runs only those; ``bench/analysis.py`` measures that their mean keeps
the same neighbours as the full-track embedding on real music.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187
PATCH_SECONDS = PATCH_FRAMES * HOP / SAMPLE_RATE  # 2.992 s
# One extra hop so that a centred STFT of the excerpt yields whole patches.
_EXCERPT_MARGIN = HOP / SAMPLE_RATE


@dataclass(frozen=True)
class SamplingPlan:
    """``segments`` excerpts of ``patches_per_segment`` patches each; ``full`` ignores both."""

    mode: str = "sampled"
    segments: int = 32
    patches_per_segment: int = 1
    skip_edges: float = 0.0

    @property
    def tag(self) -> str:
        """Short label that becomes part of the analysis version."""
        if self.mode == "full":
            return "full"
        return f"s{self.segments}x{self.patches_per_segment}"

    @property
    def excerpt_seconds(self) -> float:
        return self.patches_per_segment * PATCH_SECONDS + _EXCERPT_MARGIN


FULL = SamplingPlan(mode="full")
DEFAULT = SamplingPlan()
FAST = SamplingPlan(mode="fast", segments=12)
PLANS = {"sampled": DEFAULT, "fast": FAST, "full": FULL}


def plan_for_mode(mode: str) -> SamplingPlan:
    try:
        return PLANS[mode]
    except KeyError:
        raise ValueError(
            f"unknown analysis mode {mode!r}: expected one of {', '.join(PLANS)}"
        ) from None


def excerpt_spans(duration: float, plan: SamplingPlan) -> list[tuple[float, float]] | None:
    """(start, length) spans in seconds to read, or None for the whole track.

    Tracks too short to hold the sampled excerpts without overlap are read whole:
    sampling them would save nothing.
    """
    if plan.mode == "full" or duration <= 0:
        return None
    length = plan.excerpt_seconds
    lo = duration * plan.skip_edges
    hi = duration * (1.0 - plan.skip_edges)
    usable = hi - lo
    if usable < plan.segments * length * 1.25:
        return None
    # Centres evenly spaced across the usable part, each excerpt inside it and
    # starting on the full mode's patch grid, so that a sampled patch is the very
    # patch full analysis would compute there (same STFT frames) and the sampled
    # mean estimates the full mean without a phase offset.
    step = usable / plan.segments
    first, last = math.ceil(lo / PATCH_SECONDS), math.floor((hi - length) / PATCH_SECONDS)
    spans = []
    for i in range(plan.segments):
        centre = lo + step * (i + 0.5)
        k = min(max(round((centre - length / 2) / PATCH_SECONDS), first), last)
        spans.append((round(k * PATCH_SECONDS, 6), round(length, 6)))
    return spans
