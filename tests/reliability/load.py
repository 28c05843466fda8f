"""Load and soak: many Subsonic/API clients against a real ``musegate serve`` before supysonic.

One run is: a generated library served by a real supysonic on 127.0.0.1, analysed by
``musegate analyze`` (or, for the fast test, given synthetic analyses), a real
``musegate serve`` process in front of it, and ``clients`` aiohttp clients (each its
own session and connection, Subsonic users shared round-robin) that loop over a
weighted mix of pass-through calls (``stream`` whole and with ``Range``,
``getAlbumList2``, ``getAlbum``, ``search3``, ``getCoverArt``), intercepted similarity
calls (``getSimilarSongs2``, ``getSonicSimilarTracks``, ``findSonicPath``) and
musegate's JSON API (``/api/similar``, ``/api/path``). Every answer is checked (status,
Subsonic ``status``, non-empty similarity answers, stream bytes equal to the file's).

musegate's RSS and open file descriptors (``/proc/PID/status``, ``/proc/PID/fd``) are
sampled every ``sample_seconds``. The run has a warm-up phase (caches fill, imports
finish) after which the baseline is taken with every client disconnected; the final
figures are taken the same way after the main phase, so the fd counts compare like
with like.

Usage::

    python -m tests.reliability.load --clients 50 --minutes 10 --json build/load.json
    make load     # 50 clients, 10 minutes
    make soak     # 50 clients, 1 hour

The exit status is 0 when the targets hold: no errors, RSS growth after warm-up at
most 10 %, no file-descriptor growth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from musegate.supysonic_runner import Supysonic
from tests.secret_watch import watch_log_file, watch_secret
from tests.supysonic_server import generate_library

API_KEY = "load-api-key-7b1f0c2d9e"
RSS_GROWTH_LIMIT = 0.10
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=120)
READY_SECONDS = 180.0
SETTLE_SECONDS = 30.0

# call class -> (weight, kind); kinds are what docs/reliability.md reports p99 for
CALLS: dict[str, tuple[int, str]] = {
    "stream": (8, "passthrough"),
    "stream_range": (8, "passthrough"),
    "getAlbumList2": (8, "passthrough"),
    "getAlbum": (8, "passthrough"),
    "search3": (8, "passthrough"),
    "getCoverArt": (5, "passthrough"),
    "getSimilarSongs2": (16, "intercepted"),
    "getSonicSimilarTracks": (12, "intercepted"),
    "findSonicPath": (7, "intercepted"),
    "api_similar": (12, "api"),
    "api_path": (8, "api"),
}


@dataclass
class Settings:
    clients: int = 50
    seconds: float | None = 600.0  # main phase length; None: ``requests`` per client
    requests: int | None = None  # per client in the main phase (instead of ``seconds``)
    warmup_seconds: float | None = 60.0
    warmup_requests: int | None = None
    think: float = 1.0  # mean pause between one client's requests (uniform 0..2*think)
    users: int = 10
    artists: int = 4
    albums: int = 3
    tracks: int = 5
    track_seconds: float = 12.0
    analysis: str = "real"  # "real": musegate analyze; "synthetic": embeddings written directly
    sample_seconds: float = 5.0
    seed: int = 2012


@dataclass
class Sample:
    t: float
    rss_kib: int
    fds: int


@dataclass
class Report:
    settings: dict[str, Any]
    started: str = ""
    machine: str = ""
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    error_examples: list[str] = field(default_factory=list)
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_base_kib: int = 0
    rss_end_kib: int = 0
    rss_max_kib: int = 0
    rss_growth: float = 0.0
    fd_base: int = 0
    fd_end: int = 0
    fd_max: int = 0
    samples: list[Sample] = field(default_factory=list)
    main_seconds: float = 0.0
    tracks: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def targets(self) -> dict[str, bool]:
        return {"0 errors": self.error_count == 0,
                "RSS growth <= 10 %": self.rss_growth <= RSS_GROWTH_LIMIT,
                "no fd growth": self.fd_end <= self.fd_base}

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["error_count"] = self.error_count
        out["targets"] = self.targets()
        return out

    def markdown(self) -> str:
        lines = [
            f"started {self.started} on {self.machine}; {self.settings['clients']} clients, "
            f"main phase {self.main_seconds:.0f} s, {self.tracks} tracks "
            f"({self.settings['analysis']} analysis)",
            "",
            f"requests {self.requests}, errors {self.error_count} "
            + (json.dumps(self.errors) if self.errors else ""),
            f"RSS base {self.rss_base_kib / 1024:.1f} MiB -> end {self.rss_end_kib / 1024:.1f} "
            f"MiB (growth {self.rss_growth * 100:+.1f} %, max {self.rss_max_kib / 1024:.1f} MiB)",
            f"open fds base {self.fd_base} -> end {self.fd_end} (max {self.fd_max} under load)",
            "",
            "| call | kind | n | p50 ms | p99 ms | max ms |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, row in self.latency_ms.items():
            kind = CALLS[name][1] if name in CALLS else "all"
            lines.append(f"| {name} | {kind} | {row['n']:.0f} | {row['p50']:.1f} | "
                         f"{row['p99']:.1f} | {row['max']:.1f} |")
        lines += ["", "targets: " + ", ".join(f"{k}: {'met' if v else 'MISSED'}"
                                            for k, v in self.targets().items())]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- process probes


def read_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def count_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sample(pid: int, t0: float) -> Sample:
    return Sample(round(time.monotonic() - t0, 2), read_rss_kib(pid), count_fds(pid))


async def settle_fds(pid: int, at_most: int | None) -> int:
    """Once clients are gone the server closes their sockets: wait until the fd count is at
    most ``at_most`` (the baseline) or, without one, the same for a second; give up after
    SETTLE_SECONDS and return what is open then."""
    deadline = time.monotonic() + SETTLE_SECONDS
    last, same_since = count_fds(pid), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        now = count_fds(pid)
        if at_most is not None and now <= at_most:
            return now
        if now != last:
            last, same_since = now, time.monotonic()
        elif at_most is None and time.monotonic() - same_since >= 1.0:
            return now
    return count_fds(pid)


def percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64) * 1000.0
    return {"n": float(arr.size), "p50": float(np.percentile(arr, 50)),
            "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}


# ---------------------------------------------------------------------------- the library


def add_covers(music: Path) -> None:
    """A small JPEG in every album folder, so that ``getCoverArt`` has something to send."""
    from PIL import Image

    for n, album in enumerate(sorted(p for p in music.glob("*/*") if p.is_dir())):
        colour = ((40 * n) % 256, (90 + 30 * n) % 256, (200 - 20 * n) % 256)
        Image.new("RGB", (64, 64), colour).save(album / "cover.jpg", quality=80)


def analysed_ids(db: Path) -> list[int]:
    """musegate's ids of the analysed tracks (read-only, as a second process would)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in con.execute("SELECT track_id FROM analyses ORDER BY track_id")]
    finally:
        con.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Library:
    music: Path
    songs: list[dict[str, Any]]  # supysonic's song objects
    albums: list[str]
    covers: list[str]
    mg_ids: list[int]  # musegate's numeric track ids
    content: dict[str, bytes]  # song id -> file bytes (to check streamed bytes)


