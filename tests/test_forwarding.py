"""Deployment behind a reverse proxy: trusted X-Forwarded-* headers, the mount path, the
API's access rule, health/readiness probes and Prometheus metrics.

Real musegate servers on loopback in front of tests/upstream_stub.py; the real nginx and
Caddy runs are in tests/test_reverse_proxy.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.app import create_app, main_app, metrics_app
from gateway.forwarding import client_address
from musegate.config import ConfigError, parse_networks
from musegate.probe import check as probe
from tests.store_factory import make_config
from tests.upstream_stub import Stub


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[Stub]:
    async with Stub.run(tmp_path / "stub") as s:
        yield s


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


async def _server(tmp_path: Path, **settings: Any) -> TestServer:
    server = TestServer(create_app(make_config(tmp_path, **settings), refresh_seconds=None))
    await server.start_server()
    return server


async def _get(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with client.get(url, allow_redirects=False, **kw) as resp:
        ctype = resp.headers.get("Content-Type", "")
        body = await (resp.json() if "json" in ctype else resp.text())
        return resp.status, resp.headers, body


def _closed_port_url() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/"


def _url(server: TestServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


# ------------------------------------------------------------------ trusted proxies


def test_client_address_skips_only_trusted_hops() -> None:
    trusted = parse_networks("127.0.0.0/8, 10.1.0.0/16")
    # client, then a trusted inner proxy; the TCP peer is trusted too.
    assert client_address(["203.0.113.9, 10.1.2.3"], "127.0.0.1", trusted) == "203.0.113.9"
    # A forged left-most entry stays left of the first untrusted hop: it is never believed.
    assert client_address(["6.6.6.6, 198.51.100.4"], "127.0.0.1", trusted) == "198.51.100.4"
    assert client_address([], "192.0.2.1", trusted) == "192.0.2.1"


def test_trusted_proxies_are_validated(tmp_path: Path) -> None:
    assert make_config(tmp_path, trusted_proxies="127.0.0.1, ::1,10.0.0.0/8").trusted_proxies == (
        "127.0.0.1/32,::1/128,10.0.0.0/8")
    with pytest.raises(ConfigError, match="trusted_proxies.*not an IP"):
        make_config(tmp_path, trusted_proxies="proxy.lan")
    with pytest.raises(ConfigError, match="mount_path"):
        make_config(tmp_path, mount_path="/music?x")
    assert make_config(tmp_path, mount_path="music/").mount_path == "/music"


async def test_forwarded_headers_relayed_only_from_trusted_proxies(
        tmp_path: Path, stub: Stub, client: aiohttp.ClientSession) -> None:
    forged = {"X-Forwarded-For": "10.0.0.7", "X-Forwarded-Proto": "https",
              "X-Forwarded-Host": "music.example", "X-Forwarded-Prefix": "/music",
              "Forwarded": "for=10.0.0.7"}
    for trusted, expect in (("", None), ("127.0.0.1", "https")):
        gate = await _server(tmp_path / (trusted or "none"), upstream_url=stub.url,
                             trusted_proxies=trusted)
        try:
            _, _, seen = await _get(client, _url(gate, "/echo/h"), headers=forged)
            h = {k.lower(): v for k, v in seen["headers"]}
            if expect is None:
                assert h["x-forwarded-for"] == "127.0.0.1"
                assert h["x-forwarded-proto"] == "http"
                assert h["x-forwarded-host"] == f"127.0.0.1:{gate.port}"
                assert "forwarded" not in h
            else:
                assert h["x-forwarded-for"] == "10.0.0.7, 127.0.0.1"
                assert h["x-forwarded-proto"] == expect
                assert h["x-forwarded-host"] == "music.example"
            # The prefix describes musegate's public URL, never the upstream's.
            assert "x-forwarded-prefix" not in h
        finally:
            await gate.close()


# ------------------------------------------------------------------ the API's access rule


async def test_api_needs_the_key_when_one_is_set(
        tmp_path: Path, client: aiohttp.ClientSession) -> None:
    gate = await _server(tmp_path, api_key="s3cret-key")
    try:
        status, _, body = await _get(client, _url(gate, "/musegate/api/status"))
        assert status == 401 and "api_key" in body["error"]
        status, _, _ = await _get(client, _url(gate, "/musegate/api/status"),
                                  headers={"X-API-Key": "wrong"})
        assert status == 401
        for headers in ({"X-API-Key": "s3cret-key"}, {"Authorization": "Bearer s3cret-key"}):
            status, _, body = await _get(client, _url(gate, "/musegate/api/status"),
                                         headers=headers)
            assert status == 200 and body["tracks"] == 0
        # The probes stay open: they say nothing about the library.
        assert (await _get(client, _url(gate, "/musegate/health")))[0] == 200
        assert (await _get(client, _url(gate, "/musegate/ready")))[0] == 200
        assert (await _get(client, _url(gate, "/musegate/metrics")))[0] == 401
    finally:
        await gate.close()


async def test_without_a_key_only_direct_local_callers_on_a_loopback_server(
        tmp_path: Path, client: aiohttp.ClientSession) -> None:
    gate = await _server(tmp_path)
    try:
        assert (await _get(client, _url(gate, "/musegate/api/status")))[0] == 200
        # Through a proxy (any X-Forwarded-* header) the caller is not "this machine".
        status, _, body = await _get(client, _url(gate, "/musegate/api/status"),
                                     headers={"X-Forwarded-For": "127.0.0.1"})
        assert status == 403 and "api_key" in body["error"]
        status, _, _ = await _get(client, _url(gate, "/musegate/api/status"),
                                  headers={"X-API-Key": "guess"})
        assert status == 401
    finally:
        await gate.close()
    # Listening on every address (a container): closed until a key is set.
    config = make_config(tmp_path, host="0.0.0.0")
    async with TestServer(create_app(config, refresh_seconds=None), host="127.0.0.1") as wide:
        status, _, body = await _get(client, _url(wide, "/musegate/api/status"))
        assert status == 403 and "api_key" in body["error"]
        assert (await _get(client, _url(wide, "/musegate/health")))[0] == 200


# ------------------------------------------------------------------ mount path


async def test_every_route_below_the_mount_path(
        tmp_path: Path, stub: Stub, client: aiohttp.ClientSession) -> None:
    gate = await _server(tmp_path, upstream_url=stub.url, mount_path="/music",
                         trusted_proxies="127.0.0.1")
    try:
        status, _, body = await _get(client, _url(gate, "/music/musegate/api/status"))
        assert status == 200 and "tracks" in body
        assert (await _get(client, _url(gate, "/musegate/api/status")))[0] == 404
        assert (await _get(client, _url(gate, "/rest/ping.view")))[0] == 404
        # The pass-through: the upstream sees the path below the mount, query untouched.
        _, _, seen = await _get(client, _url(gate, "/music/echo/x?a=%20&b=1"))
        assert seen["raw_path"] == "/echo/x?a=%20&b=1"
        status, _, body = await _get(client, _url(gate, "/music/rest/ping.view?f=json"))
        assert status == 200 and body["subsonic-response"]["status"] == "ok"
        # Redirects and cookies point below the mount.
        status, headers, _ = await _get(client, _url(gate, "/music/rest/redirect"))
        assert status == 302 and headers["Location"].startswith("/music/rest/ping.view")
        _, headers, _ = await _get(client, _url(gate, "/music/hop"))
        assert headers.getall("Set-Cookie") == ["a=1; Path=/music/", "b=2; Path=/music/"]
        # The OpenAPI document's server is the public prefix (a trusted proxy's too).
        _, _, doc = await _get(client, _url(gate, "/music/musegate/api/openapi.json"))
        assert doc["servers"] == [{"url": "/music"}]
        _, _, doc = await _get(client, _url(gate, "/music/musegate/api/openapi.json"),
                               headers={"X-Forwarded-Prefix": "/outer",
                                        "X-API-Key": "", "X-Forwarded-For": "127.0.0.1"})
        assert doc["error"]  # through a proxy the API needs a key...
    finally:
        await gate.close()
    keyed = await _server(tmp_path / "keyed", upstream_url=stub.url, mount_path="/music",
                          trusted_proxies="127.0.0.1", api_key="k")
    try:
        _, _, doc = await _get(client, _url(keyed, "/music/musegate/api/openapi.json"),
                               headers={"X-Forwarded-Prefix": "/outer", "X-API-Key": "k",
                                        "X-Forwarded-For": "192.0.2.8"})
        assert doc["servers"] == [{"url": "/outer/music"}]  # ...and then sees its prefix
        _, headers, _ = await _get(client, _url(keyed, "/music/rest/redirect"),
                                   headers={"X-Forwarded-Prefix": "/outer",
                                            "X-Forwarded-For": "192.0.2.8"})
        assert headers["Location"].startswith("/outer/music/rest/ping.view")
    finally:
        await keyed.close()


async def test_absolute_upstream_redirect_becomes_the_public_url(tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    from gateway import forwarding
    from gateway.proxy import public_location

    config = make_config(tmp_path, upstream_url="http://navidrome:4533/navi",
                         mount_path="/music", trusted_proxies="127.0.0.1")
    mw = forwarding.middleware(config)
    seen: dict[str, str] = {}

    async def where(request: Any) -> Any:
        up = config.upstream_url
        for value in (f"{up}/app/", "/navi/app/?x=1", "/elsewhere", "https://other.site/x",
                      "relative/path"):
            seen[value] = public_location(value, up, request)
        return None

    request = make_mocked_request(
        "GET", "/music/x", headers={"X-Forwarded-Proto": "https",
                                    "X-Forwarded-Host": "music.example",
                                    "X-Forwarded-For": "192.0.2.8"},
        transport=_Peer("127.0.0.1"))
    await mw(request, where)
    assert seen["http://navidrome:4533/navi/app/"] == "https://music.example/music/app/"
    assert seen["/navi/app/?x=1"] == "/music/app/?x=1"
    assert seen["/elsewhere"] == "/elsewhere"  # not the upstream's: left alone
    assert seen["https://other.site/x"] == "https://other.site/x"
    assert seen["relative/path"] == "relative/path"


class _Peer:
    """The transport of a mocked request, connected from ``address``."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return (self.address, 40000) if name == "peername" else default


