"""`make demo` end to end: demo library → supysonic → musegate → py-sonic."""

import re
from pathlib import Path

import pytest

from cli.demo import run_demo
from musegate.config import load_config


async def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, env={}, overrides={"workers": 2})
    assert await run_demo(config, str(tmp_path), wait=False) == 0
    out = capsys.readouterr().out
    assert "done: 20 new, 0 changed, 0 removed; 20 analysed, 0 failed" in out
    match = re.search(r"(\d+) of (\d+) similar songs share the seed's style", out)
    assert match is not None, out
    hits, total = map(int, match.groups())
    assert total == 15
    assert hits >= 11  # sound alone must mostly find the seed's own style
    assert "Point a Subsonic app" in out