def _env(data: Path, upstream: str, music: Path, port: int) -> dict[str, str]:
    return {**os.environ, "MUSEGATE_DATA_DIR": str(data), "MUSEGATE_SOURCE": "subsonic",
            "MUSEGATE_UPSTREAM_URL": upstream, "MUSEGATE_UPSTREAM_USER": "alice",
            "MUSEGATE_UPSTREAM_PASSWORD": "alicepw", "MUSEGATE_PATH_MAP": f"={music}",
            "MUSEGATE_API_KEY": API_KEY, "MUSEGATE_ANALYSIS_MODE": "fast",
            "MUSEGATE_WORKERS": "1", "MUSEGATE_LOG_LEVEL": "INFO", "OMP_NUM_THREADS": "1",
            "MUSEGATE_PORT": str(port), "MUSEGATE_HOST": "127.0.0.1"}


async def _write_synthetic(env: dict[str, str], seed: int) -> None:
    """Analyses without the model (the fast test): the serve process's own configuration
    and adapter scan supysonic, then every track gets an embedding near its artist's."""
    from analysis.store import LibraryStore
    from musegate import library
    from musegate.config import load_config
    from tests.store_factory import synthetic_analysis

    config = load_config(None, env=env)
    adapter = library.adapter_for(config)
    store = await LibraryStore.open(config.db_path)
    try:
        await library.scan(store, adapter)
        known = await store.tracks_of_source(adapter.source)
        rng = np.random.default_rng(seed)
        artists = sorted({t.artist or "" for t in known.values()})
        centres = rng.standard_normal((len(artists), 200))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        version = library.analyzer_settings(config).version
        await store.write_results([
            (t.id, synthetic_analysis(centres[artists.index(t.artist or "")]
                                      + rng.standard_normal(200) * 0.5 / np.sqrt(200),
                                      version, duration=1.0))
            for t in known.values()])
    finally:
        await store.close()
        await library.close_adapter(adapter)


