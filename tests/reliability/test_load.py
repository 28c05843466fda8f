"""The load harness (tests/reliability/load.py) at small scale, and the long runs.

The fast test is the real set-up — supysonic, a ``musegate serve`` process, 50 clients
mixing every call class — with synthetic analyses instead of the model and a few
requests per client instead of minutes, so that ``make test`` proves the harness and
the server agree (0 errors) and that the RSS/fd probes read the server process.
``make load`` and ``make soak`` run the module itself for the figures in
docs/reliability.md; the ``soak`` marked test is the 10-minute run under pytest.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tests.reliability.load import CALLS, Settings, run_load


def test_fifty_clients_a_few_requests_each(tmp_path: Path) -> None:
    settings = Settings(clients=50, seconds=None, requests=4, warmup_seconds=None,
                        warmup_requests=1, think=0.0, artists=2, albums=2, tracks=3,
                        track_seconds=2.0, analysis="synthetic", sample_seconds=0.5)
    report = asyncio.run(run_load(tmp_path, settings))
    assert report.error_count == 0, report.error_examples
    assert report.requests == 50 * 5
    assert report.tracks == 12
    # every call class was exercised and timed
    assert set(CALLS) <= set(report.latency_ms), sorted(report.latency_ms)
    # the probes read the server process: the start, the baseline and the end at least
    assert len(report.samples) >= 3
    assert all(s.rss_kib > 10_000 and s.fds > 3 for s in report.samples)
    assert report.rss_base_kib > 0 and report.rss_end_kib > 0
    # 50 keep-alive connections were open at once at some point, none is left after
    assert report.fd_max >= report.fd_base
    assert report.fd_end <= report.fd_base, (report.fd_base, report.fd_end)


@pytest.mark.soak
def test_ten_minutes_of_fifty_clients(tmp_path: Path) -> None:
    minutes = float(os.environ.get("MUSEGATE_LOAD_MINUTES", "10"))
    report = asyncio.run(run_load(tmp_path, Settings(seconds=minutes * 60)))
    print(report.markdown())
    assert all(report.targets().values()), report.markdown()
