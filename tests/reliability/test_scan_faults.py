"""The music server fails during a scheduled library scan or analysis: the run says so, keeps
what it had, and the next run finishes.

``musegate serve``'s app (the library scheduler on) scans a real supysonic
(tests/supysonic_server.py), the fake Jellyfin or the fake LMS (tests/fakes/)
through the fault proxy (tests/reliability/fault_proxy.py), with the audio
downloaded through it too (no path map). Runs are started by calling the
scheduler's job directly and awaited; nothing waits on a clock.

* At start the server dies in the middle of the analysis (the proxy refuses from
  the third download on, the listener closed): the run ends ``failed`` with the
  server's reason, the two songs analysed before are kept (and served), the
  songs that met the outage stay pending with *no failed attempt* counted, and
  after the server returns the next run analyses the rest.
* Then every fault during a scan (refused, stalled, cut mid-body, reset, bytes
  that are not HTTP, an HTML 5xx page, an HTML 200, the fault striking after the
  scan's first request, the real supysonic stopped): each run ends ``failed``
  with one ERROR log line and no traceback, the error names the server and no
  secret, ``/musegate/api/jobs/library-scan`` shows it, no song or analysis is
  lost, the gateway answers meanwhile, and the next run after recovery is ``done``.
* Lyrion: the Music Similarity plugin's mixes need no LMS call and are answered
  through every fault; the web UI's login gets 502/503/504 and works again after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import keys
from gateway.app import create_app
from musegate import library
from musegate.config import load_config
from musegate.scheduler import LibraryScheduler
from tests import test_lyrion_gateway as lg
from tests import test_subsonic_gateway as ss
from tests.conftest import SR, sine_mix, write_track
from tests.fakes.jellyfin import FakeJellyfin
from tests.fakes.lyrion import FakeLyrion
from tests.reliability.fault_proxy import Fault, FaultProxy
from tests.secret_watch import watch_secret
from tests.supysonic_server import Supysonic, generate_library

module_loop = pytest.mark.asyncio(loop_scope="module")

TIMEOUTS = {"upstream_timeout": 2.0, "upstream_connect_timeout": 2.0}
SCAN_FAULTS = [Fault.REFUSE, Fault.STALL, Fault.HALF_CLOSE, Fault.TRUNCATE, Fault.GARBAGE,
               Fault.HTTP_500, Fault.HTTP_502, Fault.HTTP_503, Fault.WRONG_BODY, Fault.RESET]
# `make test`: one of each family (refused, silent, cut short, the server's own page, not
# the protocol); `make reliability`: all of them.
FAST_FAULTS = [Fault.REFUSE, Fault.STALL, Fault.TRUNCATE, Fault.HTTP_500, Fault.WRONG_BODY]
SWEEPS = [pytest.param(FAST_FAULTS, id="fast"),
          pytest.param(SCAN_FAULTS, id="all", marks=pytest.mark.reliability)]
# Downloads that pass before the server dies in the first run's analysis.
ANALYSED_BEFORE_THE_OUTAGE = 2
# What each run's error said, by protocol and fault (printed with -s, for docs/reliability.md).
SEEN: dict[str, dict[str, str]] = {}


# ---------------------------------------------------------------------------- log watch


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR]

    def tracebacks(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()}" for r in self.records if r.exc_info]


@contextlib.contextmanager
def log_records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


# ---------------------------------------------------------------------------- environment


@dataclass
class ScanEnv:
    protocol: str
    proxy: FaultProxy
    app: web.Application
    url: str
    session: aiohttp.ClientSession
    songs: int  # in the server's library
    secrets: list[str]
    # The first run (at start), during which the server died mid-analysis.
    first: dict[str, Any] = field(default_factory=dict)
    first_log: _Records | None = None
    stop_server: Callable[[], Awaitable[None]] | None = None
    start_server: Callable[[], Awaitable[None]] | None = None

    @property
    def scheduler(self) -> LibraryScheduler:
        return self.app[keys.SCHEDULER]

    async def get(self, path: str, **params: str) -> tuple[int, Any]:
        async with self.session.get(self.url + path, params=params) as resp:
            body = await resp.read()
            return resp.status, json.loads(body) if resp.content_type == "application/json" \
                else body

    async def counts(self) -> tuple[int, int, int]:
        """(tracks, analysed, failed) in the store."""
        store = self.app[keys.STORE]
        settings = library.analyzer_settings(self.app[keys.CONFIG])
        st = await store.status(settings.version, settings.max_attempts)
        return st.tracks, st.analysed, st.failed


async def _until_finished(scheduler: LibraryScheduler) -> None:
    """Until the run the scheduler started with the server has ended (its announcements)."""
    queue = scheduler.subscribe()
    try:
        while scheduler.state.finished is None:
            await asyncio.wait_for(queue.get(), timeout=300)  # a guard against a hang only
    finally:
        scheduler.unsubscribe(queue)


@contextlib.asynccontextmanager
async def serving(protocol: str, config: Any, proxy: FaultProxy, songs: int, secrets: list[str],
                  download: bytes) -> AsyncIterator[ScanEnv]:
    """musegate as `serve` builds it; its at-start run meets a server that dies mid-analysis."""
    watch_secret(*secrets)
    proxy.set(Fault.REFUSE, trigger=download, skip=ANALYSED_BEFORE_THE_OUTAGE)
    app = create_app(config, refresh_seconds=None, schedule=True)
    app[keys.ADAPTER].page_size = 2  # a scan of several calls, so that a fault can strike mid-scan
    with log_records() as first_log:
        async with TestServer(app, host="127.0.0.1") as ts, aiohttp.ClientSession() as session:
            env = ScanEnv(protocol, proxy, app, str(ts.make_url("")).rstrip("/"), session,
                          songs, secrets)
            await _until_finished(env.scheduler)
            env.first = env.scheduler.state.to_json()
            env.first["counts"] = await env.counts()
            env.first["failures"] = await app[keys.STORE].failures()
            env.first["indexed"] = len(app[keys.SERVICE].snapshot.catalogue)
            env.first_log = first_log
            await proxy.restart()
            yield env


def _no_secret_in(env: ScanEnv, *texts: str) -> None:
    for text in texts:
        assert not any(s in text for s in env.secrets), "a secret in a user-visible text"


async def check_outage_mid_analysis(env: ScanEnv) -> None:
    """The at-start run met the outage: failed, said why, kept what it had, charged nothing."""
    first, log = env.first, env.first_log
    assert log is not None
    assert first["status"] == "failed", first
    assert first["analysed"] == ANALYSED_BEFORE_THE_OUTAGE, first
    tracks, analysed, failed = first["counts"]
    assert (tracks, analysed, failed) == (env.songs, ANALYSED_BEFORE_THE_OUTAGE, 0), first
    assert first["failures"] == []  # the outage is not the songs' fault
    assert first["indexed"] == ANALYSED_BEFORE_THE_OUTAGE  # and what was saved is served
    error = first["error"] or ""
    assert "stopped delivering audio" in error and "stay pending" in error, error
    _no_secret_in(env, error, first["message"])
    assert log.tracebacks() == []
    errors = log.errors()
    assert len(errors) == 1 and "library analysis failed" in errors[0], errors
    SEEN.setdefault(env.protocol, {})["server dies mid-analysis"] = error
    # The server is back: the next run analyses the rest and counts no failure.
    with log_records() as records:
        assert await env.scheduler.run_once()
    state = env.scheduler.state
    assert state.status == "done", state.to_json()
    assert state.analysed == env.songs - ANALYSED_BEFORE_THE_OUTAGE
    assert await env.counts() == (env.songs, env.songs, 0)
    assert records.errors() == [] and records.tracebacks() == []


async def check_scan_faults(env: ScanEnv, faults: list[Fault]) -> None:
    """Each fault fails one run clearly; nothing is lost; the next run after it is done."""
    if (await env.counts())[1] < env.songs:  # run alone: the first test's last run first
        assert await env.scheduler.run_once()
    before = await env.counts()
    assert before == (env.songs, env.songs, 0)
    cases: list[tuple[str, Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = []
    for fault in faults:
        async def break_it(fault: Fault = fault) -> None:
            env.proxy.set(fault)

        async def mend(fault: Fault = fault) -> None:
            if fault is Fault.REFUSE:
                await env.proxy.restart()
            else:
                env.proxy.set(Fault.PASS)
        cases.append((fault.value, break_it, mend))

    async def dies_after_one() -> None:
        env.proxy.set(Fault.REFUSE, skip=1)  # the scan's first request (a page) is answered

    async def back() -> None:
        await env.proxy.restart()
    cases.append(("server dies mid-scan", dies_after_one, back))
    if env.stop_server is not None and env.start_server is not None and faults == SCAN_FAULTS:
        cases.append(("server process stopped", env.stop_server, env.start_server))

    for name, break_it, mend in cases:
        seen = env.proxy.seen
        await break_it()
        run = asyncio.create_task(env.scheduler.run_once())
        with log_records() as records:
            # The gateway answers while the run meets the fault (a stalled call holds it).
            if name == Fault.STALL.value:
                await env.proxy.requests_seen(seen + 1)
                status, state = await env.get("/musegate/api/jobs/library-scan")
                assert status == 200 and (state["status"] == "scanning" or run.done()), state
            status, _ = await env.get("/musegate/health")
            assert status == 200
            status, found = await env.get("/musegate/api/tracks", q="o", limit="3")
            assert status == 200 and found["tracks"], found
            assert await run
        state = env.scheduler.state.to_json()
        assert state["status"] == "failed", (name, state)
        error = state["error"] or ""
        assert f"{env.protocol} server" in error, error  # names the server, says why
        if name == Fault.STALL.value:
            assert "upstream_timeout" in error, error
        _no_secret_in(env, error, state["message"])
        status, shown = await env.get("/musegate/api/jobs/library-scan")
        assert status == 200 and shown["status"] == "failed" and shown["error"] == error
        status, progress = await env.get("/musegate/api/progress")
        assert status == 200 and progress["run"]["error"] == error  # what the Status page shows
        assert records.tracebacks() == [], (name, records.tracebacks())
        errors = records.errors()
        assert len(errors) == 1 and "library scan failed" in errors[0], (name, errors)
        assert await env.counts() == before, name  # not one song or analysis lost
        SEEN.setdefault(env.protocol, {})[name] = error
        await mend()
        with log_records() as records:
            assert await env.scheduler.run_once()
        state = env.scheduler.state.to_json()
        assert state["status"] == "done" and state["error"] is None, (name, state)
        assert records.errors() == [] and records.tracebacks() == [], name
        assert await env.counts() == before, name


@pytest.fixture(scope="module", autouse=True)
def print_seen() -> Iterator[None]:
    yield
    for protocol, rows in SEEN.items():
        for name, error in rows.items():
            print(f"\n{protocol} | {name} | {error}")


# ---------------------------------------------------------------------------- Subsonic


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subsonic(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScanEnv]:
    tmp = tmp_path_factory.mktemp("scan-faults-ss")
    music = generate_library(tmp / "music", artists=2, albums=1, tracks=2, seconds=4.0)
    async with Supysonic.start(tmp, music, users=ss.USERS) as server, \
            FaultProxy(server.port) as proxy:
        config = ss._config(tmp, proxy.url, upstream_user="alice",
                            upstream_password=ss.USERS["alice"], **TIMEOUTS)
        secrets = [ss.USERS["alice"], ss.USERS["alice"].encode().hex()]
        async with serving("Subsonic", config, proxy, 4, secrets, b"/rest/download") as env:
            env.stop_server, env.start_server = server.stop, server.start
            yield env


@module_loop
async def test_subsonic_server_dies_mid_analysis_nothing_is_lost_or_charged(
        subsonic: ScanEnv) -> None:
    await check_outage_mid_analysis(subsonic)


@pytest.mark.parametrize("faults", SWEEPS)
@module_loop
async def test_subsonic_scan_faults_fail_the_run_clearly_then_the_next_run_is_done(
        subsonic: ScanEnv, faults: list[Fault]) -> None:
    await check_scan_faults(subsonic, faults)


# ---------------------------------------------------------------------------- Jellyfin


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jellyfin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScanEnv]:
    tmp = tmp_path_factory.mktemp("scan-faults-jf")
    fake = FakeJellyfin()
    fake.add_library("Music")
    key = fake.add_api_key("musegate")
    for i in range(4):
        audio = sine_mix([110.0 * (1 + i % 3), 165.0 * (1 + 0.05 * i)], 4.0, seed=i)
        file = write_track(tmp / "media" / f"{i}.flac", audio)
        fake.add_song("Music", f"Song {i}", f"Artist {i % 2}", f"Album {i % 2}", "Ambient",
                      f"/media/{i}.flac", 4.0, file)
    upstream = await fake.start()
    try:
        async with FaultProxy(int(upstream.rsplit(":", 1)[1])) as proxy:
            config = load_config(None, env={}, overrides={
                "data_dir": str(tmp / "data"), "source": "jellyfin", "upstream_url": proxy.url,
                "upstream_api_key": key, "workers": 1, **TIMEOUTS})
            async with serving("Jellyfin", config, proxy, 4, [key], b"/Download") as env:
                yield env
    finally:
        await fake.stop()


@module_loop
async def test_jellyfin_server_dies_mid_analysis_nothing_is_lost_or_charged(
        jellyfin: ScanEnv) -> None:
    await check_outage_mid_analysis(jellyfin)


@pytest.mark.parametrize("faults", SWEEPS)
@module_loop
async def test_jellyfin_scan_faults_fail_the_run_clearly_then_the_next_run_is_done(
        jellyfin: ScanEnv, faults: list[Fault]) -> None:
    await check_scan_faults(jellyfin, faults)


# ---------------------------------------------------------------------------- Lyrion


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lyrion(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ScanEnv]:
    tmp = tmp_path_factory.mktemp("scan-faults-lms")
    fake = FakeLyrion(user="admin", password=lg.PASSWORD)
    for i in range(4):
        audio = sine_mix([110.0 * (1 + i % 3), 165.0 * (1 + 0.05 * i)], 4.0, seed=i)
        if i == 3:
            audio = audio * 0.5 + 0.1 * sine_mix([3000.0], 4.0, seed=9)
        rel = f"a{i % 2}/song {i}.flac"
        file = write_track(tmp / "media" / rel, audio.astype("float32"), SR)
        fake.add_track(f"Song {i}", f"Artist {i}", f"Album {i}", f"/music/{rel}", file,
                       genres=["Ambient"], duration=4.0)
    upstream = await fake.start()
    try:
        async with FaultProxy(int(upstream.rsplit(":", 1)[1])) as proxy:
            config = lg._config(tmp, proxy.url, **TIMEOUTS)
            async with serving("Lyrion", config, proxy, 4, [lg.PASSWORD], b"/download") as env:
                env.first["fake"] = fake
                yield env
    finally:
        await fake.stop()


@module_loop
async def test_lyrion_server_dies_mid_analysis_nothing_is_lost_or_charged(
        lyrion: ScanEnv) -> None:
    await check_outage_mid_analysis(lyrion)


@pytest.mark.parametrize("faults", SWEEPS)
@module_loop
async def test_lyrion_scan_faults_fail_the_run_clearly_then_the_next_run_is_done(
        lyrion: ScanEnv, faults: list[Fault]) -> None:
    await check_scan_faults(lyrion, faults)


LOGIN_STATUS = {Fault.STALL: 504, Fault.HTTP_503: 503}
LOGIN_WORDS = {502: "not reachable", 503: "unavailable", 504: "did not answer in time"}


@pytest.mark.parametrize("faults", SWEEPS)
@module_loop
async def test_lyrion_mixes_are_answered_while_lms_fails_and_the_login_says_why(
        lyrion: ScanEnv, faults: list[Fault]) -> None:
    """The plugin's DSTM mix and similar-tracks menu need no LMS call: answered through every
    fault. The web UI's login must ask LMS: the status says how it failed; after, it works."""
    env = lyrion
    fake: FakeLyrion = env.first["fake"]
    urls = [t.url for t in fake.tracks.values()]

    async def mix() -> tuple[int, str]:
        async with env.session.post(env.url + "/api/similar",
                                    json=lg.plugin_mix_body([urls[0]], [], count=3)) as resp:
            return resp.status, await resp.text()

    async def similar_menu() -> tuple[int, str]:
        async with env.session.post(env.url + "/api/dump",
                                    json=lg.plugin_similar_body(urls[1])) as resp:
            return resp.status, await resp.text()

    async def login() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as fresh, fresh.post(
                env.url + "/musegate/login",
                json={"username": "admin", "password": lg.PASSWORD}) as resp:
            return resp.status, await resp.json()

    for fault in faults:
        env.proxy.set(fault)
        with log_records() as records:
            (m_status, m_text), (d_status, d_text), (l_status, l_body) = await asyncio.gather(
                mix(), similar_menu(), login())
        assert m_status == 200 and len(m_text.split("\n")) == 3, (fault, m_status, m_text)
        assert all(line.startswith("file:///music/") for line in m_text.split("\n"))
        assert d_status == 200 and len(d_text.split("\n")) == env.songs - 1, (fault, d_text)
        want = LOGIN_STATUS.get(fault, 502)
        assert l_status == want and LOGIN_WORDS[want] in l_body["error"], (fault, l_body)
        _no_secret_in(env, json.dumps(l_body))
        assert records.tracebacks() == [] and records.errors() == [], records.errors()
        SEEN.setdefault("Lyrion login", {})[fault.value] = f"{l_status} {l_body['error']}"
        if fault is Fault.REFUSE:
            await env.proxy.restart()
        else:
            env.proxy.set(Fault.PASS)
        status, body = await login()
        assert status == 200 and body["user"] == "admin", body


