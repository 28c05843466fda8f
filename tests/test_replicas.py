"""Read replicas: two real `musegate serve` processes with role = replica share one
store behind real nginx (docs/examples/nginx-replicas.conf), while this test is the
writer. After the writer commits new analyses both replicas serve them, without a
restart, and a replica refuses to write.

Every wait is for the event: a replica's /ready reports the library version the
writer's store now has (the same fingerprint the replicas compute).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

import musegate.services as services
from analysis.store import LibraryStore
from gateway.health import library_version
from index.radii_file import radii_path
from musegate.library import analyzer_settings
from musegate.services import LibraryService
from tests.store_factory import PER_STYLE, STYLES, add_track, fill_store, make_config
from tests.test_reverse_proxy import _binary, _free_port, _nginx_main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "nginx-replicas.conf"
KEY = "replica-test-key"
DEADLINE = 120.0  # hang guard; the waits are for events


def _site(listen: int, ports: list[int]) -> str:
    """The example users copy, with only the ports changed."""
    text = EXAMPLE.read_text(encoding="utf-8")
    for default, port in zip(("127.0.0.1:8765", "127.0.0.1:8766"), ports, strict=True):
        assert default in text
        text = text.replace(default, f"127.0.0.1:{port}")
    assert "listen 80;" in text
    return text.replace("listen 80;", f"listen 127.0.0.1:{listen};")


async def _ready(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(f"{url}/musegate/ready") as resp:
            return await resp.json() if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


async def _until_version(session: aiohttp.ClientSession, urls: list[str], want: str,
                         procs: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        states = [await _ready(session, u) for u in urls]
        if all(s is not None and s.get("library_version") == want for s in states):
            return
        dead = [p for p in procs if p.poll() is not None]
        if dead or loop.time() > deadline:
            tails = "\n".join(p.read_text()[-2000:] for p in logs)
            raise AssertionError(f"replicas at {states}, want {want}\n{tails}")
        await asyncio.sleep(0.1)  # polling the replicas between looks, not synchronising


@contextlib.asynccontextmanager
async def _replica(tmp: Path, config, port: int) -> AsyncIterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MUSEGATE_ROLE": "replica",
           "MUSEGATE_DATA_DIR": config.data_dir, "MUSEGATE_LIBRARY_PATH": config.library_path,
           "MUSEGATE_PORT": str(port), "MUSEGATE_REFRESH_SECONDS": "1",
           "MUSEGATE_API_KEY": KEY, "MUSEGATE_TRUSTED_PROXIES": "127.0.0.1"}
    with open(tmp / f"replica-{port}.log", "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve"], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_two_replicas_behind_nginx_follow_the_writer(tmp_path: Path) -> None:
    nginx = _binary("nginx")
    config = make_config(tmp_path)
    lib = await fill_store(config)
    version = analyzer_settings(config).version
    # The writer keeps its store open for the whole test, as a running writer does.
    writer = await LibraryStore.open(config.db_path)
    # A writer's load saves the index and the CSLS radii the replicas then start from.
    await LibraryService(writer, config).refresh(force=True)
    ports = [_free_port(), _free_port()]
    listen = _free_port()
    logs = [tmp_path / f"replica-{p}.log" for p in ports]
    headers = {"X-API-Key": KEY}
    try:
        async with contextlib.AsyncExitStack() as stack:
            procs = [await stack.enter_async_context(_replica(tmp_path, config, p))
                     for p in ports]
            direct = [f"http://127.0.0.1:{p}" for p in ports]
            session = await stack.enter_async_context(aiohttp.ClientSession(headers=headers))
            await _until_version(session, direct,
                                 library_version(await writer.signature(version)), procs, logs)
            for url in direct:  # the writer's radii: same signature in another process
                async with session.get(f"{url}/musegate/api/status") as resp:
                    assert (await resp.json())["index"]["radii"] == "loaded"

            nginx_dir = tmp_path / "nginx"
            nginx_dir.mkdir()
            (nginx_dir / "nginx.conf").write_text(
                _nginx_main(nginx_dir, _site(listen, ports)), encoding="utf-8")
            (nginx_dir / "error.log").touch()
            proxy = subprocess.Popen([nginx, "-e", str(nginx_dir / "error.log"), "-p",
                                      str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            stack.callback(proxy.wait)
            stack.callback(proxy.terminate)
            front = f"http://127.0.0.1:{listen}"
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE
            while await _ready(session, front) is None:
                assert proxy.poll() is None and loop.time() < deadline, \
                    (nginx_dir / "error.log").read_text()
                await asyncio.sleep(0.05)  # polling the port between attempts

            # The writer analyses two more songs; the replicas pick them up by themselves.
            new = [await add_track(config, lib, 2, "Brand new folk"),
                   await add_track(config, lib, 0, "Brand new piano")]
            want = library_version(await writer.signature(version))
            await _until_version(session, direct, want, procs, logs)
            for url in direct:
                state = await _ready(session, url)
                assert state is not None and state["role"] == "replica"
                assert state["index_tracks"] == len(STYLES) * PER_STYLE + 2

            # Through nginx (round robin: consecutive requests reach both replicas).
            for _ in range(4):
                async with session.get(f"{front}/musegate/api/similar",
                                       params={"ids": str(new[0]), "n": "5"}) as resp:
                    assert resp.status == 200, await resp.text()
                    body = await resp.json()
                assert body["seeds"][0]["title"] == "Brand new folk"
                assert {t["id"] for t in body["tracks"]} <= {
                    i for i, s in lib.style_of.items() if s == "Folk"} | {new[1]}
            async with session.get(f"{front}/musegate/api/tracks",
                                   params={"q": "Brand new"}) as resp:
                listed = await resp.json()
            assert sorted((t["id"], t["analysed"]) for t in listed["tracks"]) == \
                sorted((i, True) for i in new)

            # A replica never writes: a write asked of it is refused in the API's own shape.
            for url in direct:
                async with session.post(f"{url}/musegate/api/failures/retry", json={}) as resp:
                    assert resp.status == 409
                    assert "read-only replica" in (await resp.json())["error"]
    finally:
        await writer.close()
    assert all(p.returncode == 0 for p in procs), [p.read_text()[-1500:] for p in logs]


async def test_a_replica_follows_the_writers_radii_and_never_writes_them(tmp_path: Path,
                                                                          monkeypatch) -> None:
    config = make_config(tmp_path)
    lib = await fill_store(config)
    replica_config = config.replace(role="replica")
    path = radii_path(config.index_path)

    # no radii saved yet: the replica computes its own and leaves the file to the writer
    store = await LibraryStore.open(config.db_path, read_only=True)
    try:
        alone = LibraryService(store, replica_config)
        await alone.refresh(force=True)
        assert alone.snapshot.radius_status == "computed (saved radii missing)"
    finally:
        await store.close()
    assert not path.exists() and not config.index_path.exists()

    writer_store = await LibraryStore.open(config.db_path)
    replica_store = await LibraryStore.open(config.db_path, read_only=True)
    try:
        writer = LibraryService(writer_store, config)
        await writer.refresh(force=True)

        def no_search(*_args: object) -> None:
            raise AssertionError("the replica searched for radii the writer saved")

        with monkeypatch.context() as patched:
            patched.setattr(services, "neighbourhood_radius", no_search)
            replica = LibraryService(replica_store, replica_config)
            await replica.refresh(force=True)
        assert replica.snapshot.radius_status == "loaded"
        assert np.array_equal(replica.snapshot.catalogue.radius, writer.snapshot.catalogue.radius)

        # a new analysis: until the writer has saved its radii, the replica carries its own over
        await add_track(config, lib, 1, "Brand new techno")
        saved = path.read_bytes()
        assert await replica.refresh()
        assert replica.snapshot.radius_status == "1 computed, the rest carried over"
        assert path.read_bytes() == saved  # the replica wrote nothing
        # once the writer saved them, the replica's next reload takes the writer's
        assert await writer.refresh()
        await add_track(config, lib, 3, "Brand new metal")
        assert await writer.refresh()
        with monkeypatch.context() as patched:
            patched.setattr(services, "neighbourhood_radius", no_search)
            assert await replica.refresh()
        assert replica.snapshot.radius_status == "loaded"
        assert np.array_equal(replica.snapshot.catalogue.radius, writer.snapshot.catalogue.radius)
    finally:
        await replica_store.close()
        await writer_store.close()


@pytest.mark.parametrize("mode", ["missing", "delete"])
async def test_replica_store_errors_are_clear(tmp_path: Path, mode: str) -> None:
    from analysis.store import ReadOnlyStoreError

    db = tmp_path / "musegate.db"
    if mode == "delete":
        import sqlite3

        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute("CREATE TABLE t (x)")
        con.commit()
        con.close()
    with pytest.raises(ReadOnlyStoreError) as err:
        await LibraryStore.open(db, read_only=True)
    assert ("writer" in str(err.value)) and (mode != "missing" or "does not exist" in str(err.value))
    assert mode != "missing" or not db.exists()
