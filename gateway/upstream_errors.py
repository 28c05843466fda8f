"""What "the upstream failed" means to musegate, and how long it waits before saying so.

One exception, :class:`UpstreamDown`, stands for every way the music server can
fail a call musegate makes (connection refused or reset, no answer in time, a
body cut short, bytes that are not HTTP, an answer that is not the protocol, a
5xx of its own) and carries the HTTP status the caller gets in its own
protocol's format: 504 when the upstream did not answer within
``upstream_timeout``, 503 when it said it is unavailable (503: a server still
starting, or in maintenance), 502 for everything else. It is never a refusal:
a refusal is the upstream's verdict on the caller, relayed as such, and an
outage never turns into one (nor a refusal into an admission).

The two timeouts are settings because they are a trade: how long a caller
waits for a dead or wedged server versus how slow a healthy one may be. Reads
of a pass-through body have no timeout (a paused player, an idle event
stream), only the wait for its status line and headers does.
"""

from __future__ import annotations

import aiohttp

from musegate.config import Config

BAD_GATEWAY = 502
UNAVAILABLE = 503
GATEWAY_TIMEOUT = 504

# The exceptions aiohttp raises for a call that did not produce an answer.
TRANSPORT_ERRORS = (TimeoutError, aiohttp.ClientError, OSError)


class UpstreamDown(Exception):
    """The upstream could not be reached or did not answer like the server it should be."""

    def __init__(self, reason: str, status: int = BAD_GATEWAY) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    @property
    def timed_out(self) -> bool:
        return self.status == GATEWAY_TIMEOUT


def from_exception(what: str, exc: BaseException) -> UpstreamDown:
    """The UpstreamDown for a transport failure (no secret is in an exception's type name)."""
    status = GATEWAY_TIMEOUT if isinstance(exc, TimeoutError) else BAD_GATEWAY
    return UpstreamDown(f"{what}: {type(exc).__name__}", status)


def from_status(what: str, status: int) -> UpstreamDown:
    """The UpstreamDown for an upstream's own 5xx (its 503 stays a 503)."""
    return UpstreamDown(f"{what}: HTTP {status}",
                        UNAVAILABLE if status == UNAVAILABLE else BAD_GATEWAY)


def message(down: UpstreamDown, server: str = "The music server behind musegate") -> str:
    """The sentence a caller reads: unreachable, unavailable, or too slow."""
    if down.status == GATEWAY_TIMEOUT:
        return f"{server} did not answer in time"
    if down.status == UNAVAILABLE:
        return f"{server} is unavailable"
    return f"{server} is not reachable"


def client_timeout(config: Config) -> aiohttp.ClientTimeout:
    """For calls musegate makes itself (auth checks, getSong, Items): the whole answer is bounded."""
    return aiohttp.ClientTimeout(total=config.upstream_timeout,
                                 connect=config.upstream_connect_timeout,
                                 sock_connect=config.upstream_connect_timeout)

