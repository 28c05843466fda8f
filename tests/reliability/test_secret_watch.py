"""The session-wide secrets check (tests/secret_watch.py) does see a secret logged by musegate."""

from __future__ import annotations

import logging

from tests import secret_watch


def test_a_secret_logged_by_product_code_is_found(tmp_path) -> None:
    secret_watch.watch_secret("watch-me-0123456789")
    record = logging.getLogger("gateway.subsonic").makeRecord(
        "gateway.subsonic", logging.DEBUG, "/somewhere/gateway/subsonic.py", 1,
        "calling with %s", ("watch-me-0123456789",), None)
    before = len(secret_watch._hits)
    secret_watch._handler.handle(record)
    try:
        assert len(secret_watch._hits) == before + 1
        assert "watch-me" not in secret_watch._hits[-1]  # the report never repeats it
    finally:
        del secret_watch._hits[before:]
    log_file = tmp_path / "serve.log"
    log_file.write_text("DEBUG upstream said watch-me-0123456789\n")
    secret_watch.watch_log_file(log_file)
    try:
        assert any(str(log_file) in h for h in secret_watch.hits())
    finally:
        secret_watch._files.remove(log_file)
    # the harness's own access log (aiohttp's default, used by TestServer) is not musegate's
    harness = logging.getLogger("aiohttp.access").makeRecord(
        "aiohttp.access", logging.INFO, "/x/aiohttp/web_log.py", 1, "GET /?p=%s",
        ("watch-me-0123456789",), None)
    secret_watch._handler.handle(harness)
    assert len(secret_watch._hits) == before


async def test_a_too_long_request_line_is_logged_without_its_password(
        tmp_path, caplog) -> None:
    """aiohttp refuses a request line over 8190 bytes before any handler runs and logs its
    first bytes at ERROR: for a Subsonic client that is ``u=…&p=PASSWORD``."""
    import asyncio

    from aiohttp.test_utils import TestServer

    from gateway.app import create_app
    from tests.store_factory import make_config

    caplog.set_level(logging.DEBUG)
    app = create_app(make_config(tmp_path), adapter=None, refresh_seconds=None)
    async with TestServer(app, host="127.0.0.1") as ts:
        reader, writer = await asyncio.open_connection("127.0.0.1", ts.port)
        line = "GET /rest/getSimilarSongs?u=alice&p=alicepw&t=0123456789abcdef&s=salt42x&id=" \
               + "x" * 9000 + " HTTP/1.1\r\nHost: x\r\nAuthorization: Basic YWxpY2U6YWxpY2Vwdw==\r\n\r\n"
        writer.write(line.encode())
        await writer.drain()
        head = await reader.readline()
        writer.close()
    assert b" 400 " in head or b" 414 " in head
    assert any(r.name == "aiohttp.server" for r in caplog.records)
    for secret in ("alicepw", "0123456789abcdef", "salt42x"):
        assert secret not in caplog.text
