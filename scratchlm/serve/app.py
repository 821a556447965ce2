"""The HTTP server: a FastAPI app with ``/generate`` (server-sent events), ``/classify`` and ``/health``
(introduced in Chapter 13).

Safe by default — every limit below is enforced before any model runs, and tested:

* request bodies larger than ``max_body_bytes`` are refused (413) whether or not they announce a
  Content-Length; unknown fields, wrong types, malformed JSON and out-of-range values get a 4xx
  JSON error naming the field (never a traceback, a file path or the server's internals);
* prompts are capped in characters and in tokens, ``max_new_tokens`` and ``temperature`` in range;
* at most ``max_in_flight`` requests are admitted at once (503 with ``Retry-After`` beyond); a
  streaming client that disconnects frees its slot at once and its batch row stops receiving work;
* any unexpected error becomes ``{"error": {"code": "internal_error", ...}}`` with status 500.

Binding to 127.0.0.1 and loading safetensors only are the command line's part (see ``__main__``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.collate import pad_sequences
from ..decoding.static import StaticGenerator
from .batching import END, BatchingQueue, GenerationJob
from .bundle import Bundle, freeze

log = logging.getLogger("scratchlm.serve")


@dataclass
class ServeLimits:
    """Every bound the server enforces (the command line sets them)."""

    max_body_bytes: int = 16_384  # request body, bytes
    max_prompt_chars: int = 2_000  # prompt length in characters (checked before tokenizing)
    max_new_tokens: int = 256  # per request
    max_in_flight: int = 32  # requests admitted at once (streams included), beyond: 503
    max_batch_size: int = 8  # generation rows run together
    max_wait_ms: float = 5.0  # how long the batching queue waits for company
    max_classify_texts: int = 32  # texts per /classify request
    max_temperature: float = 2.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (
                    name != "max_wait_ms" and value == 0):
                raise ValueError(f"ServeLimits.{name} must be a positive number; got {value!r}")


class ApiError(Exception):
    """An error the client caused (or may retry): status, a stable code and a message without internals."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers, self.field = status, code, message, headers, field


class _BodyTooLarge(StarletteHTTPException):
    """Raised while reading a body past the limit (an HTTPException, so FastAPI's body parser re-raises it)."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body exceeds {max_bytes} bytes")


class GenerateRequest(BaseModel):
    """POST /generate. ``temperature`` 0 = greedy (deterministic); ``stream`` false = one JSON answer."""

    model_config = ConfigDict(extra="forbid", strict=True)
    prompt: str = Field(min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1)  # None: min(64, the server's limit)
    temperature: float = Field(default=0.0, ge=0.0)
    top_k: int | None = Field(default=None, ge=1)
    stream: bool = True


class ClassifyRequest(BaseModel):
    """POST /classify: one or more texts."""

    model_config = ConfigDict(extra="forbid", strict=True)
    texts: list[str] = Field(min_length=1)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, **extra}}, status_code=status, headers=headers)


class BodyLimitMiddleware:
    """ASGI middleware: refuse bodies over ``max_bytes`` — by Content-Length at once, else while reading."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            response = _error(413, "body_too_large", f"request body exceeds {self.max_bytes} bytes")
            return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


