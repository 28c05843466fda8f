"""A TestServer that runs an app the way ``musegate serve`` does (gateway.connection_limits).

aiohttp's TestServer builds a plain ``AppRunner``; ``musegate serve`` builds a
``GuardedAppRunner``, whose connections also take gateway.fast_relay's path for plain
pass-through requests. Tests that must hold for what serve runs use this one.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.connection_limits import ConnectionGuard, ConnectionLimits, GuardedAppRunner


class ServedTestServer(TestServer):
    def __init__(self, app: web.Application, *, guard: ConnectionGuard | None = None,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard or ConnectionGuard(ConnectionLimits())

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return GuardedAppRunner(self.app, self.guard, **kwargs)
