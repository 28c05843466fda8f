"""The analysis version string, apart from the analysis code itself.

Every process that only *reads* analyses (the gateway, the CLI's lookups) needs
this string to pick the current rows, but not librosa, PyAV or ONNX Runtime: kept
here, importing it costs nothing, so an idle ``musegate serve`` does not carry
the analyzer's libraries until it analyses (bench/memory.py).
"""

from __future__ import annotations

from typing import Protocol

from analysis.sampling import SamplingPlan

# Bump when the feature code changes what it stores: every track is analysed again.
FEATURES_VERSION = 2


class _Versioned(Protocol):
    version: str


def analysis_version(model: _Versioned | str, plan: SamplingPlan) -> str:
    """Model, patch plan and feature code together: changing any of them re-analyses."""
    model_version = model if isinstance(model, str) else model.version
    return f"{model_version}+{plan.tag}+f{FEATURES_VERSION}"
