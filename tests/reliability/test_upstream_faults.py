"""The upstream fails during live traffic: every fault × every kind of request, then recovery.

musegate runs in front of a fault proxy (tests/reliability/fault_proxy.py) that
stands before a real supysonic (tests/supysonic_server.py) or the fake Jellyfin
(tests/fakes/jellyfin.py). For each fault the proxy is switched, every request
kind is made at once (intercepted similarity endpoints in each Subsonic format,
pass-through metadata and audio, the web UI's login, the JSON API for a UI
session and for the local operator), and each answer is checked against what
the caller must get: the protocol's own error with the right status and a
message saying why, the upstream's own answer when it is passed through, or a
cut connection when the failure came after the status line (the only honest
signal left). Then the upstream returns and the *first* request of each kind
must succeed. No answer may carry a traceback, no log record one, and
``/health`` answers throughout.

``auth_cache_seconds`` is 0 here, so every intercepted request asks the
upstream (the credential cache is tested in test_credential_bound.py), and
``upstream_timeout`` is 2 s, so a stalled upstream costs 2 s per round (all
requests of a round run concurrently).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway import metrics
from gateway.app import create_app
from tests import test_jellyfin_gateway as jf
from tests import test_subsonic_gateway as ss
from tests.fakes.jellyfin import FakeJellyfin
from tests.reliability.fault_proxy import Fault, FaultProxy
from tests.supysonic_server import Supysonic, generate_library

module_loop = pytest.mark.asyncio(loop_scope="module")

TIMEOUTS = {"upstream_timeout": 2.0, "upstream_connect_timeout": 2.0}
# The status the caller gets, by fault, when musegate itself had to give up on the upstream.
DOWN_STATUS = {
    Fault.REFUSE: 502, Fault.RESET: 502, Fault.GARBAGE: 502, Fault.TRUNCATE: 502,
    Fault.HALF_CLOSE: 502, Fault.HTTP_500: 502, Fault.HTTP_502: 502, Fault.HTTP_503: 503,
    Fault.STALL: 504, Fault.WRONG_BODY: 502,
}
DOWN_WORDS = {502: "reachable", 503: "unavailable", 504: "did not answer in time"}
# Faults that strike before the upstream's status line reaches musegate (the rest come after it).
BEFORE_HEADERS = {Fault.REFUSE, Fault.GARBAGE, Fault.STALL}
STATUS_PAGES = {Fault.HTTP_500: 500, Fault.HTTP_502: 502, Fault.HTTP_503: 503,
                Fault.WRONG_BODY: 200}
FAULTS = [Fault.REFUSE, Fault.STALL, Fault.HALF_CLOSE, Fault.TRUNCATE, Fault.GARBAGE,
          Fault.HTTP_500, Fault.HTTP_502, Fault.HTTP_503, Fault.WRONG_BODY, Fault.RESET]
# `make test` sweeps these (one of each family: refused, too slow, cut short, the server's
# own failure, not the protocol); `make reliability` sweeps them all.
FAST_FAULTS = [Fault.REFUSE, Fault.STALL, Fault.TRUNCATE, Fault.HTTP_500, Fault.WRONG_BODY]


# ---------------------------------------------------------------------------- answers


@dataclass
class Answer:
    status: int = 0
    body: bytes = b""
    content_type: str = ""
    cookie: str = ""  # the musegate_session cookie a login set, as a Cookie header
    cut: bool = False  # the connection ended before the message did

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> Answer:
    answer = Answer()
    try:
        async with session.request(method, url, **kw) as resp:
            answer.status = resp.status
            answer.content_type = resp.content_type
            if "musegate_session" in resp.cookies:
                answer.cookie = f"musegate_session={resp.cookies['musegate_session'].value}"
            answer.body = await resp.read()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
            aiohttp.ClientOSError):
        answer.cut = True
    return answer


def subsonic_error(answer: Answer, fmt: str) -> tuple[int, str]:
    """(code, message) of a failed Subsonic answer in format ``fmt``; AssertionError otherwise."""
    text = answer.text
    if fmt == "xml":
        root = ElementTree.fromstring(text.split("\n", 1)[1] if text.startswith("<?xml") else text)
        assert root.get("status") == "failed", text
        err = root.find("{http://subsonic.org/restapi}error")
        assert err is not None, text
        return int(err.get("code", "-1")), err.get("message", "")
    if fmt == "jsonp":
        m = re.fullmatch(r"cb\((.*)\);?", text.strip(), re.S)
        assert m, text
        text = m.group(1)
    body = json.loads(text)["subsonic-response"]
    assert body["status"] == "failed", text
    return int(body["error"]["code"]), str(body["error"]["message"])


def subsonic_ok(answer: Answer, fmt: str) -> str:
    assert answer.status == 200 and not answer.cut, (answer.status, answer.text[:300])
    text = answer.text
    if fmt == "xml":
        assert 'status="ok"' in text, text[:300]
    else:
        if fmt == "jsonp":
            text = re.fullmatch(r"cb\((.*)\);?", text.strip(), re.S).group(1)  # type: ignore[union-attr]
        assert json.loads(text)["subsonic-response"]["status"] == "ok", text[:300]
    return text


# ---------------------------------------------------------------------------- log watch


class _Tracebacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.found.append(f"{record.name}: {record.getMessage()}")


@contextlib.contextmanager
def no_tracebacks() -> Iterator[None]:
    """Fail when any log record carries a traceback or is an ERROR (a 500 in aiohttp's words)."""
    handler = _Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
    assert not handler.found, handler.found


# ---------------------------------------------------------------------------- request kinds


@dataclass
class Kind:
    """One kind of request: how to make it, and how to judge its answer."""

    name: str
    area: str  # "intercepted", "pass-through", "ui login", "api (ui session)", "api (operator)"
    make: Callable[[], Awaitable[Answer]]
    down: Callable[[Answer, Fault], str]  # checks the answer during a fault; returns the outcome
    ok: Callable[[Answer], None]


def _intercepted_subsonic(fmt: str) -> Callable[[Answer, Fault], str]:
    def check(answer: Answer, fault: Fault) -> str:
        status = DOWN_STATUS[fault]
        assert not answer.cut and answer.status == status, (fault, answer.status, answer.text)
        code, message = subsonic_error(answer, fmt)
        assert code == 0 and DOWN_WORDS[status] in message, (fault, code, message)
        return f"{status}, error 0 in f={fmt}"
    return check


def _passthrough(protocol_error: Callable[[Answer], None]) -> Callable[[Answer, Fault], str]:
    def check(answer: Answer, fault: Fault) -> str:
        if fault in BEFORE_HEADERS:
            status = DOWN_STATUS[fault]
            assert not answer.cut and answer.status == status, (fault, answer.status, answer.text)
            protocol_error(answer)
            assert DOWN_WORDS[status] in answer.text, answer.text
            return f"{status} (musegate's)"
        if fault in STATUS_PAGES:
            assert answer.status == STATUS_PAGES[fault] and b"nginx" in answer.body, \
                (fault, answer.status)
            return f"{answer.status} relayed"
        if fault is Fault.RESET and not answer.cut:
            # The reset may reach musegate before the status line does: then it is musegate's 502.
            assert answer.status == 502, (fault, answer.status)
            protocol_error(answer)
            return "cut, or 502"
        assert answer.cut, (fault, answer.status, answer.body[:200])
        return "cut" if fault is not Fault.RESET else "cut, or 502"
    return check


def _json_error(words: bool = True) -> Callable[[Answer, Fault], str]:
    def check(answer: Answer, fault: Fault) -> str:
        status = DOWN_STATUS[fault]
        assert not answer.cut and answer.status == status, (fault, answer.status, answer.text)
        assert answer.content_type == "application/json", answer.content_type
        message = json.loads(answer.body)["error"]
        if words:
            assert DOWN_WORDS[status] in message or "Jellyfin" in message, message
        return f"{status} JSON error"
    return check


def _unaffected(answer: Answer, fault: Fault) -> str:
    assert answer.status == 200 and not answer.cut, (fault, answer.status)
    return "200 (no upstream call)"


def _no_traceback_in(answers: list[Answer]) -> None:
    for a in answers:
        assert b"Traceback" not in a.body and b'File "' not in a.body, a.body[:300]


async def sweep(kinds: list[Kind], proxy: FaultProxy, health: Callable[[], Awaitable[Answer]],
                faults: list[Fault], matrix: dict[str, dict[str, str]]) -> int:
    """Each fault: all kinds at once, checked; then the upstream back and all kinds again.

    Returns how many answers were 502/503/504 (what musegate_upstream_errors_total counts).
    """
    failed = 0
    for fault in faults:
        if fault is Fault.REFUSE:
            proxy.set(Fault.REFUSE)
        else:
            proxy.set(fault)
        with no_tracebacks():
            answers = await asyncio.gather(*(k.make() for k in kinds))
            _no_traceback_in(answers)
            for kind, answer in zip(kinds, answers, strict=True):
                matrix.setdefault(kind.name, {})[fault.value] = kind.down(answer, fault)
            failed += sum(1 for a in answers if a.status in (502, 503, 504))
            assert (await health()).status == 200
        # The upstream returns: the first request of every kind succeeds.
        if fault is Fault.REFUSE:
            await proxy.restart()
        else:
            proxy.set(Fault.PASS)
        with no_tracebacks():
            for kind in kinds:
                kind.ok(await kind.make())
                matrix[kind.name].setdefault("first request after", "ok")
    return failed


# ---------------------------------------------------------------------------- Subsonic


@dataclass
class SubsonicEnv:
    server: Supysonic
    proxy: FaultProxy
    url: str
    session: aiohttp.ClientSession
    songs: list[dict[str, Any]]
    app: web.Application
    kinds: list[Kind] = field(default_factory=list)
    cookie: str = ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def subsonic(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SubsonicEnv]:
    tmp = tmp_path_factory.mktemp("faults-ss")
    music = generate_library(tmp / "music", artists=2, albums=1, tracks=3, seconds=1.0)
    async with Supysonic.start(tmp, music, users=ss.USERS) as server, \
            FaultProxy(server.port) as proxy, aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar()) as session:
        songs = await ss._songs(session, server.url)
        config = ss._config(tmp, proxy.url, auth_cache_seconds=0, **TIMEOUTS)
        await ss._write_synthetic(config, songs)
        app = create_app(config, adapter=None, refresh_seconds=None)
        async with TestServer(app, host="127.0.0.1") as ts:
            env = SubsonicEnv(server, proxy, str(ts.make_url("")).rstrip("/"), session, songs,
                              app)
            env.kinds = _subsonic_kinds(env)
            login = await fetch(session, "POST", env.url + "/musegate/login",
                                json={"username": "bob", "password": ss.USERS["bob"]})
            assert login.status == 200
            env.cookie = login.cookie
            yield env


