"""Micro-batching: gather concurrent single-item calls into batches for one handler call.

A batch closes when it holds ``max_batch_size`` items or ``max_wait_s`` has passed since its
first item arrived. Under load, items queue while a batch runs, so the next batch fills at
once; with no load an item waits at most ``max_wait_s``. Independent of models and backends.

``Window`` bounds how much work is held between two stages at once (the engine: videos decoded
and not yet scored), so a fast stage cannot pile its output up in memory in front of a slow one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


class MicroBatcher(Generic[In, Out]):
    """Call ``handler(items) -> results`` (same length, same order) on batches of submitted items."""

    def __init__(
        self,
        handler: Callable[[list[In]], Awaitable[list[Out]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_concurrent_batches: int = 1,
        name: str = "batcher",
        observe: Callable[[list[float]], None] | None = None,
    ) -> None:
        """``observe``, if given, is called with each batch's queue waits in seconds (one per item)."""
        self._handler = handler
        self._observe = observe
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.name = name
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out], float]] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_concurrent_batches)
        self._runner: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.batch_sizes: Counter[int] = Counter()  # batch size -> how many batches ran with it

    def start(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name=f"{self.name}-runner")

    async def stop(self) -> None:
        """Stop taking batches; batches already running finish, queued items get an error."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None
        await asyncio.gather(*self._running, return_exceptions=True)
        while not self._queue.empty():
            _, future, _ = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError(f"{self.name} stopped"))

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    async def submit(self, item: In) -> Out:
        if self._runner is None:
            raise RuntimeError(f"{self.name} is not started")
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future, time.perf_counter()))
        return await future

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._collect()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _collect(self) -> list[tuple[In, asyncio.Future[Out], float]]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            if self._queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            else:
                batch.append(self._queue.get_nowait())
        return [entry for entry in batch if not entry[1].done()]  # drop cancelled callers

    async def _execute(self, batch: list[tuple[In, asyncio.Future[Out], float]]) -> None:
        try:
            if not batch:
                return
            self.batch_sizes[len(batch)] += 1
            if self._observe is not None:
                now = time.perf_counter()
                self._observe([now - queued for _, _, queued in batch])
            try:
                results = await self._handler([item for item, _, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{self.name}: handler returned {len(results)} results for {len(batch)} items")
            except Exception as exc:
                for _, future, _ in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_, future, _), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
        finally:
            self._slots.release()


class Window:
    """At most ``size`` units held at once, granted first come, first served (a claim that does not
    fit holds up the claims behind it, so none starves); a claim is always granted when nothing is
    held, so the window never deadlocks. ``peak`` is the most ever held."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self.peak = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def hold(self, units: int = 1) -> AsyncIterator[None]:
        await self._acquire(units)
        try:
            yield
        finally:
            self._release(units)

    def _fits(self, units: int) -> bool:
        return self.held == 0 or self.held + units <= self.size

    def _take(self, units: int) -> None:
        self.held += units
        self.peak = max(self.peak, self.held)

    async def _acquire(self, units: int) -> None:
        if not self._waiting and self._fits(units):
            self._take(units)
            return
        granted = asyncio.get_running_loop().create_future()
        entry = (units, granted)
        self._waiting.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted as it was cancelled: give it back
                self._release(units)
            else:
                if entry in self._waiting:
                    self._waiting.remove(entry)
                self._grant()  # claims behind this one may fit now
            raise

    def _release(self, units: int) -> None:
        self.held -= units
        self._grant()

    def _grant(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            units, granted = self._waiting.popleft()
            if not granted.cancelled():  # a cancelled claim is dropped
                self._take(units)
                granted.set_result(None)