# ---------------------------------------------------------------------------- downloads


DOWNLOAD_FAULTS = [Fault.REFUSE, Fault.STALL, Fault.HALF_CLOSE, Fault.TRUNCATE, Fault.GARBAGE,
                   Fault.HTTP_500, Fault.HTTP_502, Fault.HTTP_503, Fault.WRONG_BODY, Fault.RESET]


@pytest.mark.parametrize("fault", DOWNLOAD_FAULTS, ids=[f.value for f in DOWNLOAD_FAULTS])
async def test_a_download_the_server_fails_is_the_servers_failure_not_the_tracks(
        fault: Fault, caplog: pytest.LogCaptureFixture) -> None:
    """What the analysis worker's download meets is sorted: the server's failure (ask it
    whether it is up) or the track's (a 404, a Subsonic error body). A body cut short or
    bytes that are not HTTP used to escape as a bare IncompleteRead / BadStatusLine."""
    from analysis.decode import DecodeError, DownloadUnavailable, fetch

    audio = b"fLaC" + bytes(range(256)) * 64

    async def song(request: web.Request) -> web.Response:
        return web.Response(body=audio, content_type="audio/flac")

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"error": "no such song"}, status=404)

    app = web.Application()
    app.router.add_get("/rest/download", song)
    app.router.add_get("/missing", missing)
    caplog.set_level(logging.DEBUG)
    async with TestServer(app, host="127.0.0.1") as upstream, FaultProxy(upstream.port) as proxy:
        url = f"{proxy.url}/rest/download?u=alice&p=enc:{b'alicepw'.hex()}&id=1"
        assert (await asyncio.to_thread(fetch, url, timeout=1.0)).read() == audio
        with pytest.raises(DecodeError) as refused:
            await asyncio.to_thread(fetch, f"{proxy.url}/missing", timeout=1.0)
        assert not isinstance(refused.value, DownloadUnavailable)  # the track's own failure
        proxy.set(fault)
        with pytest.raises(DownloadUnavailable) as failed:
            await asyncio.to_thread(fetch, url, timeout=1.0)
        logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        proxy.release()
    reason = str(failed.value)
    assert reason.startswith(("download failed", "server answered with text/html")), reason
    assert "alicepw" not in reason and b"alicepw".hex() not in reason, reason
    assert reason.startswith("server answered") or "?<redacted>" in reason, reason
    assert not logged, [r.getMessage() for r in logged]


def test_analyze_command_says_the_server_is_down_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`musegate analyze` against a server that is not there: exit 1 and the reason, no
    traceback (it used to raise out of the command)."""
    import socket

    from cli.main import main

    with socket.socket() as sock:  # a port nothing listens on once this closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key in list(os.environ):
        if key.startswith("MUSEGATE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("MUSEGATE_SOURCE", "subsonic")
    monkeypatch.setenv("MUSEGATE_UPSTREAM_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MUSEGATE_UPSTREAM_USER", "alice")
    monkeypatch.setenv("MUSEGATE_UPSTREAM_PASSWORD", ss.USERS["alice"])
    code = main(["--data-dir", str(tmp_path / "data"), "analyze", "--no-progress"])
    _out, err = capsys.readouterr()
    assert code == 1, err
    assert "the library scan failed" in err and "cannot reach the server" in err, err
    assert "Traceback" not in err and ss.USERS["alice"] not in err
