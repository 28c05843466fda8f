"""Where the CPU of one relayed request goes: musegate's CPU per ``ping``, beside nginx.

    .venv/bin/python bench/passthrough_cpu.py [--n 5000] [--before TREE] [--nginx] [--floor]
        [--variant NAME ...] [--profile out.prof | --spy out.txt] [--supysonic]

The upstream is tests/upstream_stub.py in its own process (keep-alive, a fixed answer),
musegate runs as ``musegate serve`` runs it (bench/benchlib.run_musegate_served: serve's
runner, INFO log level, the redacting access log), and the client is a blocking socket in
this process that sends the request head and reads the answer by its Content-Length —
far cheaper than an aiohttp client, so the figures are the relays'. Each target gets
``--n`` sequential pings on one keep-alive connection, in ``--rounds`` blocks taken in
turn; printed per target: p50 wall time and the relay process's time on a CPU per
request (/proc/PID/schedstat, exact; the /proc/PID/stat tick count beside it).

``--before TREE`` adds musegate from another checkout (the code before a change),
``--nginx`` nginx in front of the same upstream, ``--floor`` bench/floor_relay.py (a
callback-only asyncio relay: the least a Python relay costs here), ``--variant`` entries
of PASSTHROUGH_VARIANTS or EXPERIMENTS below; ``--profile`` runs the shipped musegate
under cProfile, ``--spy`` samples it with py-spy (if installed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.benchlib import (  # noqa: E402
    PASSTHROUGH_VARIANTS,
    code_before,
    cpu_seconds,
    free_port,
    run_musegate_served,
)

REPO = Path(__file__).resolve().parent.parent
PATH = "/rest/ping.view?u=bench&p=secret&v=1.16.1&c=bench&f=json"

_PROFILE = """
import cProfile, signal, atexit
_prof = cProfile.Profile()
_prof.enable()
def _dump(*_a):
    _prof.disable(); _prof.dump_stats({out!r}); os._exit(0)