# ------------------------------------------------------------------ health, readiness, metrics


async def test_ready_names_what_is_missing(
        tmp_path: Path, stub: Stub, client: aiohttp.ClientSession) -> None:
    gate = await _server(tmp_path, upstream_url=stub.url, source="subsonic",
                         upstream_user="u", upstream_password="p")
    try:
        status, _, body = await _get(client, _url(gate, "/musegate/ready"))
        assert status == 200 and body["status"] == "ready"
    finally:
        await gate.close()
    # A music server that is not there: alive, but not ready, and it says why.
    dead = await _server(tmp_path / "dead", upstream_url=_closed_port_url())
    try:
        status, _, body = await _get(client, _url(dead, "/musegate/health"))
        assert status == 200 and body["status"] == "ok"
        status, _, body = await _get(client, _url(dead, "/musegate/ready"))
        assert status == 503 and body["status"] == "not ready"
        assert any("music server" in r for r in body["reasons"])
    finally:
        await dead.close()


async def test_health_command_finds_the_server_from_its_config(
        tmp_path: Path, stub: Stub) -> None:
    gate = await _server(tmp_path, upstream_url=stub.url, mount_path="/music")
    try:
        config = make_config(tmp_path, host="0.0.0.0", port=gate.port, mount_path="/music")
        healthy, line = await asyncio.to_thread(probe, config)
        assert healthy and "/music/musegate/health" in line
        healthy, _ = await asyncio.to_thread(probe, config, True)
        assert healthy
        wrong = config.replace(mount_path="")
        healthy, line = await asyncio.to_thread(probe, wrong)
        assert not healthy and "404" in line
    finally:
        await gate.close()
    healthy, line = await asyncio.to_thread(probe, config)
    assert not healthy and "refused" in line.lower()


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics_count_requests_by_route_class(
        tmp_path: Path, stub: Stub, client: aiohttp.ClientSession) -> None:
    gate = await _server(tmp_path, upstream_url=stub.url, source="subsonic",
                         upstream_user="u", upstream_password="p")
    try:
        await _get(client, _url(gate, "/echo/a"))
        await _get(client, _url(gate, "/echo/b"))
        await _get(client, _url(gate, "/musegate/api/status"))
        await _get(client, _url(gate, "/rest/getSimilarSongs2.view?id=x&u=u&p=p&f=json"))
        status, headers, text = await _get(client, _url(gate, "/musegate/metrics"))
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        m = _samples(text)
        assert m['musegate_requests_total{route="passthrough",status="200"}'] == 2
        assert m['musegate_requests_total{route="api",status="200"}'] == 1
        assert sum(v for k, v in m.items()
                   if k.startswith("musegate_requests_total") and 'route="intercepted"' in k) == 1
        assert m["musegate_intercepted_request_seconds_count"] == 1
        assert m['musegate_tracks{state="all"}'] == 0
        assert "musegate_index_tracks" in m
        # The metrics-only listener answers without a key, from the same registry.
        async with TestServer(metrics_app(main_app(gate.app))) as side:
            status, _, text = await _get(client, _url(side, "/metrics"))
            assert status == 200 and "musegate_requests_total" in text
    finally:
        await gate.close()


