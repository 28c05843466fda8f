"""Dask worker preload for tests: hold the first task this worker starts, and say so.

Loaded with ``dask worker --preload tests.dask_hold``. When the worker moves its
first task to ``executing`` it writes ``started-<pid>`` into the folder named by
``MUSEGATE_TEST_HOLD_DIR`` and then blocks its event loop, so the task can never
finish here: the test kills the worker while it provably holds a task, with no
race against how fast the analysis is. The block ends on its own after
``HOLD_SECONDS`` (a hang guard for a test that failed before killing it).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

HOLD_SECONDS = 300.0


class HoldFirstTask(WorkerPlugin):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.held = False

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "executing" or self.held:
            return
        self.held = True
        marker = self.folder / f"started-{os.getpid()}"
        marker.with_suffix(".tmp").write_text(str(key), encoding="utf-8")
        marker.with_suffix(".tmp").replace(marker)
        threading.Event().wait(HOLD_SECONDS)


async def dask_setup(worker: Any) -> None:
    await worker.plugin_add(HoldFirstTask(Path(os.environ["MUSEGATE_TEST_HOLD_DIR"])),
                            name="musegate-test-hold")
