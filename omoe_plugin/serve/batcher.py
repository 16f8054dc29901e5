"""Dynamic micro-batching for one served model: the items of concurrent requests wait in a
bounded queue and run as one `predict` (which sorts and pads them by length) of up to
max_batch items, on the model's own thread, so that ONNX Runtime sees batches while the
event loop goes on reading requests.

A batch starts when it is full, or max_delay after its first request arrived, or as soon as
no other request to the model is on its way in (being read or checked): a lone client waits
for nothing, and under load the requests that arrive while a batch runs make the next one.
The queue holds at most max_queue items; past that a request is refused (503), never
kept waiting in an unbounded backlog."""

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from .errors import Problem

RETRY_AFTER_S = 1  # what a refused client is told to wait


@dataclass(eq=False)
class Job:
    """One request's items and the future its answers are set on."""

    items: list
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Groups the items of concurrent requests into runs of `predict(items)`.

    predict: answers a list of items in order (run on this batcher's one thread);
    on_batch(items, seconds): called after each run (metrics)."""

    def __init__(self, predict: Callable[[list], list], max_batch: int, max_delay: float,
                 max_queue: int, name: str = "model",
                 on_batch: Optional[Callable[[int, float], None]] = None) -> None:
        self.predict, self.on_batch = predict, on_batch
        self.max_batch, self.max_delay, self.max_queue = max_batch, max_delay, max_queue
        self.pending: deque[Job] = deque()
        self.queued = 0  # items waiting in `pending`
        self.arriving = 0  # requests being read or checked, not yet submitted
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"omoe-serve-{name}")
        self._wakeup: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Task] = None

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop batching (after the server has answered every request) and free the thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=True)

    @contextmanager
    def arrival(self) -> Iterator[None]:
        """Held while a request is read and checked: a batch waits (up to max_delay) for
        requests on their way in, never for requests that may not come."""
        self.arriving += 1
        try:
            yield
        finally:
            self.arriving -= 1
            self._wake()

    def submit(self, items: list) -> Job:
        """Queue a request's items; a 503 with Retry-After when the queue cannot take them."""
        if self.queued + len(items) > self.max_queue:
            raise Problem(503, f"the server is overloaded: {self.queued} items are queued "
                               f"(--max-queue {self.max_queue}); retry later",
                          {"Retry-After": str(RETRY_AFTER_S)})
        job = Job(items, asyncio.get_running_loop().create_future())
        self.pending.append(job)
        self.queued += len(items)
        self._wake()
        return job

    def discard(self, job: Job) -> None:
        """Forget a request that timed out: out of the queue if still there."""
        job.future.cancel()
        if job in self.pending:
            self.pending.remove(job)
            self.queued -= len(job.items)

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def _run(self) -> None:
        while True:
            while not self.pending:
                await self._wait(None)
            batch = await self._collect()
            if batch:  # empty when every waiting request timed out meanwhile
                await self._execute(batch)

    async def _wait(self, timeout: Optional[float]) -> None:
        """Until something is submitted or arrives (or timeout seconds)."""
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            pass

    async def _collect(self) -> list[Job]:
        """The next batch: whole requests in arrival order, up to max_batch items (a request
        larger than that runs alone), after waiting for a full batch while requests are on
        their way in and max_delay has not passed since the first one arrived."""
        deadline = self.pending[0].arrived + self.max_delay
        while (self.pending and self.queued < self.max_batch and self.arriving > 0
               and (left := deadline - time.monotonic()) > 0):
            await self._wait(left)
        batch, size = [], 0
        while self.pending and (not batch or size + len(self.pending[0].items) <= self.max_batch):
            job = self.pending.popleft()
            self.queued -= len(job.items)
            batch.append(job)
            size += len(job.items)
        return batch

    async def _execute(self, batch: list[Job]) -> None:
        """Run one batch on the model's thread and hand each request its answers."""
        items = [item for job in batch for item in job.items]
        started = time.perf_counter()
        try:
            answers = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.predict, items)
        except Exception as e:  # noqa: BLE001 - each request of the batch gets the error
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        if self.on_batch is not None:
            self.on_batch(len(items), time.perf_counter() - started)
        at = 0
        for job in batch:
            if not job.future.done():
                job.future.set_result(answers[at:at + len(job.items)])
            at += len(job.items)