async def _subsonic_get(session: aiohttp.ClientSession, url: str, method: str,
                        **params: Any) -> dict[str, Any]:
    query = {"u": "alice", "p": "alicepw", "v": "1.12.0", "c": "load", "f": "json", **params}
    async with session.get(f"{url}/rest/{method}", params=query) as resp:
        body = (await resp.json())["subsonic-response"]
    assert body["status"] == "ok", body
    return body


async def _library(session: aiohttp.ClientSession, upstream: str, music: Path) -> Library:
    body = await _subsonic_get(session, upstream, "search3", query="", songCount=500,
                               albumCount=0, artistCount=0)
    songs = body["searchResult3"]["song"]
    albums = await _subsonic_get(session, upstream, "getAlbumList2", type="alphabeticalByName",
                                 size=500)
    album_list = albums["albumList2"]["album"]
    covers = sorted({a["coverArt"] for a in album_list if a.get("coverArt")})
    content = {s["id"]: (music / s["path"]).read_bytes() for s in songs}
    return Library(music, songs, [a["id"] for a in album_list], covers, [], content)


# ---------------------------------------------------------------------------- the musegate process


@contextlib.asynccontextmanager
async def musegate_serve(tmp: Path, env: dict[str, str], port: int) -> AsyncIterator[int]:
    """``musegate serve`` as its own process (its own session, so its analysis workers too);
    yields its pid once ``/ready`` answers 200."""
    log = tmp / "serve.log"
    watch_log_file(log)
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + READY_SECONDS
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"musegate serve exited {proc.returncode}: see {log}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/musegate/ready",
                                        headers={"X-API-Key": API_KEY}) as resp:
                        if resp.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"musegate serve not ready: see {log}")
                await asyncio.sleep(0.2)
        yield proc.pid
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()


# ---------------------------------------------------------------------------- the clients


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.examples: list[str] = []
        self.requests = 0

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{kind}: {detail[:300]}")


