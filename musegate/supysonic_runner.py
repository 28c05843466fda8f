"""A real Subsonic server on 127.0.0.1: supysonic (PyPI) in a subprocess.

Used by ``musegate demo`` (a working music server on the demo library, with
musegate in front of it) and by the tests, so that protocol details
(envelopes, error codes, ids, Range) are the real thing. supysonic 0.7.9 is pure
Python, installs from PyPI and starts in about a second.

Usage::

    from musegate.supysonic_runner import Supysonic
    from tests.supysonic_server import generate_library

    async def test_something(tmp_path):
        music = generate_library(tmp_path / "music", artists=2, albums=1, tracks=3)
        async with Supysonic.start(tmp_path, music, users={"alice": "alicepw"}) as server:
            server.url          # "http://127.0.0.1:PORT" (API under /rest/)
            (music / "new.flac").write_bytes(...)
            await server.rescan()   # supysonic has no watcher here: rescan after changes
            await server.stop()     # upstream down (same port when started again)
            await server.start()    # and back

Facts about supysonic 0.7.9 that tests must know (read from its source):

* API version 1.12.0: **no token auth** (``t``+``s`` without ``p`` answers error
  10 "missing parameter"), no ``apiKey``; ``p`` (plain or ``enc:``) and HTTP
  Basic work. Wrong credentials → error 40. py-sonic therefore needs
  ``libsonic.Connection("http://127.0.0.1", user, pw, port=server.port, legacyAuth=True)``.
* Music folders are global: every user sees every folder (no per-user access),
  so folder isolation between users cannot be tested against supysonic.
* Ids are UUIDs (songs, albums, artists); folder ids are integers.
* Songs carry ``size`` (bytes of the file) and ``path`` relative to the music
  folder, but no ``playCount``/``played``; ``stream`` (not ``download``, not
  ``scrobble``) increments the track's global play count and last-play time,
  which ``getAlbumList2`` type=frequent/recent then order by.
* ``search3`` with an empty query matches everything; songCount/songOffset page.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Supysonic", "SupysonicError"]

STARTUP_SECONDS = 30.0

# Runs inside the server subprocess: supysonic's own Flask app under werkzeug's
# threaded server (werkzeug ships with Flask; no extra WSGI server needed).
_SERVE = """
import sys
from supysonic.config import IniConfig
from supysonic.web import create_application
from werkzeug.serving import make_server
config = IniConfig([sys.argv[1]])
app = create_application(config)
srv = make_server("127.0.0.1", int(sys.argv[2]), app, threaded=True)
print("READY", srv.server_port, flush=True)
srv.serve_forever()
"""

# Runs once per setup / rescan in a subprocess: users, folders, scan through
# supysonic's own managers and scanner (what `supysonic-cli` does).
_SETUP = """
import json, sys
from supysonic.config import IniConfig
from supysonic.db import init_database, release_database, Folder, User
from supysonic.managers.folder import FolderManager
from supysonic.managers.user import UserManager
from supysonic.scanner import Scanner
config = IniConfig([sys.argv[1]])
spec = json.loads(sys.argv[2])
init_database(config.BASE["database_uri"])
try:
    for name, password in spec.get("users", {}).items():
        if User.select().where(User.name == name).exists():
            continue
        UserManager.add(name, password, admin=name in spec.get("admins", []))
    for name, path in spec.get("folders", {}).items():
        if not Folder.select().where(Folder.root, Folder.name == name).exists():
            FolderManager.add(name, path)
    scanner = Scanner(force=spec.get("force", False))
    for (name,) in Folder.select(Folder.name).where(Folder.root).tuples():
        scanner.queue_folder(name)
    scanner.run()
    stats = scanner.stats()
    print(json.dumps({"added": stats.added.tracks, "deleted": stats.deleted.tracks,
                      "errors": list(stats.errors)}))
finally:
    release_database()
