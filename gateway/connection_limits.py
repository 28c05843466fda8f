"""Connection limits for ``musegate serve``: caps per server and per client, a header deadline.

aiohttp bounds the *size* of a request head (``max_line_size``, ``max_field_size``,
``max_headers``) and closes a connection that has sent no complete request within
``keepalive_timeout`` of its start or of its last answer — but that timeout doubles as
the idle time of a keep-alive connection, so a value long enough for apps (seconds to
minutes) also lets a slow client ("slowloris") dribble a header byte now and then and
hold its connection that long, and nothing caps how many connections one address
holds. ``ConnectionGuard`` adds what is missing, at the connection level, before any
request exists:

* ``max_connections``: above this many open connections a new one gets a ``503``
  (``Retry-After``) and is closed at once, so the process never runs out of file
  descriptors (the answer costs no handler, no upstream call);
* ``max_connections_per_client``: the same per remote address, so one client cannot
  take them all; ``trusted_proxies`` are exempt (every user behind a reverse proxy
  shares its address);
* ``header_timeout``: a connection whose first request head is not complete this many
  seconds after it was opened is closed, however many bytes it has dribbled. Later
  requests on a kept-alive connection are bounded by ``keepalive_timeout`` (aiohttp's
  own rule above, set from ``keepalive_seconds``).

It hooks the aiohttp ``web.Server`` of a runner through the server's public
``connection_made``/``connection_lost`` (called by every ``RequestHandler``) and its
``request_factory`` (called once a request head is parsed); see ``GuardedAppRunner``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from musegate.config import Config, parse_networks

log = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

class Cancellable(Protocol):
    def cancel(self) -> None: ...


BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Retry-After: 5\r\nConnection: close\r\nContent-Length: 38\r\n\r\n"
        b"musegate: too many connections; retry\n")


@dataclass(frozen=True)
class ConnectionLimits:
    """0 turns a limit off."""

    max_connections: int = 0
    max_per_client: int = 0
    header_timeout: float = 0.0
    exempt: tuple[Network, ...] = ()

    @classmethod
    def from_config(cls, config: Config) -> ConnectionLimits:
        return cls(max_connections=config.max_connections,
                   max_per_client=config.max_connections_per_client,
                   header_timeout=float(config.header_timeout_seconds),
                   exempt=parse_networks(config.trusted_proxies))

    def is_exempt(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.exempt)


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""  # a Unix socket: one local "client"


class ConnectionGuard:
    """Counts open connections, refuses those over a cap, closes those whose head is late.

    ``call_later`` is the clock (the loop's by default), so a test can drive deadlines.
    """

    def __init__(self, limits: ConnectionLimits,
                 call_later: Callable[..., Cancellable] | None = None) -> None:
        self.limits = limits
        self._call_later = call_later
        self.open = 0
        self.per_client: Counter[str] = Counter()
        # handler -> (client address, header deadline or None once a request arrived)
        self._conns: dict[Any, tuple[str, Cancellable | None]] = {}
        self.refused = 0
        self.late = 0

    def attach(self, server: web.Server) -> web.Server:
        """Hook ``server`` (before it accepts connections); returns it."""
        made, lost, factory = server.connection_made, server.connection_lost, \
            server.request_factory

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._connection_made(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._connection_lost(handler)
            lost(handler, exc)

        def request_factory(message: Any, payload: Any, protocol: Any, writer: Any,
                            task: Any) -> web.BaseRequest:
            self._head_arrived(protocol)
            return factory(message, payload, protocol, writer, task)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory
        # gateway.fast_relay answers some requests without a request object: it says here
        # that a complete head arrived, as request_factory does for the others.
        server.head_arrived = self._head_arrived  # type: ignore[attr-defined]
        return server

    # -- events

    def _connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        limits = self.limits
        client = _address(transport)
        per_client = limits.max_per_client and not limits.is_exempt(client)
        if ((limits.max_connections and self.open >= limits.max_connections)
                or (per_client and self.per_client[client] >= limits.max_per_client)):
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("connection limit reached (%d open, %d from %s): refused %d "
                            "connection(s) so far", self.open, self.per_client[client],
                            client or "a local socket", self.refused)
            transport.write(BUSY)
            handler.force_close()  # closes the transport once BUSY is written
            return
        timer = None
        if limits.header_timeout > 0:
            call_later = self._call_later or asyncio.get_running_loop().call_later
            timer = call_later(limits.header_timeout, self._too_late, handler)
        self._conns[handler] = (client, timer)
        self.open += 1
        self.per_client[client] += 1

    def _head_arrived(self, handler: Any) -> None:
        entry = self._conns.get(handler)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()
            self._conns[handler] = (entry[0], None)

    def _too_late(self, handler: Any) -> None:
        entry = self._conns.get(handler)
        if entry is None or entry[1] is None:
            return
        self._conns[handler] = (entry[0], None)
        self.late += 1
        log.info("closed a connection from %s: no complete request within %g s",
                 entry[0] or "a local socket", self.limits.header_timeout)
        handler.force_close()

    def _connection_lost(self, handler: Any) -> None:
        entry = self._conns.pop(handler, None)
        if entry is None:
            return  # refused, never counted
        client, timer = entry
        if timer is not None:
            timer.cancel()
        self.open -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


class GuardedAppRunner(web.AppRunner):
    """An ``AppRunner`` whose server is hooked by a ``ConnectionGuard`` before any site starts,
    and whose plain pass-through requests take gateway.fast_relay's path."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    async def _make_server(self) -> web.Server:
        from gateway import fast_relay

        server = self.guard.attach(await super()._make_server())
        return fast_relay.install(server, self.app)
