"""A small batching queue for generation requests (introduced in Chapter 13).

One decode step of a small model costs about the same for 1 row as for 8 (it is dominated by
reading the weights), so requests that arrive close together should share steps. The queue waits
for a first request, then collects more for at most ``max_wait_ms`` (up to ``max_batch_size``),
left-pads their prompts into one batch and runs :meth:`StaticGenerator.stream` on a worker thread,
handing each row's tokens to its request as they come. Requests arriving meanwhile form the next
batch (this is *static* batching: a batch runs until its longest request is done; continuous
batching, which admits new rows between steps, is the next refinement).

A request whose client went away is cancelled: it stops receiving tokens, and a batch whose rows
are all cancelled stops early. Everything the worker thread hands back crosses to the event loop
through ``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from ..data.collate import left_pad
from ..decoding.static import StaticGenerator

END = None  # queue sentinel: the request is complete


@dataclass
class GenerationJob:
    """One request: its prompt ids and settings; tokens arrive on ``queue`` (ints, then END or an Exception)."""

    ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int | None = None
    loop: asyncio.AbstractEventLoop | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish_reason: str = "length"

    def _put(self, item: object) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def cancel(self) -> None:
        """The client is gone: stop sending it tokens (its batch row is skipped from now on)."""
        self.cancelled.set()


@dataclass
class BatchStats:
    """What the queue has done (reported by /health; the load test checks batching happened)."""

    batches: int = 0
    rows: int = 0
    largest_batch: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, float]:
        mean = self.rows / self.batches if self.batches else 0.0
        return {"batches": self.batches, "requests": self.rows, "largest_batch": self.largest_batch,
                "mean_batch_size": round(mean, 3), "tokens": self.tokens}


class BatchingQueue:
    """Collects :class:`GenerationJob` s and runs them in left-padded batches on one worker thread."""

    def __init__(self, generator: StaticGenerator, *, max_wait_ms: float = 5.0, pad_id: int = 0,
                 stop_tokens: list[int] | None = None, seed: int = 0) -> None:
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0; got {max_wait_ms}")
        self.generator = generator
        self.max_batch_size = generator.batch_size
        self.max_length = generator.max_length
        self.max_wait = max_wait_ms / 1000.0
        self.pad_id, self.stop_tokens = pad_id, stop_tokens or []
        self.rng = torch.Generator(device=generator.device).manual_seed(seed)
        self.stats = BatchStats()
        self._pending: asyncio.Queue[GenerationJob] | None = None
        self._carry: list[GenerationJob] = []  # jobs that did not fit the previous batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratchlm-generate")
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._pending = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: GenerationJob) -> None:
        if self._pending is None:
            raise RuntimeError("BatchingQueue.start() has not run")
        job.loop = asyncio.get_running_loop()
        self._pending.put_nowait(job)

    def _fits(self, batch: list[GenerationJob], job: GenerationJob) -> bool:
        """Left padding makes a batch as wide as its longest prompt, and it runs for its longest request."""
        width = max(len(j.ids) for j in [*batch, job])
        steps = max(j.max_new_tokens for j in [*batch, job])
        return len(batch) < self.max_batch_size and width + steps <= self.max_length

    async def _next_batch(self) -> list[GenerationJob]:
        loop = asyncio.get_running_loop()
        batch: list[GenerationJob] = []
        carried, self._carry = self._carry, []
        for job in carried:
            (batch if self._fits(batch, job) else self._carry).append(job)
        if not batch:
            batch.append(await self._pending.get())
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch_size:
            remaining = deadline - loop.time()
            try:
                job = self._pending.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                    self._pending.get(), remaining)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            (batch if self._fits(batch, job) else self._carry).append(job)
        return [j for j in batch if not j.cancelled.is_set()]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if batch:
                await loop.run_in_executor(self._executor, self._run, batch)

    def _run(self, batch: list[GenerationJob]) -> None:
        """Worker thread: generate for the batch, streaming each row's tokens to its job."""
        self.stats.batches += 1
        self.stats.rows += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        done = [False] * len(batch)
        counts = [0] * len(batch)
        stream = None
        try:
            ids, mask = left_pad([j.ids for j in batch], pad_id=self.pad_id)
            ids, mask = ids.to(self.generator.device), mask.to(self.generator.device)
            temperature = torch.tensor([j.temperature for j in batch], dtype=torch.float)  # (B,)
            top_k = torch.tensor([j.top_k or self.generator.model.config.vocab_size for j in batch])  # (B,)
            stream = self.generator.stream(ids, max(j.max_new_tokens for j in batch), attention_mask=mask,
                                           temperature=temperature, top_k=top_k, stop_tokens=self.stop_tokens,
                                           pad_id=self.pad_id, generator=self.rng)
            for tokens in stream:
                for i, (job, token) in enumerate(zip(batch, tokens, strict=True)):
                    if done[i]:
                        continue
                    if job.cancelled.is_set():
                        done[i] = True
                        continue
                    job._put(token)
                    counts[i] += 1
                    self.stats.tokens += 1
                    if token in self.stop_tokens or counts[i] >= job.max_new_tokens:
                        job.finish_reason = "stop" if token in self.stop_tokens else "length"
                        done[i] = True
                        job._put(END)
                if all(done):
                    break
        except Exception as err:  # reported to every waiting client as an internal error, never raised here
            for i, job in enumerate(batch):
                if not done[i]:
                    done[i] = True
                    job._put(err)
        finally:
            if stream is not None:
                stream.close()
            for i, job in enumerate(batch):
                if not done[i]:  # the stream ended early (every row stopped): complete the rest
                    job._put(END)
