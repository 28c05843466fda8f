"""What the browser tests stand on: supysonic and a real ``musegate serve`` subprocess.

Playwright's sync API runs its own event loop, so supysonic (started with
asyncio) lives in a private loop on a background thread, and musegate runs as
the real ``musegate serve`` command configured through ``MUSEGATE_*``
variables. Every wait has a deadline and waits for an observable event (a
line on stdout, an answer, a state), never for a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.supysonic_server import Supysonic, generate_library

T = TypeVar("T")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
USERS = {"alice": "alicepw", "bob": "bobpw"}
ARTIFACTS = Path(__file__).parent / "artifacts"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install 'playwright>=1.45')"
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium)"
    return None


class LoopThread:
    """An asyncio loop on a daemon thread; ``run(coro)`` waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Musegate:
    """``musegate serve`` in a subprocess; ``url`` is its public base (with the sub-path)."""

    def __init__(self, env: dict[str, str], port: int, prefix: str) -> None:
        self.port = port
        self.prefix = prefix
        self.url = f"http://127.0.0.1:{port}{prefix}"
        self.lines: queue.Queue[str] = queue.Queue()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        self._wait_line("musegate listening", 120.0)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def _wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if text in line:
                return
        raise TimeoutError(f"musegate did not print {text!r}; output:\n{''.join(seen[-40:])}")

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as resp:
            return json.loads(resp.read())

    def wait_until(self, path: str, test: Any, timeout: float = 300.0) -> Any:
        """GET ``path`` until ``test(answer)`` holds: each answer is the server's current state."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                last = self.get_json(path)
                if test(last):
                    return last
            time.sleep(0.2)  # pacing between questions, not a wait for an outcome
        raise TimeoutError(f"{path} never satisfied the test; last answer {last!r}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def stack(tmp: Path, mount_path: str = "", base_path: str = "/musegate",
          artists: int = 3, tracks: int = 3, extra_env: dict[str, str] | None = None,
          ) -> Iterator[tuple[Musegate, Supysonic, Path, LoopThread]]:
    """supysonic on a generated library + musegate serve in front, analysed, ready."""
    music = generate_library(tmp / "music", artists=artists, albums=1, tracks=tracks, seconds=5.0)
    loop = LoopThread()
    starter = Supysonic.start(tmp / "supysonic", music, users=USERS, admins=("alice",))
    server = loop.run(starter.__aenter__())
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUSEGATE_")}
    env.update({
        "MUSEGATE_DATA_DIR": str(tmp / "data"), "MUSEGATE_SOURCE": "subsonic",
        "MUSEGATE_UPSTREAM_URL": server.url, "MUSEGATE_UPSTREAM_USER": "alice",
        "MUSEGATE_UPSTREAM_PASSWORD": USERS["alice"], "MUSEGATE_PATH_MAP": f"={music}",
        "MUSEGATE_HOST": "127.0.0.1", "MUSEGATE_PORT": str(port), "MUSEGATE_WORKERS": "1",
        "MUSEGATE_BASE_PATH": base_path, "MUSEGATE_ANALYSIS_MODE": "fast",
        "MUSEGATE_LOG_LEVEL": "WARNING",
    })
    if mount_path:
        env["MUSEGATE_MOUNT_PATH"] = mount_path
    env.update(extra_env or {})
    gate = Musegate(env, port, mount_path + base_path)
    try:
        gate.wait_until("/api/progress", lambda p: p["run"] and p["run"]["status"] == "done"
                        and p["indexed"] == p["tracks"] > 0)
        yield gate, server, music, loop
    finally:
        gate.stop()
        with contextlib.suppress(Exception):
            loop.run(starter.__aexit__(None, None, None))
        loop.close()
