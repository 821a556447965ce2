"""Client side of the server: read server-sent events, stream a generation, run a bounded load test
(introduced in Chapter 13). Only ``httpx``; meant for 127.0.0.1.

The load test starts ``n_clients`` threads; each sends streaming ``/generate`` requests one after
another until ``duration_s`` has passed (so it stops by itself), timing each request from sending
to the last event. Every completion is checked against ``expected`` when given.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import httpx

from ..runtime.profiles import capped


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, dict]]:
    """(event, data) pairs from the lines of a text/event-stream (blank line = end of an event)."""
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
    if data:
        yield event, json.loads("\n".join(data))


def stream_generate(client: httpx.Client, prompt: str, **params) -> Iterator[tuple[str, dict]]:
    """POST /generate with streaming; yield the events as they arrive (raises on a 4xx/5xx answer)."""
    with client.stream("POST", "/generate", json={"prompt": prompt, "stream": True, **params}) as response:
        if response.status_code != 200:
            response.read()
            raise httpx.HTTPStatusError(f"{response.status_code}: {response.text}", request=response.request,
                                        response=response)
        yield from parse_sse(response.iter_lines())


def stream_text(events: Iterable[tuple[str, dict]]) -> tuple[str, str | None]:
    """The streamed text and the finish reason of a sequence of /generate events."""
    text, reason = [], None
    for event, data in events:
        if event == "token":
            text.append(data["text"])
        elif event == "done":
            reason = data["finish_reason"]
        elif event == "error":
            raise RuntimeError(f"the server reported {data}")
    return "".join(text), reason


@dataclass
class LoadResult:
    """What a load test measured."""

    n_clients: int
    wall_s: float
    latencies_s: list[float] = field(default_factory=list)  # one per completed request
    tokens: int = 0  # new tokens received in total
    failures: list[str] = field(default_factory=list)  # wrong, incomplete or failed responses

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    def percentile(self, q: float) -> float:
        """The q-quantile of the latencies (nearest rank), seconds."""
        lat = sorted(self.latencies_s)
        return lat[min(len(lat) - 1, max(0, round(q * len(lat)) - 1))] if lat else float("nan")

    def summary(self) -> dict[str, float]:
        return {"clients": self.n_clients, "requests": self.requests, "failures": len(self.failures),
                "requests_per_s": self.requests / self.wall_s, "tokens_per_s": self.tokens / self.wall_s,
                "p50_ms": 1000 * (statistics.median(self.latencies_s) if self.latencies_s else float("nan")),
                "p95_ms": 1000 * self.percentile(0.95)}


def run_load_test(url: str, prompts: list[str], *, n_clients: int = 8, duration_s: float = 3.0,
                  max_new_tokens: int = 16, expected: dict[str, str] | None = None,
                  timeout_s: float = 60.0) -> LoadResult:
    """``n_clients`` threads send greedy streaming requests (prompts in rotation) until ``duration_s``.

    A response is complete with ``max_new_tokens`` tokens or a stop token; under a step cap
    (``SCRATCHLM_MAX_STEPS``, a dry run, which the server started from the same environment obeys too)
    with the capped number.
    """
    if n_clients < 1 or duration_s <= 0 or not prompts:
        raise ValueError("run_load_test needs n_clients >= 1, duration_s > 0 and at least one prompt")
    result = LoadResult(n_clients=n_clients, wall_s=0.0)
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + duration_s
    want_tokens = capped(max_new_tokens)

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            k = i
            while time.monotonic() < stop_at:  # bounded: each client stops by itself
                prompt = prompts[k % len(prompts)]
                k += 1
                t0 = time.perf_counter()
                try:
                    events = list(stream_generate(client, prompt, max_new_tokens=max_new_tokens, temperature=0.0))
                    text, reason = stream_text(events)
                    n = sum(1 for e, _ in events if e == "token")
                    problem = None
                    if reason is None or n != want_tokens and reason != "stop":
                        problem = f"incomplete ({n} tokens, finish {reason})"
                    elif expected is not None and text != expected[prompt]:
                        problem = f"wrong text {text!r}"
                except (httpx.HTTPError, RuntimeError, ValueError) as err:
                    problem, n = f"failed: {err}", 0
                latency = time.perf_counter() - t0
                with lock:
                    if problem:
                        result.failures.append(f"{prompt!r}: {problem}")
                    else:
                        result.latencies_s.append(latency)
                        result.tokens += n

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + timeout_s)
    result.wall_s = time.monotonic() - start
    return result