class LoadClient:
    """One app: its own session (keep-alive connection), one user, a seeded random mix."""

    def __init__(self, n: int, base: str, lib: Library, settings: Settings, stats: Stats) -> None:
        self.base = base
        self.lib = lib
        self.stats = stats
        self.think = settings.think
        self.rng = random.Random(settings.seed * 1000 + n)
        user = n % settings.users
        self.auth = {"u": f"load{user}", "p": user_password(user), "v": "1.12.0",
                     "c": f"load-{n}", "f": "json"}
        names = [c for c in CALLS if c != "getCoverArt" or lib.covers]
        self.names = names
        self.weights = [CALLS[c][0] for c in names]

    async def run(self, session: aiohttp.ClientSession, stop: Callable[[int], bool]) -> None:
        done = 0
        while not stop(done):
            name = self.rng.choices(self.names, self.weights)[0]
            started = time.monotonic()
            try:
                await getattr(self, "_" + name)(session)
            except TimeoutError:
                self.stats.error("timeout", name)
            except aiohttp.ClientError as exc:
                self.stats.error(f"connection:{type(exc).__name__}", f"{name}: {exc}")
            except CheckFailed as exc:
                self.stats.error(exc.kind, f"{name}: {exc.detail}")
            else:
                self.stats.latency[name].append(time.monotonic() - started)
            self.stats.requests += 1
            done += 1
            if self.think:
                await asyncio.sleep(self.rng.uniform(0, 2 * self.think))

    # -- helpers

    def _song(self) -> dict[str, Any]:
        return self.rng.choice(self.lib.songs)

    async def _rest(self, session: aiohttp.ClientSession, method: str,
                    **params: Any) -> dict[str, Any]:
        async with session.get(f"{self.base}/rest/{method}",
                               params={**self.auth, **params}) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise CheckFailed(f"http-{resp.status}", raw[:200].decode(errors="replace"))
        try:
            body = json.loads(raw)["subsonic-response"]
        except (ValueError, KeyError) as exc:
            raise CheckFailed("not-json", raw[:200].decode(errors="replace")) from exc
        if body.get("status") != "ok":
            code = body.get("error", {}).get("code")
            raise CheckFailed(f"subsonic-{code}", json.dumps(body)[:200])
        return body

    async def _api(self, session: aiohttp.ClientSession, path: str,
                   **params: Any) -> dict[str, Any]:
        async with session.get(f"{self.base}/musegate/api/{path}", params=params,
                               headers={"X-API-Key": API_KEY}) as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise CheckFailed(f"http-{resp.status}", raw[:200].decode(errors="replace"))
        return json.loads(raw)

    @staticmethod
    def _nonempty(items: Any, what: str) -> None:
        if not items:
            raise CheckFailed("empty", what)

    # -- the calls

    async def _stream(self, session: aiohttp.ClientSession) -> None:
        song = self._song()
        async with session.get(f"{self.base}/rest/stream",
                               params={**self.auth, "id": song["id"]}) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise CheckFailed(f"http-{resp.status}", data[:200].decode(errors="replace"))
        if data != self.lib.content[song["id"]]:
            raise CheckFailed("stream-bytes", f"{len(data)} bytes for {song['path']}")

    async def _stream_range(self, session: aiohttp.ClientSession) -> None:
        song = self._song()
        whole = self.lib.content[song["id"]]
        start = self.rng.randrange(0, len(whole) - 1)
        end = min(len(whole) - 1, start + self.rng.randrange(1, 256 * 1024))
        async with session.get(f"{self.base}/rest/stream",
                               params={**self.auth, "id": song["id"]},
                               headers={"Range": f"bytes={start}-{end}"}) as resp:
            data = await resp.read()
            if resp.status != 206:
                raise CheckFailed(f"http-{resp.status}", data[:200].decode(errors="replace"))
        if data != whole[start:end + 1]:
            raise CheckFailed("range-bytes", f"{len(data)} bytes for {start}-{end}")

    async def _getAlbumList2(self, session: aiohttp.ClientSession) -> None:  # noqa: N802
        kind = self.rng.choice(["random", "newest", "alphabeticalByName", "frequent"])
        body = await self._rest(session, "getAlbumList2", type=kind, size=20)
        if kind != "frequent":
            self._nonempty(body["albumList2"].get("album"), kind)

    async def _getAlbum(self, session: aiohttp.ClientSession) -> None:  # noqa: N802
        body = await self._rest(session, "getAlbum", id=self.rng.choice(self.lib.albums))
        self._nonempty(body["album"].get("song"), "album songs")

    async def _search3(self, session: aiohttp.ClientSession) -> None:
        word = self.rng.choice(["Song", "Song 0", ""])  # supysonic matches song titles
        body = await self._rest(session, "search3", query=word, songCount=20)
        self._nonempty(body["searchResult3"].get("song"), f"search {word!r}")

    async def _getCoverArt(self, session: aiohttp.ClientSession) -> None:  # noqa: N802
        cover = self.rng.choice(self.lib.covers)
        async with session.get(f"{self.base}/rest/getCoverArt",
                               params={**self.auth, "id": cover}) as resp:
            data = await resp.read()
            if resp.status != 200 or not resp.content_type.startswith("image/"):
                raise CheckFailed(f"http-{resp.status}", f"{resp.content_type} {data[:100]!r}")

    async def _getSimilarSongs2(self, session: aiohttp.ClientSession) -> None:  # noqa: N802
        body = await self._rest(session, "getSimilarSongs2", id=self._song()["id"], count=10)
        self._nonempty(body["similarSongs2"].get("song"), "similarSongs2")

    async def _getSonicSimilarTracks(self, session: aiohttp.ClientSession) -> None:  # noqa: N802
        body = await self._rest(session, "getSonicSimilarTracks", id=self._song()["id"],
                                count=10)
        self._nonempty(body.get("sonicMatch"), "sonicMatch")

    async def _findSonicPath(self, session: aiohttp.ClientSession) -> None:  # noqa: N802
        a, b = self.rng.sample(self.lib.songs, 2)
        body = await self._rest(session, "findSonicPath", startSongId=a["id"],
                                endSongId=b["id"], count=8)
        self._nonempty(body.get("sonicMatch"), "sonic path")

    async def _api_similar(self, session: aiohttp.ClientSession) -> None:
        body = await self._api(session, "similar", ids=self.rng.choice(self.lib.mg_ids), n=10)
        self._nonempty(body.get("tracks"), "api similar")

    async def _api_path(self, session: aiohttp.ClientSession) -> None:
        a, b = self.rng.sample(self.lib.mg_ids, 2)
        body = await self._api(session, "path", start=a, end=b, length=8)
        self._nonempty(body.get("tracks"), "api path")


