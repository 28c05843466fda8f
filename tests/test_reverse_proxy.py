"""musegate behind real nginx and real Caddy, at the root and under /music.

The proxies run the example configurations users copy (docs/examples/), with only
the listen address and musegate's port filled in. Behind each: musegate in front of
a real supysonic (driven by py-sonic) and in front of the fake Jellyfin (driven by
jellyfin-apiclient-python). Through every proxy and mount: similar songs, a stream
with a Range request (206 and the exact bytes), and the Jellyfin websocket relayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import libsonic
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer
from jellyfin_apiclient_python import JellyfinClient

from gateway.app import create_app
from tests.fakes.jellyfin import FakeJellyfin
from tests.supysonic_server import Supysonic, generate_library
from tests.test_jellyfin_gateway import _config as jellyfin_config
from tests.test_jellyfin_gateway import _populate
from tests.test_jellyfin_gateway import _write_synthetic as jellyfin_synthetic
from tests.test_subsonic_gateway import USERS, _songs
from tests.test_subsonic_gateway import _config as subsonic_config
from tests.test_subsonic_gateway import _write_synthetic as subsonic_synthetic

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
# (proxy, mount path) -> the example file users copy
CASES = {
    ("nginx", ""): "nginx.conf",
    ("nginx", "/music"): "nginx-subpath.conf",
    ("caddy", ""): "Caddyfile",
    ("caddy", "/music"): "Caddyfile-subpath",
}
BINARIES = {"nginx": "/usr/sbin/nginx", "caddy": "/usr/bin/caddy"}
START_DEADLINE = 60.0  # a hang guard: startup is waited on by connecting, never by sleeping

module_loop = pytest.mark.asyncio(loop_scope="module")


def _binary(kind: str) -> str:
    path = shutil.which(kind) or BINARIES[kind]
    if not Path(path).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{kind} is missing: .ci/run installs it")
        pytest.skip(f"{kind} not installed (apt-get install {kind})")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(kind: str, example: str, listen: int, musegate: int) -> str:
    """The example with our ports: the only edits a test makes to what users copy."""
    text = (EXAMPLES / example).read_text(encoding="utf-8")
    assert "127.0.0.1:8765" in text, example
    text = text.replace("127.0.0.1:8765", f"127.0.0.1:{musegate}")
    if kind == "nginx":
        assert "listen 80;" in text, example
        return text.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    site = "music.example.org {" if "music.example.org {" in text else "example.org {"
    assert site in text, example
    return text.replace(site, f"http://127.0.0.1:{listen} {{", 1)


def _nginx_main(tmp: Path, site: str) -> str:
    (tmp / "site.conf").write_text(site, encoding="utf-8")
    return f"""
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/site.conf;
}}
"""


async def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_DEADLINE
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"proxy exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(
                    f"proxy not listening on {port}: {log.read_text()[-2000:]}") from None
            await asyncio.sleep(0.05)  # polling a port between attempts, not synchronising


@contextlib.asynccontextmanager
async def run_proxy(kind: str, example: str, tmp: Path, musegate: int) -> AsyncIterator[str]:
    binary = _binary(kind)
    tmp.mkdir(parents=True, exist_ok=True)
    listen = _free_port()
    site = render(kind, example, listen, musegate)
    log = tmp / "proxy.log"
    env = {**os.environ, "HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"),
           "XDG_CONFIG_HOME": str(tmp / "config")}
    if kind == "nginx":
        (tmp / "nginx.conf").write_text(_nginx_main(tmp, site), encoding="utf-8")
        cmd = [binary, "-e", str(tmp / "error.log"), "-p", str(tmp), "-c", str(tmp / "nginx.conf")]
        log = tmp / "error.log"
        log.touch()
    else:
        (tmp / "Caddyfile").write_text("{\n\tadmin off\n\tauto_https off\n}\n\n" + site,
                                       encoding="utf-8")
        cmd = [binary, "run", "--adapter", "caddyfile", "--config", str(tmp / "Caddyfile")]
    with open(tmp / "proxy.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        await _wait_listening(listen, proc, log)
        yield f"http://127.0.0.1:{listen}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------- backends


@dataclass
class Backends:
    supysonic: Supysonic
    songs: list[dict[str, Any]]
    subsonic: dict[str, int]  # mount path -> musegate port
    jellyfin: dict[str, int]
    fake: FakeJellyfin
    jf_songs: list[Any]
    jf_user: str
    jf_token: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def backends(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Backends]:
    for kind in ("nginx", "caddy"):
        _binary(kind)
    tmp = tmp_path_factory.mktemp("rp")
    music = generate_library(tmp / "music", artists=3, albums=1, tracks=6, seconds=1.0)
    fake = FakeJellyfin()
    jf_songs = _populate(fake)
    jf_user, jf_token = fake.add_user("alice", "alicepw")
    jf_url = await fake.start()
    try:
        async with Supysonic.start(tmp, music, users=USERS) as server, \
                aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
            songs = await _songs(session, server.url)
            subsonic, jellyfin = {}, {}
            for mount in ("", "/music"):
                extra = {"mount_path": mount, "trusted_proxies": "127.0.0.1"}
                config = subsonic_config(tmp / f"sub{mount.strip('/')}", server.url, **extra)
                await subsonic_synthetic(config, songs)
                ts = await stack.enter_async_context(TestServer(
                    create_app(config, adapter=None, refresh_seconds=None), host="127.0.0.1"))
                subsonic[mount] = ts.port
                config = jellyfin_config(tmp / f"jf{mount.strip('/')}", jf_url, **extra)
                await jellyfin_synthetic(config, jf_songs, set())
                ts = await stack.enter_async_context(TestServer(
                    create_app(config, adapter=None, refresh_seconds=None), host="127.0.0.1"))
                jellyfin[mount] = ts.port
            yield Backends(server, songs, subsonic, jellyfin, fake, jf_songs, jf_user, jf_token)
    finally:
        await fake.stop()


@dataclass
class Proxied:
    kind: str
    mount: str
    subsonic: str  # proxy URL in front of the Subsonic musegate, without the mount
    jellyfin: str


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=sorted(CASES),
                        ids=lambda c: f"{c[0]}-{c[1].strip('/') or 'root'}")
async def proxied(request: pytest.FixtureRequest, backends: Backends,
                  tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Proxied]:
    kind, mount = request.param
    tmp = tmp_path_factory.mktemp(f"{kind}{mount.strip('/') or 'root'}")
    example = CASES[request.param]
    async with run_proxy(kind, example, tmp / "sub", backends.subsonic[mount]) as sub, \
            run_proxy(kind, example, tmp / "jf", backends.jellyfin[mount]) as jf:
        yield Proxied(kind, mount, sub, jf)


def _auth(user: str = "alice") -> dict[str, str]:
    return {"u": user, "p": USERS[user], "v": "1.16.1", "c": "pytest"}


# ---------------------------------------------------------------------------- tests


@module_loop
async def test_similar_songs_through_the_proxy(proxied: Proxied, backends: Backends) -> None:
    port = int(proxied.subsonic.rsplit(":", 1)[1])
    client = libsonic.Connection("http://127.0.0.1", "alice", USERS["alice"], port=port,
                                 serverPath=f"{proxied.mount}/rest", appName="pytest",
                                 apiVersion="1.16.1", legacyAuth=True)
    seed = next(s for s in backends.songs if s["artist"] == "Artist 1")
    res = await asyncio.to_thread(client.getSimilarSongs2, seed["id"], 4)
    songs = res["similarSongs2"]["song"]
    assert len(songs) == 4 and {s["artist"] for s in songs} == {"Artist 1"}
    assert seed["id"] not in {s["id"] for s in songs}
    # A wrong password is refused through the proxy too (checked with supysonic).
    bad = libsonic.Connection("http://127.0.0.1", "alice", "wrong", port=port,
                              serverPath=f"{proxied.mount}/rest", appName="pytest",
                              apiVersion="1.16.1", legacyAuth=True)
    with pytest.raises(libsonic.errors.SonicError):
        await asyncio.to_thread(bad.getSimilarSongs2, seed["id"], 4)


@module_loop
async def test_stream_range_through_the_proxy(proxied: Proxied, backends: Backends) -> None:
    song = backends.songs[3]
    params = {**_auth(), "id": song["id"]}
    headers = {"Range": "bytes=100-1123"}
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.get(f"{backends.supysonic.url}/rest/download", params=params,
                               headers=headers) as resp:
            assert resp.status == 206
            direct, direct_range = await resp.read(), resp.headers["Content-Range"]
        url = f"{proxied.subsonic}{proxied.mount}/rest/download"
        async with session.get(url, params=params, headers=headers) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == direct_range
            assert await resp.read() == direct and len(direct) == 1024


def _jellyfin_client(proxied: Proxied, backends: Backends) -> JellyfinClient:
    client = JellyfinClient()
    client.config.app("pytest", "1.0.0", "pytest-device", "pytest-rp")
    client.config.data["auth.ssl"] = False
    client.config.data["http.user_agent"] = "pytest"
    client.config.data["auth.server"] = proxied.jellyfin + proxied.mount
    client.config.data["auth.user_id"] = backends.jf_user
    client.config.data["auth.token"] = backends.jf_token
    return client


@module_loop
async def test_jellyfin_mix_and_websocket_through_the_proxy(
        proxied: Proxied, backends: Backends) -> None:
    seed = next(s for s in backends.jf_songs if s.artist == "Artist 2")
    client = _jellyfin_client(proxied, backends)
    body = await asyncio.to_thread(client.jellyfin.get_instant_mix, seed.id, 6)
    ids = [i["Id"] for i in body["Items"]]
    assert ids[0] == seed.id and len(ids) == 6
    artist = {s.id: s.artist for s in backends.jf_songs}
    assert {artist[i] for i in ids} == {"Artist 2"}

    url = (f"{proxied.jellyfin}{proxied.mount}/socket"
           f"?api_key={backends.jf_token}&deviceId=pytest-rp")
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        first = await asyncio.wait_for(ws.receive_json(), 20)
        assert first["MessageType"] == "ForceKeepAlive"
        await ws.send_json({"MessageType": "KeepAlive"})
        echoed = await asyncio.wait_for(ws.receive_json(), 20)
        assert echoed["MessageType"] == "KeepAlive"


@module_loop
async def test_outside_the_mount_is_not_musegate(proxied: Proxied) -> None:
    if not proxied.mount:
        pytest.skip("at the root everything is musegate's")
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{proxied.subsonic}/rest/ping.view", params=_auth()) as resp:
            # The proxy's own answer (nginx 404, Caddy an empty 200), not the music server's.
            assert "subsonic-response" not in await resp.text()
        health = f"{proxied.subsonic}{proxied.mount}/musegate/health"
        async with session.get(health) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "ok"


def test_examples_are_the_ones_documented() -> None:
    deploy = (EXAMPLES.parent / "deploy.md").read_text(encoding="utf-8")
    for example in CASES.values():
        assert f"examples/{example}" in deploy, example
