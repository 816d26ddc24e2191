"""Dynamic batching: concurrent requests to one model become one forward pass.

Requests wait in a bounded queue. One worker per model takes the oldest, then keeps adding
requests while the batch's padded size (requests × longest request, in tokens) stays within
``max_batch_tokens``, waiting at most ``max_wait_ms`` for more when the queue runs dry, as
text-embeddings-inference does. The batch runs in the model's own thread, off the event loop, so
the server keeps accepting requests meanwhile. A full queue refuses at once (`Overloaded`) rather
than letting a request wait without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The model's queue is full; try again after ``retry_after`` seconds."""

    def __init__(self, name: str, retry_after: float):
        super().__init__(f"model '{name}' is busy: its queue is full")
        self.retry_after = retry_after


@dataclass
class _Request:
    item: Any
    tokens: int
    future: asyncio.Future = field(repr=False)


@dataclass
class BatchStats:
    """What the worker has done: batches run, requests served, and the largest batch."""

    batches: int = 0
    requests: int = 0
    largest: int = 0


class DynamicBatcher:
    """Group `submit`-ted items into calls of ``run(items) -> results`` (one result per item)."""

    def __init__(
        self,
        name: str,
        run: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_tokens: int = 16_384,
        max_wait_ms: float = 5.0,
        max_queue: int = 512,
        on_batch: Callable[[int, int], None] | None = None,
    ):
        if max_batch_tokens < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch_tokens and max_queue must be >= 1, max_wait_ms >= 0")
        self.name, self.run = name, run
        self.max_batch_tokens, self.max_wait = max_batch_tokens, max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # called with (batch size, queue depth after taking it)
        self.stats = BatchStats()
        self._queue: asyncio.Queue[_Request] | None = None
        self._worker: asyncio.Task | None = None
        self._carry: _Request | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kelm-{name}")
        self._seconds_per_batch = 0.05

    @property
    def depth(self) -> int:
        """Requests waiting (not yet in a running batch)."""
        return (self._queue.qsize() if self._queue is not None else 0) + (self._carry is not None)

    async def submit(self, item: Any, tokens: int = 1) -> Any:
        """The result of ``item``, computed in some batch; `Overloaded` when the queue is full."""
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._work())
        if self.depth >= self.max_queue:
            raise Overloaded(self.name, self._retry_after())
        request = _Request(item, max(int(tokens), 1), loop.create_future())
        self._queue.put_nowait(request)
        return await request.future

    def _retry_after(self) -> float:
        """About how long the queue takes to drain at the recent speed."""
        per_batch = max(1, self.stats.requests // max(self.stats.batches, 1))
        return max(1.0, round(self.depth / per_batch * self._seconds_per_batch, 1))

    async def _next_batch(self) -> list[_Request]:
        assert self._queue is not None
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, longest = [first], first.tokens
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while True:
            try:
                nxt = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
            if (len(batch) + 1) * max(longest, nxt.tokens) > self.max_batch_tokens:
                self._carry = nxt
                break
            batch.append(nxt)
            longest = max(longest, nxt.tokens)
        return [r for r in batch if not r.future.cancelled()]

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), self.depth)
            start = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self.run, [r.item for r in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"model '{self.name}' returned {len(results)} results for {len(batch)}")
            except Exception as err:  # one bad batch fails its requests, never the worker
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err)
                continue
            finally:
                self._seconds_per_batch = 0.8 * self._seconds_per_batch + 0.2 * (loop.time() - start)
            self.stats.batches += 1
            self.stats.requests += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for r, result in zip(batch, results, strict=True):
                if not r.future.done():
                    r.future.set_result(result)

    async def close(self) -> None:
        """Stop the worker (requests still queued get a cancellation) and the model's thread."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        while self._queue is not None and not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