def _subsonic_kinds(env: SubsonicEnv) -> list[Kind]:
    seed = env.songs[0]
    album = seed["albumId"]

    def rest(endpoint: str, fmt: str, method: str = "GET", **params: Any
             ) -> Callable[[], Awaitable[Answer]]:
        query = {**ss.auth("alice"), "f": fmt, "callback": "cb", **params}
        kw: dict[str, Any] = {"params": query} if method == "GET" else {"data": query}
        return lambda: fetch(env.session, method, f"{env.url}/rest/{endpoint}", **kw)

    def similar_ok(fmt: str) -> Callable[[Answer], None]:
        def ok(a: Answer) -> None:
            text = subsonic_ok(a, fmt)
            assert any(s["id"] in text for s in env.songs[1:]), text[:300]
        return ok

    def subsonic_protocol_error(a: Answer) -> None:
        assert subsonic_error(a, "json")[0] == 0

    def stream_ok(a: Answer) -> None:
        assert a.status == 200 and not a.cut and a.body[:4] == b"fLaC", (a.status, a.body[:40])

    def album_ok(a: Answer) -> None:
        assert seed["id"] in subsonic_ok(a, "json")

    def login() -> Awaitable[Answer]:
        return fetch(env.session, "POST", env.url + "/musegate/login",
                     json={"username": "alice", "password": ss.USERS["alice"]})

    def login_ok(a: Answer) -> None:
        assert a.status == 200 and json.loads(a.body)["logged_in"] is True

    def api(cookie: bool) -> Callable[[], Awaitable[Answer]]:
        return lambda: fetch(env.session, "GET", env.url + "/musegate/api/tracks",
                             params={"q": "ong", "limit": "3"},
                             headers={"Cookie": env.cookie} if cookie else {})

    def api_ok(a: Answer) -> None:
        assert a.status == 200 and json.loads(a.body)["tracks"], a.text[:300]

    return [
        Kind("Subsonic getSimilarSongs2 (GET, f=json)", "intercepted",
             rest("getSimilarSongs2", "json", id=seed["id"], count=3),
             _intercepted_subsonic("json"), similar_ok("json")),
        Kind("Subsonic getSimilarSongs2.view (POST, f=xml)", "intercepted",
             rest("getSimilarSongs2.view", "xml", "POST", id=seed["id"], count=3),
             _intercepted_subsonic("xml"), similar_ok("xml")),
        Kind("Subsonic getSonicSimilarTracks (f=jsonp)", "intercepted",
             rest("getSonicSimilarTracks", "jsonp", id=seed["id"], count=3),
             _intercepted_subsonic("jsonp"), similar_ok("jsonp")),
        Kind("Subsonic getAlbum (pass-through, f=json)", "pass-through",
             rest("getAlbum", "json", id=album), _passthrough(subsonic_protocol_error), album_ok),
        Kind("Subsonic stream (pass-through)", "pass-through",
             rest("stream", "json", id=seed["id"]), _passthrough(subsonic_protocol_error),
             stream_ok),
        Kind("web UI login (Subsonic user)", "ui login", login, _json_error(), login_ok),
        Kind("JSON API, UI session of a Subsonic user", "api (ui session)", api(True),
             _json_error(), api_ok),
        Kind("JSON API, local operator", "api (operator)", api(False), _unaffected, api_ok),
    ]