"""


class SupysonicError(RuntimeError):
    """The test server could not be set up or started; the message carries its output."""


class _Hybrid:
    """``Supysonic.start`` means setup on the class and restart on an instance (the contract's API)."""

    def __get__(self, obj: Supysonic | None, owner: type[Supysonic]) -> Any:
        if obj is None:
            return functools.partial(owner._launch, owner)
        return obj.restart


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Supysonic:
    """One supysonic instance with its own database, cache and config under ``state_dir``."""

    state_dir: Path
    folders: dict[str, Path]
    users: dict[str, str]
    admins: tuple[str, ...] = ()
    port: int = 0
    last_scan: dict[str, object] = field(default_factory=dict)
    _proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.state_dir / "supysonic.conf"

    @staticmethod
    @contextlib.asynccontextmanager
    async def _launch(
        cls: type[Supysonic],
        tmp_path: Path,
        music_dir: Path,
        users: Mapping[str, str] | None = None,
        folders: Mapping[str, Path] | None = None,
        admins: tuple[str, ...] = ("alice",),
    ) -> AsyncIterator[Supysonic]:
        """Configure, create users and folders, scan, serve; stop on exit.

        ``folders`` maps folder names to directories (default: ``{"music": music_dir}``).
        """
        state = Path(tmp_path) / "supysonic"
        state.mkdir(parents=True, exist_ok=True)
        server = cls(
            state_dir=state,
            folders={k: Path(v).resolve() for k, v in (folders or {"music": music_dir}).items()},
            users=dict(users or {"alice": "alicepw", "bob": "bobpw"}),
            admins=admins,
        )
        server._write_config()
        server.last_scan = await server._run_setup(first=True)
        try:
            await server.start_server()
            yield server
        finally:
            await server.stop()

    def _write_config(self) -> None:
        cache = self.state_dir / "cache"
        cache.mkdir(exist_ok=True)
        self.config_path.write_text(
            "[base]\n"
            # SQLite's default 5 s lock wait is shorter than what concurrent `stream` calls
            # (each one writes a play count) wait under load: 50 streaming clients got
            # "database is locked" 500s from supysonic itself (tests/reliability/load.py).
            f"database_uri = sqlite:///{self.state_dir / 'supysonic.db'}?timeout=60\n"
            "[webapp]\n"
            f"cache_dir = {cache}\n"
            "log_level = WARNING\n"
            "mount_webui = no\n"
            "[daemon]\n"
            f"socket = {self.state_dir / 'daemon.sock'}\n"
            "run_watcher = no\n"
        )

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["HOME"] = str(self.state_dir)  # so ~/.supysonic of the developer is never read
        return env

    async def _run_setup(self, first: bool = False, force: bool = False) -> dict[str, object]:
        spec = {"force": force}
        if first:
            spec.update(
                users=self.users,
                admins=list(self.admins),
                folders={k: str(v) for k, v in self.folders.items()},
            )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SETUP, str(self.config_path), json.dumps(spec),
            cwd=self.state_dir, env=self._env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0:
            raise SupysonicError(f"supysonic setup failed:\n{err.decode(errors='replace')}")
        lines = out.decode().strip().splitlines()
        return json.loads(lines[-1]) if lines else {}

    async def rescan(self, force: bool = False) -> dict[str, object]:
        """Scan every folder again (after adding, changing or deleting files); returns counts."""
        self.last_scan = await self._run_setup(force=force)
        return self.last_scan

    async def start_server(self) -> None:
        """Start (or restart) the HTTP server, on the same port as before when there was one."""
        if self._proc is not None:
            return
        port = self.port or _free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SERVE, str(self.config_path), str(port),
            cwd=self.state_dir, env=self._env(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        output: list[str] = []
        try:
            async with asyncio.timeout(STARTUP_SECONDS):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise SupysonicError("supysonic exited:\n" + "".join(output))
                    text = line.decode(errors="replace")
                    if text.startswith("READY"):
                        self.port = int(text.split()[1])
                        break
                    output.append(text)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        self._proc = proc
        # Keep draining the server's output so a chatty log never blocks it.
        self._drain = asyncio.ensure_future(self._drain_output(proc))

    @staticmethod
    async def _drain_output(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    async def restart(self) -> None:
        """Start the HTTP server again after ``stop()`` (also reachable as ``server.start()``)."""
        await self.start_server()

    #: ``Supysonic.start(tmp_path, music, ...)`` on the class is the setup context
    #: manager; ``server.start()`` on an instance restarts a stopped server.
    start = _Hybrid()

    async def stop(self) -> None:
        """Stop the HTTP server (the database stays; ``start()`` brings it back)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            async with asyncio.timeout(10):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        drain = getattr(self, "_drain", None)
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
