"""Peak memory of an analysis worker per file: ``python -m tests.reliability.rss_probe MODE PATH...``.

Runs the very function a pool worker runs (:func:`analysis.executors.analyse_task`,
model loaded and warmed first, as the pool initializer does), one file after another
in this one process. Before each file the kernel's high-water mark is reset (writing
``5`` to ``/proc/self/clear_refs``, Linux ≥ 4.0), so ``VmHWM`` afterwards is the peak
resident memory reached while analysing that file. Prints one JSON object per file.
"""

from __future__ import annotations

import json
import re
import sys

_STATUS = re.compile(r"^(VmHWM|VmRSS):\s+(\d+) kB$", re.MULTILINE)


def _status_kb() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v) for k, v in _STATUS.findall(f.read())}


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv: list[str]) -> int:
    """``argv``: the analysis mode, then the files."""
    from analysis.executors import AnalysisTask, analyse_task, worker_model
    from analysis.sampling import plan_for_mode
    from musegate.config import load_config

    plan = plan_for_mode(argv[0])
    max_duration = load_config(None, env={}).max_duration  # the product's default limit
    worker_model(None, 1, plan)
    for i, path in enumerate(argv[1:]):
        _reset_peak()
        before = _status_kb()["VmRSS"]
        result = analyse_task(AnalysisTask(i, path, plan, max_duration=max_duration))
        after = _status_kb()
        print(json.dumps({
            "path": path,
            "analysed": result.analysis is not None,
            "reason": result.reason,
            "duration": result.analysis.duration if result.analysis is not None else None,
            "rss_before_kb": before,
            "peak_kb": after["VmHWM"],
        }, ensure_ascii=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