import os
signal.signal(signal.SIGTERM, _dump)
"""


# Parts of the work switched off, to see what each costs (``--variant``, beside
# PASSTHROUGH_VARIANTS): what is left when the relay answers a fixed body itself, without
# the access log, without the middlewares.
EXPERIMENTS = {
    "fixed-answer": (
        "import gateway.proxy as p\nfrom aiohttp import web\n"
        "async def _f(r, u, body=None):\n"
        "    return web.Response(body=b'{\"subsonic-response\":{}}', "
        "content_type='application/json')\n"
        "p.forward = _f\n"),
    "no-access-log": ("import gateway.access_log as a\n"
                      "a.RedactingAccessLogger.log = lambda *_a: None\n"),
    "no-middlewares": (
        "from aiohttp import web\n_i = web.Application.__init__\n"
        "def _n(self, *a, middlewares=(), **k):\n    _i(self, *a, **k)\n"
        "web.Application.__init__ = _n\n"),
}
EXPERIMENTS["uvloop"] = "import asyncio, uvloop\nasyncio.set_event_loop_policy(uvloop.EventLoopPolicy())\n"
EXPERIMENTS["fixed-no-log"] = EXPERIMENTS["fixed-answer"] + EXPERIMENTS["no-access-log"]
EXPERIMENTS["fixed-no-mw"] = EXPERIMENTS["fixed-answer"] + EXPERIMENTS["no-middlewares"]
EXPERIMENTS["bare"] = EXPERIMENTS["fixed-answer"] + EXPERIMENTS["no-access-log"] + \
    EXPERIMENTS["no-middlewares"]


class RawClient:
    """One keep-alive connection; a request is one send, the answer read by Content-Length."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.head = (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                     "User-Agent: bench\r\nAccept: */*\r\n\r\n").encode()
        self.buf = b""

    def one(self) -> float:
        try:
            return self._one()
        except ConnectionError:  # nginx closes a connection after 1000 requests (its default)
            self.sock.close()
            self.sock = socket.create_connection(("127.0.0.1", self.port))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buf = b""
            return self._one()

    def _one(self) -> float:
        t0 = time.perf_counter()
        self.sock.sendall(self.head)
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(rest) < length:
            rest += self._recv()
        self.buf = rest[length:]
        return time.perf_counter() - t0

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        return data

    def close(self) -> None:
        self.sock.close()


async def stub() -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.upstream_stub", "--port", "0",
        stdout=asyncio.subprocess.PIPE, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    line = (await proc.stdout.readline()).decode().split()
    return proc, int(line[1])


class _Pid:
    """A relay process that is not musegate (nginx's worker, the floor script)."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.port = port


def _run_ns(pid: int) -> float:
    """Seconds on a CPU so far, from the scheduler (/proc/PID/schedstat: exact, not ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _user_sys(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", default="")
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--before", metavar="TREE", default="",
                        help="also measure musegate from this checkout (variant mg-before)")
    parser.add_argument("--nginx", action="store_true", help="also measure nginx in front")
    parser.add_argument("--floor", action="store_true",
                        help="also measure bench/floor_relay.py (a callback-only asyncio relay)")
    parser.add_argument("--supysonic", action="store_true",
                        help="supysonic (closes every connection) instead of the keep-alive stub")
    parser.add_argument("--spy-target", default="musegate")
    parser.add_argument("--spy", default="",
                        help="sample the shipped musegate with py-spy into this collapsed-stack file")
    args = parser.parse_args()
    if args.before:
        EXPERIMENTS["mg-before"] = code_before(Path(args.before).resolve())
        args.variant.insert(0, "mg-before")
    proc = None
    try:
        with tempfile.TemporaryDirectory(prefix="musegate-bench-cpu-") as tmp:
            async with contextlib.AsyncExitStack() as stack:
                if args.supysonic:
                    from tests.supysonic_server import Supysonic, generate_library

                    music = generate_library(Path(tmp) / "music", artists=2, albums=1, tracks=1,
                                             seconds=1.0)
                    server = await stack.enter_async_context(Supysonic.start(
                        Path(tmp), music, users={"bench": "secret"}))
                    url = server.url
                else:
                    proc, port = await stub()
                    url = f"http://127.0.0.1:{port}"
                targets = {}
                patch = _PROFILE.format(out=args.profile) if args.profile else ""
                targets["musegate"] = await stack.enter_async_context(run_musegate_served(
                    Path(tmp) / "mg", url, {"source": "subsonic"}, patch=patch))
                for name in args.variant:
                    targets[name] = await stack.enter_async_context(run_musegate_served(
                        Path(tmp) / name, url, {"source": "subsonic"},
                        patch={**PASSTHROUGH_VARIANTS, **EXPERIMENTS}[name]))
                if args.nginx:
                    from bench.benchlib import run_nginx

                    ng = await stack.enter_async_context(run_nginx(Path(tmp) / "nginx", url))
                    targets["nginx"] = _Pid(ng.pid, int(ng.url.rsplit(":", 1)[1]))
                if args.floor:
                    fport = free_port()
                    fproc = await asyncio.create_subprocess_exec(
                        sys.executable, str(REPO / "bench" / "floor_relay.py"),
                        url.rsplit(":", 1)[1], str(fport),
                        stdout=asyncio.subprocess.PIPE)
                    assert fproc.stdout is not None
                    await fproc.stdout.readline()
                    stack.callback(fproc.kill)
                    targets["floor"] = _Pid(fproc.pid, fport)
                clients = {t: RawClient(s.port) for t, s in targets.items()}
                for c in clients.values():
                    for _ in range(50):
                        c.one()
                spy = None
                if args.spy:
                    import subprocess
                    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record",
                                            "-p", str(targets[args.spy_target].pid), "-r", "2000",
                                            "-f", "raw", "-o", args.spy, "--nonblocking"])
                    time.sleep(1.0)
                walls: dict[str, list[float]] = {t: [] for t in targets}
                cpu = dict.fromkeys(targets, 0.0)
                sys_cpu = dict.fromkeys(targets, 0.0)
                run = dict.fromkeys(targets, 0.0)
                per = max(1, args.n // args.rounds)
                for _ in range(args.rounds):
                    for t, c in clients.items():
                        c0 = cpu_seconds(targets[t].pid)
                        r0 = _run_ns(targets[t].pid)
                        s0 = _user_sys(targets[t].pid)[1]
                        walls[t] += [c.one() for _ in range(per)]
                        cpu[t] += cpu_seconds(targets[t].pid) - c0
                        run[t] += _run_ns(targets[t].pid) - r0
                        sys_cpu[t] += _user_sys(targets[t].pid)[1] - s0
                if spy is not None:
                    import signal
                    spy.send_signal(signal.SIGINT)
                    spy.wait()
                for t in targets:
                    print(f"{t:>16}: p50 {statistics.median(walls[t]) * 1000:.3f} ms, "
                          f"on CPU {run[t] * 1000 / len(walls[t]):.3f} ms per ping (schedstat); "
                          f"CPU {cpu[t] * 1000 / len(walls[t]):.3f} ms (ticks) "
                          f"(system {sys_cpu[t] * 1000 / len(walls[t]):.3f}) "
                          f"({len(walls[t])} pings)", flush=True)
                for c in clients.values():
                    c.close()
    finally:
        if proc is not None:
            proc.terminate()
            await proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