class CheckFailed(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


def user_password(n: int) -> str:
    return f"load-pw-{n}-4d1c"


async def run_phase(base: str, lib: Library, settings: Settings, stats: Stats,
                    seconds: float | None, requests: int | None) -> None:
    """Every client runs until the phase's time is up or it has made its requests, then
    closes its session (and so its connection)."""
    end = time.monotonic() + seconds if seconds is not None else None

    def stop(done: int) -> bool:
        if requests is not None and done >= requests:
            return True
        return end is not None and time.monotonic() >= end

    async def one(n: int) -> None:
        client = LoadClient(n, base, lib, settings, stats)
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT,
                                         connector=aiohttp.TCPConnector(limit=1)) as session:
            await client.run(session, stop)

    await asyncio.gather(*(one(n) for n in range(settings.clients)))


async def sampler(pid: int, t0: float, every: float, out: list[Sample],
                  stats: Stats | None = None, progress_seconds: float = 60.0) -> None:
    """Sample the server every ``every`` s; print a progress line every ``progress_seconds``
    (an hour-long soak shows how it is going, and what it had if it is cut short)."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(every)
        with contextlib.suppress(OSError, RuntimeError):
            out.append(sample(pid, t0))
        if stats is not None and out and time.monotonic() - last >= progress_seconds:
            last = time.monotonic()
            s = out[-1]
            print(f"[{s.t:7.0f} s] requests {stats.requests}, errors {dict(stats.errors)}, "
                  f"RSS {s.rss_kib / 1024:.1f} MiB, fds {s.fds}", flush=True)


# ---------------------------------------------------------------------------- the run


async def run_load(tmp: Path, settings: Settings) -> Report:
    report = Report(settings=asdict(settings),
                    started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    machine=f"{os.cpu_count()}-core, "
                            f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') >> 30} GiB")
    users = {"alice": "alicepw", **{f"load{i}": user_password(i) for i in range(settings.users)}}
    watch_secret(API_KEY, *users.values())
    music = generate_library(tmp / "music", artists=settings.artists, albums=settings.albums,
                             tracks=settings.tracks, seconds=settings.track_seconds)
    add_covers(music)
    data = tmp / "data"
    async with Supysonic.start(tmp, music, users=users) as upstream, \
            aiohttp.ClientSession() as http:
        lib = await _library(http, upstream.url, music)
        port = _free_port()
        env = _env(data, upstream.url, music, port)
        if settings.analysis == "real":
            log = tmp / "analyze.log"
            watch_log_file(log)
            with open(log, "ab") as out:
                done = await asyncio.to_thread(subprocess.run, [
                    sys.executable, "-m", "cli", "analyze", "--workers", "1",
                    "--mode", "fast", "--no-progress"], stdout=out, stderr=subprocess.STDOUT,
                    env=env)
            if done.returncode != 0:
                raise RuntimeError(f"musegate analyze failed: see {log}")
        else:
            await _write_synthetic(env, settings.seed)
        async with musegate_serve(tmp, env, port) as pid:
            base = f"http://127.0.0.1:{port}"
            lib.mg_ids = analysed_ids(data / "musegate.db")
            report.tracks = len(lib.mg_ids)
            if report.tracks < len(lib.songs):
                raise RuntimeError(f"only {report.tracks} of {len(lib.songs)} songs analysed")
            stats = Stats()
            t0 = time.monotonic()
            samples = report.samples
            samples.append(sample(pid, t0))
            await run_phase(base, lib, settings, stats, settings.warmup_seconds,
                            settings.warmup_requests)
            fd_base = await settle_fds(pid, None)
            base_sample = sample(pid, t0)
            samples.append(base_sample)
            watch = asyncio.create_task(sampler(pid, t0, settings.sample_seconds, samples, stats))
            main_start = time.monotonic()
            try:
                await run_phase(base, lib, settings, stats, settings.seconds, settings.requests)
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
            report.main_seconds = time.monotonic() - main_start
            report.fd_max = max(s.fds for s in samples)
            report.fd_end = await settle_fds(pid, fd_base)
            end_sample = sample(pid, t0)
            samples.append(end_sample)
            report.fd_base = fd_base
            report.rss_base_kib = base_sample.rss_kib
            report.rss_end_kib = end_sample.rss_kib
            report.rss_max_kib = max(s.rss_kib for s in samples)
            report.rss_growth = (end_sample.rss_kib - base_sample.rss_kib) / base_sample.rss_kib
    report.requests = stats.requests
    report.errors = dict(stats.errors)
    report.error_examples = stats.examples
    kinds: dict[str, list[float]] = defaultdict(list)
    for name in CALLS:
        if stats.latency.get(name):
            report.latency_ms[name] = percentiles(stats.latency[name])
            kinds[CALLS[name][1]].extend(stats.latency[name])
    for kind, values in kinds.items():
        report.latency_ms[f"all {kind}"] = percentiles(values)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--minutes", type=float, default=10.0, help="main phase (after warm-up)")
    p.add_argument("--warmup-minutes", type=float, default=1.0)
    p.add_argument("--think", type=float, default=1.0,
                   help="mean pause between one client's requests, seconds")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--analysis", choices=("real", "synthetic"), default="real")
    p.add_argument("--sample-seconds", type=float, default=5.0)
    p.add_argument("--json", type=Path, help="write the report here (and REPORT.md beside it)")
    p.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = p.parse_args(argv)
    settings = Settings(clients=args.clients, seconds=args.minutes * 60,
                        warmup_seconds=args.warmup_minutes * 60, think=args.think,
                        users=args.users, analysis=args.analysis,
                        sample_seconds=args.sample_seconds)
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = args.keep
            tmp.mkdir(parents=True, exist_ok=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="musegate-load-")))
        report = asyncio.run(run_load(tmp, settings))
    text = report.markdown()
    print(text, flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_json(), indent=1))
        args.json.with_suffix(".md").write_text(text + "\n")
    return 0 if all(report.targets().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
