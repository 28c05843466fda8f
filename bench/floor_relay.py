"""A callback-only asyncio relay, no aiohttp: the floor of a Python pass-through's CPU per ping.

Not a proxy (one upstream connection per caller connection, Content-Length answers only,
no header rules): what the event loop, two transports and the least parsing cost per
relayed request on this machine, measured beside musegate by bench/passthrough_cpu.py
(``--floor``). Run as ``python bench/floor_relay.py UPSTREAM_PORT PORT``.
"""

from __future__ import annotations

import asyncio
import socket
import sys

UP_PORT = int(sys.argv[1])
PORT = int(sys.argv[2])


class Up(asyncio.Protocol):
    """The upstream side: whole answers (by Content-Length) go to the caller."""

    def __init__(self) -> None:
        self.buf = b""
        self.client: Front | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        length = 0
        for line in self.buf[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(self.buf) < end + 4 + length:
            return
        message, self.buf = self.buf[:end + 4 + length], self.buf[end + 4 + length:]
        assert self.client is not None and self.client.transport is not None
        self.client.transport.write(message)


class Front(asyncio.Protocol):
    """The caller's side: each request head goes upstream with Host and X-Forwarded-For."""

    def __init__(self) -> None:
        self.buf = b""
        self.up: Up | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        _, up = await asyncio.get_running_loop().create_connection(Up, "127.0.0.1", UP_PORT)
        up.client = self
        self.up = up
        self.data_received(b"")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.up is None or self.up.transport is None:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        lines = head.split(b"\r\n")
        out = [lines[0], b"Host: 127.0.0.1"]
        out += [line for line in lines[1:] if not line.lower().startswith(b"host:")]
        out += [b"X-Forwarded-For: 127.0.0.1", b"", b""]
        self.up.transport.write(b"\r\n".join(out))


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Front, "127.0.0.1", PORT)
    print("READY", flush=True)
    async with server:
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
