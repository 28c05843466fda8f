"""Run async servers (musegate, supysonic's runner, the fakes) on an event loop in a thread,
so that synchronous drivers (hypothesis, schemathesis, requests) can call them."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float | None = 300) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@contextlib.contextmanager
def serving(factory: Callable[[], contextlib.AbstractAsyncContextManager[T]]) -> Iterator[T]:
    """Enter ``factory()`` (an async context manager) on a loop thread; yield what it gives."""
    lt = LoopThread()
    entered: asyncio.Future[Any] | None = None
    done = asyncio.Event()

    async def hold(ready: asyncio.Future[Any]) -> None:
        try:
            async with factory() as value:
                ready.set_result(value)
                await done.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    async def start() -> tuple[Any, asyncio.Task[None]]:
        nonlocal entered
        entered = lt.loop.create_future()
        task = lt.loop.create_task(hold(entered))
        return await entered, task

    value, task = lt.run(start())
    try:
        yield value
    finally:
        async def stop() -> None:
            done.set()
            await task
        lt.run(stop())
        lt.close()
