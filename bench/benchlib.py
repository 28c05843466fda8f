"""Helpers every benchmark shares: the dev corpus, the machine's name, docs/benchmarks.md.

A plain module beside the scripts (``python bench/x.py`` puts bench/ on the path):
the scripts cannot import each other, because bench/analysis.py's module name is
taken by the ``analysis`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from analysis.model import MusicnnModel
from tests.upstream_stub import MusegateProcess

REPO = Path(__file__).resolve().parents[1]
CORPUS_SCRIPT = REPO.parent / "shared" / "corpus" / "build-dev-corpus.sh"


def corpus_dir() -> Path:
    env = os.environ.get("MUSEGATE_CORPUS")
    default = Path(env) if env else Path.home() / ".cache" / "musegate" / "corpus"
    if (default / ".complete").exists():
        return default
    print("building the dev corpus (several minutes the first time) …", flush=True)
    out = subprocess.run(["bash", str(CORPUS_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def read_manifest(root: Path) -> list[tuple[Path, str]]:
    rows = (root / "manifest.tsv").read_text().splitlines()[1:]
    return [(root / r.split("\t")[0], r.split("\t")[1]) for r in rows if r.strip()]


def neighbours(matrix: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    if metric == "cosine":
        m = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        score = m @ m.T
    else:
        d = ((matrix[:, None, :] - matrix[None, :, :]) ** 2).sum(-1)
        score = -d
    np.fill_diagonal(score, -np.inf)
    return np.argsort(-score, axis=1, kind="stable")[:, :k]


def cpu_name() -> str:
    try:
        return next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine() -> str:
    """CPU model, cores and Python version, as each results section states them."""
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(doc: Path, marker: str, section: str) -> None:
    """Replace the section whose heading is ``marker`` (up to the next '## ') or append it.

    The heading must be the marker alone or the marker then " (": several sections share a
    first few words ("## Held-out quality", "## Held-out quality: levers …"), and a plain
    substring search would overwrite whichever came first.
    """
    text = doc.read_text() if doc.exists() else "# Benchmarks\n\n"
    found = re.search(rf"^{re.escape(marker)}(?=$| \()", text, re.MULTILINE)
    start = found.start() if found else -1
    if start < 0:
        text = text.rstrip() + "\n\n" + section
    else:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section.rstrip() + "\n\n" + (text[end + 1:] if end >= 0 else "")
    doc.write_text(text.rstrip() + "\n")


async def stop_process(proc: asyncio.subprocess.Process, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not gone after ``grace`` seconds."""
    if proc.returncode is not None:
        return
    proc.terminate()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


_STREAM_REPEATS: list[int] = []  # set by --repeats


def stream_repeats(quick: bool) -> int:
    """Downloads per target of the pass-through stream: --repeats, else 2 (quick) or 3."""
    return _STREAM_REPEATS[0] if _STREAM_REPEATS else (2 if quick else 3)


def gateway_bench_main(
    description: str,
    marker: str,
    run: Callable[[bool], Awaitable[Any]],
    render: Callable[[Any], str],
    quick_help: str,
    passthrough: tuple[Callable[[bool], Awaitable[Any]], Callable[[Any], str]] | None = None,
) -> int:
    """The command line the gateway benches share: run, print the section, write it.

    ``passthrough``: the run and render of the pass-through part alone (direct / musegate /
    nginx latency and stream), offered as ``--passthrough``; it prints and never writes.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help=quick_help)
    if passthrough is not None:
        parser.add_argument("--passthrough", action="store_true",
                            help="only the pass-through latency and stream; print, do not write")
        parser.add_argument("--repeats", type=int, default=0,
                            help="downloads per target of the 200 MB stream (default 3)")
        parser.add_argument("--before", metavar="TREE", default="",
                            help="also measure musegate from this checkout of the code before "
                                 "a change (variant mg-before; e.g. git archive BASE | tar -x "
                                 "-C TREE)")
    args = parser.parse_args()
    if getattr(args, "repeats", 0):
        _STREAM_REPEATS.append(args.repeats)
    if getattr(args, "before", ""):
        PASSTHROUGH_VARIANTS["mg-before"] = code_before(Path(args.before).resolve())
    if getattr(args, "passthrough", False):
        assert passthrough is not None
        print(passthrough[1](asyncio.run(passthrough[0](args.quick))))
        return 0
    section = render(asyncio.run(run(args.quick)))
    print(section)
    if not args.no_write:
        write_section(REPO / "docs" / "benchmarks.md", marker, section)
        print("written to docs/benchmarks.md")
    return 0


# ---- a pool of model workers, one per core, each pinned to its core ---------------

#: The network without dead-filter pruning, as AudioMuse-AI computes it (written by
#: analysis/export_musicnn.py next to the pruned one).
UNPRUNED_MODEL = REPO / "bench" / "models" / "msd_musicnn_unpruned.onnx"

_models: dict[str, MusicnnModel] = {}


def _init_pinned(core_queue: multiprocessing.Queue) -> None:
    core = core_queue.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    _models["pruned"] = MusicnnModel(threads=1)
    _models["unpruned"] = MusicnnModel(UNPRUNED_MODEL, threads=1)


def worker_model(unpruned: bool = False) -> MusicnnModel:
    """The model of this pinned worker process (loaded once by its initializer)."""
    assert _models, "only inside a pinned_model_pool worker"
    return _models["unpruned" if unpruned else "pruned"]


def pinned_model_pool(cores: int) -> ProcessPoolExecutor:
    """``cores`` spawned processes, each pinned to one core with a one-thread model, so a
    task's CPU time is one core's time (the unit the analysis results are given in)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    for c in range(cores):
        queue.put(c)
    return ProcessPoolExecutor(cores, mp_context=ctx, initializer=_init_pinned,
                               initargs=(queue,))