class Server:
    """The app's state: models, generator, batching queue, admission counter."""

    def __init__(self, bundle: Bundle, limits: ServeLimits, *, compile: bool = False, seed: int = 0) -> None:
        self.bundle, self.limits = bundle, limits
        self.in_flight = 0
        self.queue: BatchingQueue | None = None
        freeze(bundle.generator)
        freeze(bundle.classifier)
        if bundle.generator is not None:
            block = bundle.generator.config.block_size
            self.generator = StaticGenerator(bundle.generator, batch_size=limits.max_batch_size, max_length=block,
                                             compile=compile)
            tok = bundle.generator_tokenizer
            self.pad_id = tok.pad_id if tok.pad_id is not None else 0
            self.stop_tokens = [tok.eos_id] if tok.eos_id is not None else []
            self.seed = seed
        self._classify_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scratchlm-classify")

    async def start(self) -> None:
        if self.bundle.generator is not None:
            self.queue = BatchingQueue(self.generator, max_wait_ms=self.limits.max_wait_ms, pad_id=self.pad_id,
                                       stop_tokens=self.stop_tokens, seed=self.seed)
            await self.queue.start()

    async def stop(self) -> None:
        if self.queue is not None:
            await self.queue.stop()
        self._classify_pool.shutdown(wait=True, cancel_futures=True)

    # ---- admission --------------------------------------------------------------------------------
    def admit(self) -> None:
        if self.in_flight >= self.limits.max_in_flight:
            raise ApiError(503, "overloaded", f"the server is at its limit of {self.limits.max_in_flight} "
                           "requests in flight; retry shortly", headers={"Retry-After": "1"})
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1

    # ---- generation -------------------------------------------------------------------------------
    def make_job(self, req: GenerateRequest) -> GenerationJob:
        if self.bundle.generator is None:
            raise ApiError(404, "no_generator", "this server has no generator model")
        lim, block = self.limits, self.generator.max_length
        n_new = req.max_new_tokens if req.max_new_tokens is not None else min(64, lim.max_new_tokens)
        if len(req.prompt) > lim.max_prompt_chars:
            raise ApiError(413, "prompt_too_long", f"the prompt has {len(req.prompt)} characters; the limit is "
                           f"{lim.max_prompt_chars}")
        if n_new > lim.max_new_tokens:
            raise ApiError(422, "invalid_request", f"max_new_tokens must be <= {lim.max_new_tokens}",
                           field="max_new_tokens")
        if not math.isfinite(req.temperature) or req.temperature > lim.max_temperature:
            raise ApiError(422, "invalid_request", f"temperature must be in [0, {lim.max_temperature}]",
                           field="temperature")
        try:
            ids = self.bundle.generator_tokenizer.encode(req.prompt)
        except (ValueError, KeyError):
            raise ApiError(422, "invalid_request", "the prompt contains characters this model's tokenizer "
                           "cannot encode", field="prompt") from None
        if not ids:
            raise ApiError(422, "invalid_request", "the prompt encodes to no tokens", field="prompt")
        if len(ids) + n_new > block:
            raise ApiError(413, "prompt_too_long", f"prompt ({len(ids)} tokens) + max_new_tokens "
                           f"({n_new}) exceeds the model's context of {block} tokens")
        return GenerationJob(ids=ids, max_new_tokens=n_new, temperature=req.temperature,
                             top_k=req.top_k)

    async def tokens(self, job: GenerationJob, request: Request) -> AsyncIterator[int]:
        """The job's tokens as they arrive; stops (and cancels the job) when the client disconnects."""
        while True:
            try:
                item = await asyncio.wait_for(job.queue.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    return
                continue
            if item is END:
                return
            if isinstance(item, Exception):
                log.error("generation failed: %r", item)
                raise ApiError(500, "internal_error", "generation failed")
            yield item

    # ---- classification ---------------------------------------------------------------------------
    def classify_batch(self, texts: list[str]) -> dict:
        b = self.bundle
        tok = b.classifier_tokenizer
        rows = [tok.encode(t, max_length=b.classifier_max_length) for t in texts]
        ids, mask = pad_sequences(rows, tok.pad_id or 0)  # (N, T) right-padded
        with torch.no_grad():
            logits = b.classifier(ids.to(next(b.classifier.parameters()).device), attention_mask=mask.to(ids.device)
                                  ).logits.float().cpu()  # (N, K)
        probs = torch.softmax(logits, dim=-1)  # (N, K)
        return {"labels": [b.labels[i] for i in probs.argmax(-1).tolist()],
                "probabilities": [[round(p, 6) for p in row] for row in probs.tolist()],
                "label_names": b.labels}


def create_app(bundle: Bundle, limits: ServeLimits | None = None, *, compile: bool = False, seed: int = 0) -> FastAPI:
    """The FastAPI application serving ``bundle`` under ``limits``."""
    limits = limits or ServeLimits()
    server = Server(bundle, limits, compile=compile, seed=seed)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="scratchlm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        extra = {"fields": [{"field": exc.field, "message": exc.message}]} if exc.field else {}
        return _error(exc.status, exc.code, exc.message, exc.headers, **extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed_json", "the request body is not valid JSON")
        fields = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "message": e.get("msg", "")}
                  for e in errors]
        return _error(422, "invalid_request", "the request does not match the schema", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s: %r", request.url.path, exc)  # server log only
        return _error(500, "internal_error", "internal error")

    @app.get("/health")
    async def health() -> dict:
        stats = server.queue.stats.as_dict() if server.queue is not None else {}
        return {"status": "ok", "generator": bundle.generator is not None,
                "classifier": bundle.classifier is not None, "in_flight": server.in_flight,
                "limits": asdict(limits), "batching": stats}

    @app.post("/generate")
    async def generate_endpoint(req: GenerateRequest, request: Request):
        job = server.make_job(req)  # validates: 4xx before anything is admitted
        server.admit()
        tokenizer = bundle.generator_tokenizer
        try:
            server.queue.submit(job)
        except Exception:
            server.release()
            raise
        if not req.stream:
            try:
                ids = [t async for t in server.tokens(job, request)]
            finally:
                job.cancel()
                server.release()
            return {"completion": tokenizer.decode(ids), "new_tokens": len(ids), "finish_reason": job.finish_reason}

        async def events() -> AsyncIterator[str]:
            ids: list[int] = []
            text = ""
            try:
                async for token in server.tokens(job, request):
                    ids.append(token)
                    full = tokenizer.decode(ids)
                    delta, text = full[len(text):], full
                    yield _sse("token", {"index": len(ids) - 1, "id": token, "text": delta})
                yield _sse("done", {"completion": text, "new_tokens": len(ids), "finish_reason": job.finish_reason})
            except ApiError as err:
                yield _sse("error", {"code": err.code, "message": err.message})
            finally:  # runs on completion, on error, and when the client disconnects (cancellation)
                job.cancel()
                server.release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/classify")
    async def classify_endpoint(req: ClassifyRequest) -> dict:
        if bundle.classifier is None:
            raise ApiError(404, "no_classifier", "this server has no classifier model")
        if len(req.texts) > limits.max_classify_texts:
            raise ApiError(413, "too_many_texts", f"at most {limits.max_classify_texts} texts per request")
        if any(len(t) > limits.max_prompt_chars for t in req.texts):
            raise ApiError(413, "text_too_long", f"each text must have at most {limits.max_prompt_chars} characters")
        if any(not t.strip() for t in req.texts):
            raise ApiError(422, "invalid_request", "texts must not be empty", field="texts")
        server.admit()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(server._classify_pool, server.classify_batch, req.texts)
        finally:
            server.release()

    return app