MATRIX: dict[str, dict[str, str]] = {}
SWEEPS = [pytest.param(FAST_FAULTS, id="fast"),
          pytest.param(FAULTS, id="all", marks=pytest.mark.reliability)]


@pytest.fixture(scope="module", autouse=True)
def matrix_file() -> Iterator[None]:
    """Writes the fault × outcome table this run observed to $MUSEGATE_FAULT_MATRIX, if set."""
    yield
    target = os.environ.get("MUSEGATE_FAULT_MATRIX")
    if not target or not MATRIX:
        return
    columns = [f.value for f in FAULTS] + [Fault.DELAY.value, "upstream killed",
                                           "first request after"]
    lines = ["| request | " + " | ".join(columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for name, row in MATRIX.items():
        lines.append(f"| {name} | " + " | ".join(row.get(c, "–") for c in columns) + " |")
    Path(target).write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("faults", SWEEPS)
@module_loop
async def test_subsonic_every_fault_gets_the_protocols_error_then_recovers(
        subsonic: SubsonicEnv, faults: list[Fault]) -> None:
    env = subsonic

    def health() -> Awaitable[Answer]:
        return fetch(env.session, "GET", env.url + "/musegate/health")

    counter = env.app[metrics.METRICS].upstream_errors
    before = counter._value.get()
    failed = await sweep(env.kinds, env.proxy, health, faults, MATRIX)
    assert env.proxy.faulted > 0 and failed > 0
    assert counter._value.get() - before == failed  # 504s and 503s are counted too


async def _only_slower(env: SubsonicEnv | JellyfinEnv) -> None:
    """Every request kind through an upstream that holds each answer 0.2 s: all succeed."""
    env.proxy.set(Fault.DELAY, delay=0.2)
    try:
        with no_tracebacks():
            for kind in env.kinds:
                kind.ok(await kind.make())
                MATRIX.setdefault(kind.name, {})[Fault.DELAY.value] = "ok (slower)"
    finally:
        env.proxy.set(Fault.PASS)


@module_loop
async def test_subsonic_slow_upstream_within_the_timeout_is_only_slow(
        subsonic: SubsonicEnv) -> None:
    """Every answer held a while (well inside upstream_timeout): every request succeeds."""
    await _only_slower(subsonic)


@module_loop
async def test_subsonic_real_upstream_killed_and_restarted(subsonic: SubsonicEnv) -> None:
    """supysonic itself stops (the proxy then cannot connect) and starts again on its port."""
    env = subsonic
    await env.server.stop()
    try:
        with no_tracebacks():
            answers = await asyncio.gather(*(k.make() for k in env.kinds))
            _no_traceback_in(answers)
            for kind, answer in zip(env.kinds, answers, strict=True):
                # The proxy, like a reverse proxy before a dead app, closes without an answer.
                if kind.area == "intercepted":
                    kind.down(answer, Fault.REFUSE)
                elif kind.area == "pass-through":
                    assert answer.status == 502 and subsonic_error(answer, "json")[0] == 0
                elif kind.area != "api (operator)":
                    _json_error()(answer, Fault.REFUSE)
                else:
                    _unaffected(answer, Fault.REFUSE)
                MATRIX[kind.name]["upstream killed"] = "as refuse"
    finally:
        await env.server.start()
    with no_tracebacks():
        for kind in env.kinds:
            kind.ok(await kind.make())


@module_loop
async def test_subsonic_restart_drops_pooled_connections_without_a_failed_request(
        subsonic: SubsonicEnv) -> None:
    """musegate's pooled keep-alive connections die with the restart; the next request works."""
    env = subsonic
    for kind in env.kinds:  # fill the pools
        kind.ok(await kind.make())
    seen = env.proxy.seen
    await env.proxy.restart()
    with no_tracebacks():
        for kind in env.kinds:
            kind.ok(await kind.make())
    await env.proxy.requests_seen(seen + 1)


# ---------------------------------------------------------------------------- Jellyfin


@dataclass
class JellyfinEnv:
    fake: FakeJellyfin
    proxy: FaultProxy
    url: str
    session: aiohttp.ClientSession
    songs: list[jf.Song]
    token: str
    kinds: list[Kind] = field(default_factory=list)
    cookie: str = ""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jellyfin(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JellyfinEnv]:
    tmp = tmp_path_factory.mktemp("faults-jf")
    fake = FakeJellyfin()
    songs = jf._populate(fake)
    _uid, token = fake.add_user("alice", "alicepw")
    fake.add_user("bob", "bobpw")
    upstream = await fake.start()
    port = int(upstream.rsplit(":", 1)[1])
    try:
        async with FaultProxy(port) as proxy, aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar()) as session:
            config = jf._config(tmp, proxy.url, auth_cache_seconds=0, **TIMEOUTS)
            await jf._write_synthetic(config, songs, set())
            app = create_app(config, adapter=None, refresh_seconds=None)
            async with TestServer(app, host="127.0.0.1") as ts:
                env = JellyfinEnv(fake, proxy, str(ts.make_url("")).rstrip("/"), session,
                                  songs, token)
                env.kinds = _jellyfin_kinds(env)
                login = await fetch(session, "POST", env.url + "/musegate/login",
                                    json={"username": "bob", "password": "bobpw"})
                assert login.status == 200, login.text
                env.cookie = login.cookie
                yield env
    finally:
        await fake.stop()


def _jellyfin_kinds(env: JellyfinEnv) -> list[Kind]:
    seed = next(s for s in env.songs if s.library == "Music")
    headers = {"X-Emby-Token": env.token}

    def get(path: str, **params: str) -> Callable[[], Awaitable[Answer]]:
        return lambda: fetch(env.session, "GET", env.url + path, params=params, headers=headers)

    def items_ok(a: Answer) -> None:
        assert a.status == 200 and not a.cut, (a.status, a.text[:200])
        assert json.loads(a.body)["Items"], a.text[:200]

    def stream_ok(a: Answer) -> None:
        assert a.status == 200 and not a.cut and a.body == seed.data

    def plain_error(a: Answer) -> None:
        assert a.content_type == "text/plain", a.content_type

    def login() -> Awaitable[Answer]:
        return fetch(env.session, "POST", env.url + "/musegate/login",
                     json={"username": "alice", "password": "alicepw"})

    def login_ok(a: Answer) -> None:
        assert a.status == 200 and json.loads(a.body)["logged_in"] is True, a.text

    def api() -> Awaitable[Answer]:
        return fetch(env.session, "GET", env.url + "/musegate/api/tracks", params={"q": "ong", "limit": "3"},
                     headers={"Cookie": env.cookie})

    def api_ok(a: Answer) -> None:
        assert a.status == 200 and json.loads(a.body)["tracks"], a.text[:300]

    def intercepted(a: Answer, fault: Fault) -> str:
        status = DOWN_STATUS[fault]
        assert not a.cut and a.status == status, (fault, a.status, a.text)
        assert "Jellyfin server behind musegate" in a.text and DOWN_WORDS[status] in a.text
        return f"{status}"

    return [
        Kind("Jellyfin /Items/{id}/InstantMix", "intercepted",
             get(f"/Items/{seed.id}/InstantMix", limit="5"), intercepted, items_ok),
        Kind("Jellyfin /Items/{id}/Similar", "intercepted",
             get(f"/Items/{seed.id}/Similar", limit="5"), intercepted, items_ok),
        Kind("Jellyfin /Items?Ids= (pass-through)", "pass-through",
             get("/Items", Ids=seed.id), _passthrough(plain_error), items_ok),
        Kind("Jellyfin /Audio/{id}/stream (pass-through)", "pass-through",
             get(f"/Audio/{seed.id}/stream", static="true"), _passthrough(plain_error),
             stream_ok),
        Kind("web UI login (Jellyfin user)", "ui login", login, _json_error(), login_ok),
        Kind("JSON API, UI session of a Jellyfin user", "api (ui session)", api,
             _json_error(), api_ok),
    ]


@pytest.mark.parametrize("faults", SWEEPS)
@module_loop
async def test_jellyfin_every_fault_gets_its_status_then_recovers(
        jellyfin: JellyfinEnv, faults: list[Fault]) -> None:
    env = jellyfin

    def health() -> Awaitable[Answer]:
        return fetch(env.session, "GET", env.url + "/musegate/health")

    await sweep(env.kinds, env.proxy, health, faults, MATRIX)


@module_loop
async def test_jellyfin_slow_upstream_within_the_timeout_is_only_slow(
        jellyfin: JellyfinEnv) -> None:
    await _only_slower(jellyfin)
