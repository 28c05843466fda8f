"""A session-wide check that no secret a test uses ever reaches a log, at any level.

Rule 4 of the project: passwords, tokens, salts and API keys are never logged. Tests
that look at ``caplog`` check their own corner; this watches everything the whole
suite logs (every logger, DEBUG included) plus the log files of the programs that
tests start (``watch_log_file``), and fails the session when a known secret shows up.

Known secrets are the fixed ones the suite's tests use (``STATIC``) and whatever a
test registers with ``watch_secret`` (tokens a fake server minted, say). Records are
checked when they are emitted, so a secret must be registered before it is used.

Three sources are the test harness, not musegate, and are left out: aiohttp's default
access logger (``aiohttp/web_log.py``, used by ``TestServer``; musegate itself always
runs with ``gateway.access_log.RedactingAccessLogger``), urllib3 (the ``requests``
client the fuzz tests drive musegate with; musegate itself never uses it) and records
emitted from files under ``tests/`` (fakes and stubs log what their callers sent them).
"""

from __future__ import annotations

import logging
from pathlib import Path

# Secrets hard-coded in the suite's tests (the short "pw" is too common a word to grep for).
STATIC = frozenset({
    "alicepw", "bobpw", "adminpw", "carolpw", "hunter2", "hunter2-pass",
    "26719a1196d2a940705a59634eb18eab", "sk-test-5ecr3t-DO-NOT-LOG-9f8e7d", "sk-test-secret",
    "sk-secret",
})

_secrets: set[str] = set(STATIC)
_files: list[Path] = []
_hits: list[str] = []
_TESTS_DIR = str(Path(__file__).resolve().parent)
# Loggers that are so chatty at DEBUG that enabling them would slow the suite; none of
# them ever sees a credential (numba compiles librosa's kernels; aiosqlite logs every
# database operation, and musegate never puts a credential in its database).
QUIET = ("numba", "matplotlib", "PIL", "faiss.loader", "hypothesis", "aiosqlite")


def watch_secret(*values: str) -> None:
    """Add secrets (six characters or more) that must never be logged from now on."""
    _secrets.update(v for v in values if v and len(v) >= 6)


def watch_log_file(path: str | Path) -> None:
    """A log file of a program a test started, read at the end of the session."""
    _files.append(Path(path))


def _found_in(text: str) -> list[str]:
    return [s for s in _secrets if s in text]


class SecretWatch(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        path = record.pathname or ""
        if (path.endswith("aiohttp/web_log.py") or record.name.startswith("urllib3")
                or path.startswith(_TESTS_DIR)):
            return
        try:
            text = self.format(record)
        except Exception:  # a broken record is the logging call's problem, not ours
            return
        found = _found_in(text)
        if found:
            # say where, never the secret itself (this message goes to the terminal)
            _hits.append(f"{record.name} ({path}:{record.lineno}, {record.levelname}): "
                         f"{len(found)} known secret(s) in the message")


_handler = SecretWatch(level=logging.DEBUG)
_handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))


def install() -> None:
    root = logging.getLogger()
    root.addHandler(_handler)
    root.setLevel(logging.DEBUG)
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.INFO)


def hits() -> list[str]:
    """Everything found so far, log files included."""
    found = list(_hits)
    for path in _files:
        if path.exists():
            text = path.read_text(errors="replace")
            if _found_in(text):
                found.append(f"log file {path}: {len(_found_in(text))} known secret(s)")
    return found