# ---- pass-through: direct vs musegate vs nginx, shared by bench/gateway.py and bench/jellyfin.py


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (``/proc/PID/stat``), in seconds.

    A stream's wall time depends on what the other jobs on the machine do; the CPU a
    relay spends per byte does not, so it is reported beside the MB/s.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct child processes (nginx's master -> its worker)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


# musegate the way `musegate serve` runs it (cli.main + gateway.app.serve): logging
# configured at the configured level (INFO by default) with serve's format, the redacting
# access logger on every request. Only the scheduler is left out (the benches seed the store,
# and a library scan would compete for the cores). Logs go to a file in the work directory.
_SERVED = """
import asyncio, json, logging, sys
exec(sys.argv[5])  # a bench variant's switch (PASSTHROUGH_VARIANTS); empty for musegate as shipped
from aiohttp import web
from gateway.access_log import RedactingAccessLogger
from gateway.app import DRAIN_SECONDS, create_app
from musegate.config import load_config
config = load_config(None, env={}, overrides={
    "data_dir": sys.argv[1], "upstream_url": sys.argv[2], "port": int(sys.argv[3]),
    "host": "127.0.0.1", "library_path": "", **json.loads(sys.argv[4])})
logging.basicConfig(level=config.log_level,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("faiss.loader").setLevel(logging.WARNING)

async def main():
    try:  # serve's runner: the connection guard and the fast pass-through path
        from gateway.app import server_options
        from gateway.connection_limits import ConnectionGuard, ConnectionLimits, GuardedAppRunner
        runner = GuardedAppRunner(create_app(config),
                                  ConnectionGuard(ConnectionLimits.from_config(config)),
                                  **server_options(config))
    except ImportError:  # an older checkout (--before)
        runner = web.AppRunner(create_app(config), shutdown_timeout=DRAIN_SECONDS,
                               access_log_class=RedactingAccessLogger)
    await runner.setup()
    await web.TCPSite(runner, config.host, config.port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Served(MusegateProcess):
    """A musegate process started by ``run_musegate_served``: the test stub's process plus
    the log file that proves the production access log was on."""

    log: Path

    def access_lines(self) -> int:
        """How many access-log lines were written (proves the access log was on)."""
        with contextlib.suppress(OSError):
            return sum(1 for line in self.log.open(errors="replace") if "aiohttp.access" in line)
        return 0


@contextlib.asynccontextmanager
async def run_musegate_served(data_dir: Path, upstream_url: str,
                              overrides: Mapping[str, Any] | None = None,
                              timeout: float = 60.0, patch: str = "") -> AsyncIterator[Served]:
    """musegate in its own process as ``musegate serve`` runs it, access log included.

    ``patch``: Python run before the app is built, to switch one pass-through lever off
    (see PASSTHROUGH_VARIANTS); the shipped code runs with none.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = data_dir / "musegate.log"
    with log.open("ab") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _SERVED, str(data_dir), upstream_url, str(port),
            json.dumps(dict(overrides or {})), patch,
            stdout=asyncio.subprocess.PIPE, stderr=log_file, cwd=str(REPO),
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if b"READY" not in line:
            raise RuntimeError(f"musegate did not start:\n{log.read_text(errors='replace')}")
        yield Served(proc, port, log)
    finally:
        await stop_process(proc)


# The pass-through's levers switched off one at a time, each a musegate of its own measured
# beside the shipped one in the same run (bench/gateway.py and bench/jellyfin.py --passthrough).
PASSTHROUGH_VARIANTS = {
    # Before gateway/upstream_http: every pass-through through aiohttp's ClientSession.
    "mg-aiohttp": "import gateway.proxy as p; p._lean_target = lambda base: None",
    # The lean client with stream bodies still read into Python (no splice).
    "mg-lean": "import gateway.upstream_http as u; u.SPLICE_MIN = 1 << 62",
    # Every request through aiohttp's web layer (no gateway.fast_relay path).
    "mg-no-fast": "import gateway.fast_relay as f; f.ENABLED = False",
}


def code_before(tree: Path) -> str:
    """A variant switch that runs musegate from another checkout: the code before a change.

    ``tree`` is e.g. ``git archive <base> | tar -x -C tree``; its modules are found first
    because nothing of musegate is imported before a variant's switch runs.
    """
    return f"sys.path.insert(0, {str(tree)!r})"


@contextlib.asynccontextmanager
async def run_variants(work: Path, upstream_url: str,
                       overrides: Mapping[str, Any] | None = None
                       ) -> AsyncIterator[dict[str, Served]]:
    """One musegate per PASSTHROUGH_VARIANTS entry (own data directory each), by name."""
    async with contextlib.AsyncExitStack() as stack:
        out: dict[str, Served] = {}
        for name, patch in PASSTHROUGH_VARIANTS.items():
            out[name] = await stack.enter_async_context(run_musegate_served(
                work / name, upstream_url, overrides, patch=patch))
        yield out


NGINX_CONF = """
worker_processes 1;
daemon off;
master_process on;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    upstream music {{ server {host}:{port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://music;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $proxy_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1d;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    """nginx from PATH or /usr/sbin, installed with apt-get when missing (and allowed)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found or not shutil.which("apt-get"):
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print("nginx is missing: installing the Debian package with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "nginx"], check=False, env=env)
    return shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@dataclass
class Nginx:
    url: str
    master: int

    @property
    def pid(self) -> int:
        """The worker (the process that relays), or the master when it has none yet."""
        return (children(self.master) or [self.master])[0]


@contextlib.asynccontextmanager
async def run_nginx(work: Path, upstream_url: str) -> AsyncIterator[Nginx | None]:
    """nginx (one worker, ``proxy_buffering off``) in front of ``upstream_url``, or None."""
    binary = nginx_binary()
    if binary is None:
        yield None
        return
    from yarl import URL

    up = URL(upstream_url)
    work.mkdir(parents=True, exist_ok=True)
    listen = free_port()
    conf = work / "nginx.conf"
    conf.write_text(NGINX_CONF.format(work=work, host=up.host, port=up.port, listen=listen))
    proc = await asyncio.create_subprocess_exec(binary, "-p", str(work), "-c", str(conf))
    try:
        url = f"http://127.0.0.1:{listen}"
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url + "/") as r:
                        await r.read()
                        break
                await asyncio.sleep(0.1)
        yield Nginx(url, proc.pid)
    finally:
        await stop_process(proc)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


async def latency_rounds(targets: Mapping[str, str], path: str, n: int, *,
                         params: Mapping[str, str] | None = None,
                         headers: Mapping[str, str] | None = None,
                         rounds: int = 5, warm: int = 20,
                         pids: Mapping[str, int] | None = None,
                         ) -> dict[str, tuple[float, float]]:
    """p50/p99 ms per target of ``n`` sequential requests on one keep-alive connection each.

    The ``n`` requests are split into ``rounds`` blocks taken in turn (direct, musegate,
    nginx, direct, …), so a burst of load from other jobs lands on every target alike.
    With ``pids`` (relay process per target), the relay's CPU ms per request is added as
    ``"<target> cpu"`` (p50, p50): unlike the wall time it does not grow with the load.
    """
    cpu: dict[str, float] = {t: 0.0 for t in (pids or {})}
    sessions = {t: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                for t in targets}
    samples: dict[str, list[float]] = {t: [] for t in targets}
    try:
        async def one(t: str) -> float:
            t0 = time.perf_counter()
            async with sessions[t].get(targets[t] + path, params=params, headers=headers) as r:
                await r.read()
                assert r.status == 200, (t, r.status)
            return time.perf_counter() - t0

        for t in targets:
            for _ in range(warm):
                await one(t)
        per_round = max(1, n // rounds)
        for _ in range(rounds):
            for t in targets:
                pid = (pids or {}).get(t)
                cpu0 = cpu_seconds(pid) if pid else 0.0
                for _ in range(per_round):
                    samples[t].append(await one(t))
                if pid:
                    cpu[t] += cpu_seconds(pid) - cpu0
    finally:
        for s in sessions.values():
            await s.close()
    out = {t: (percentile_ms(v, 50), percentile_ms(v, 99)) for t, v in samples.items()}
    for t, seconds in cpu.items():
        per = seconds * 1000 / len(samples[t])
        out[f"{t} cpu"] = (per, per)
    return out


async def stream_rounds(targets: Mapping[str, str], path: str, repeats: int, *,
                        params: Mapping[str, str] | None = None,
                        headers: Mapping[str, str] | None = None,
                        pids: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """One full download per target per repeat, targets in turn; MB/s runs and relay CPU.

    The client reads 1 MiB at a time and counts the bytes (every download must bring the
    same number). ``pids`` names the relay process per target (musegate, nginx's worker):
    its CPU seconds per stream are recorded.
    """
    out: dict[str, dict[str, Any]] = {t: {"mbps": [], "cpu": []} for t in targets}
    size = 0
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for _ in range(repeats):
            for t, base in targets.items():
                pid = (pids or {}).get(t)
                cpu0 = cpu_seconds(pid) if pid else 0.0
                got = 0
                t0 = time.perf_counter()
                async with s.get(base + path, params=params, headers=headers) as r:
                    assert r.status == 200, (t, r.status)
                    async for chunk in r.content.iter_chunked(1 << 20):
                        got += len(chunk)
                elapsed = time.perf_counter() - t0
                size = size or got
                assert got == size, (t, got, size)
                out[t]["mbps"].append(size / elapsed / 1e6)
                if pid:
                    out[t]["cpu"].append(cpu_seconds(pid) - cpu0)
    for v in out.values():
        v["bytes"] = size
        v["best"] = max(v["mbps"])
        v["median"] = statistics.median(v["mbps"])
        v["cpu_median"] = statistics.median(v["cpu"]) if v["cpu"] else None
    return out


def passthrough_tables(lat: Mapping[str, tuple[float, float]], stream: Mapping[str, Any],
                       size_mb: int, what: str, stream_what: str) -> list[str]:
    """Markdown: latency with each relay's added p50, and stream MB/s with ratios."""
    targets = [t for t in lat if not t.endswith(" cpu")]
    relays = [t for t in targets if t != "direct"]
    lines = ["| request | " + " | ".join(f"{t} p50 / p99 (ms)" for t in targets)
             + " | " + " | ".join(f"{t} adds at p50" for t in relays)
             + (" | musegate − nginx at p50 |" if "nginx" in lat else " |"),
             "| --- |" + " ---: |" * (len(targets) + len(relays) + ("nginx" in lat))]
    cells = [f"{lat[t][0]:.2f} / {lat[t][1]:.2f}" for t in targets]
    adds = [f"{lat[t][0] - lat['direct'][0]:+.2f} ms" for t in relays]
    if "nginx" in lat:
        adds.append(f"{lat['musegate'][0] - lat['nginx'][0]:+.2f} ms")
    lines.append(f"| {what} | " + " | ".join(cells + adds) + " |")
    if any(f"{t} cpu" in lat for t in relays):
        lines += ["", f"Relay CPU per {what} request (ms, /proc): " + ", ".join(
            f"{t} {lat[f'{t} cpu'][0]:.3f}" for t in relays if f"{t} cpu" in lat) + "."]
    direct = stream["direct"]
    lines += ["", f"| {size_mb} MB {stream_what} | " + " | ".join(targets) + " |",
              "| --- |" + " ---: |" * len(targets),
              "| MB/s, median of runs | " + " | ".join(
                  f"{stream[t]['median']:.0f}" for t in targets) + " |",
              "| MB/s, best run | " + " | ".join(f"{stream[t]['best']:.0f}" for t in targets) + " |",
              "| median, share of direct | " + " | ".join(
                  f"{100 * stream[t]['median'] / direct['median']:.1f}%" for t in targets) + " |"]
    if "nginx" in stream:
        nginx = stream["nginx"]
        lines.append("| median, share of nginx | " + " | ".join(
            f"{100 * stream[t]['median'] / nginx['median']:.1f}%" for t in targets) + " |")
    lines.append("| relay CPU seconds per stream (median) | " + " | ".join(
        "–" if stream[t]["cpu_median"] is None else f"{stream[t]['cpu_median']:.2f}"
        for t in targets) + " |")
    return lines