async def test_dead_upstream_counts_as_an_upstream_error(
        tmp_path: Path, client: aiohttp.ClientSession) -> None:
    gate = await _server(tmp_path, upstream_url=_closed_port_url())
    try:
        status, _, _ = await _get(client, _url(gate, "/rest/ping.view"))
        assert status == 502
        _, _, text = await _get(client, _url(gate, "/musegate/metrics"))
        assert _samples(text)["musegate_upstream_errors_total"] == 1
    finally:
        await gate.close()


async def test_access_log_never_shows_credentials(
        tmp_path: Path, stub: Stub, caplog: pytest.LogCaptureFixture) -> None:
    from aiohttp import web

    from gateway.access_log import RedactingAccessLogger

    app = create_app(make_config(tmp_path, upstream_url=stub.url), refresh_seconds=None)
    runner = web.AppRunner(app, access_log_class=RedactingAccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    secrets = {"p": "hunter2-pass", "t": "26719a1196d2a940705a59634eb18eab",
               "s": "c19b2d", "apiKey": "key-0xdeadbeef", "api_key": "jf-token-77"}
    try:
        with caplog.at_level("INFO", logger="aiohttp.access"):
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{port}/rest/ping.view",
                    params={"u": "alice", **secrets, "f": "json"}) as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
    lines = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/rest/ping.view?u=alice" in line and "f=json" in line for line in lines), lines
    for value in secrets.values():
        assert all(value not in line for line in lines), (value, lines)


@pytest.mark.parametrize(("target", "logged"), [
    ("/rest/ping.view?u=alice&p=hunter2&t=abc&s=salt&f=json",
     "/rest/ping.view?u=alice&p=***&t=***&s=***&f=json"),
    # an encoded key is still the key; ';' separates as well as '&'; case does not matter
    ("/x?%70=sec1&P=sec2&apiKey=k;api_key=z&u=a", "/x?%70=***&P=***&apiKey=***;api_key=***&u=a"),
    ("/Items?X-Emby-Token=zz&a&Fields=x", "/Items?X-Emby-Token=***&a&Fields=x"),
    # characters that could break the log line's quoting take the re-quoting path
    ('/x?u="a b&p=sec3', "/x?u=%22a%20b&p=***"),
    ("/rest/ping.view", "/rest/ping.view"),
])
def test_access_log_target_is_redacted(target: str, logged: str) -> None:
    from aiohttp.test_utils import make_mocked_request

    from gateway.access_log import redacted_target

    assert redacted_target(make_mocked_request("GET", target)) == logged
