"""The omoe-serve ASGI application (FastAPI): the Open Inference Protocol's routes (health,
server and model metadata, model readiness, infer), the plain JSON form
POST /models/{name}/predict, and /metrics. Every request to a model is read within
--max-request-bytes, checked whole, micro-batched and answered within --request-timeout-s;
every refusal is {"error": message} with its 4xx or 5xx status."""

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from .. import __version__
from ..export.runtime import SERVERS, ServedModel
from .batcher import MicroBatcher
from .errors import Problem, quoted
from .metrics import UNKNOWN, Metrics
from .protocol import HEADER_LENGTH, infer_response, parse_infer, parse_plain
from .spec import VERSION, ModelSpec

logger = logging.getLogger(__name__)

# parse(spec, body, headers) -> (columns, context); render(spec, answers, notes, context)
Parse = Callable[[ModelSpec, bytes, Any], tuple[list[list], Any]]
Render = Callable[[ModelSpec, list, list, Any], Response]


@dataclass
class Settings:
    """The limits and batching of a server (omoe-serve's options of the same names)."""

    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_queue: int = 1024
    max_items: int = 256
    max_request_bytes: int = 1 << 20
    request_timeout_s: float = 30.0
    max_chars: int = 20_000


class Server:
    """The served models, each with its ModelSpec and MicroBatcher, and the metrics."""

    def __init__(self, models: dict[str, ServedModel], settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.max_batch_size)
        self.specs = {name: ModelSpec(name, model, settings.max_chars)
                      for name, model in models.items()}
        self.batchers = {
            name: MicroBatcher(partial(model.predict, batch_size=settings.max_batch_size),
                               settings.max_batch_size, settings.max_batch_delay_ms / 1000,
                               settings.max_queue, name, self.metrics.batch(name))
            for name, model in models.items()}
        for name, batcher in self.batchers.items():
            self.metrics.watch_queue(name, lambda b=batcher: b.queued)
        self.received = 0  # inference requests that reached a handler

    def spec(self, name: str, version: Optional[str] = None) -> ModelSpec:
        """The model served as `name` (a 404 if none; a 404 for a version other than 1)."""
        if name not in self.specs:
            raise Problem(404, f"no model named {name!r}: this server serves "
                               f"{quoted(self.specs)}")
        if version not in (None, VERSION):
            raise Problem(404, f"model {name!r} has no version {version!r}: only {VERSION!r}")
        return self.specs[name]

    async def answer(self, name: str, request: Request, parse: Parse, render: Render,
                     version: Optional[str] = None) -> Response:
        """Read, check, batch and answer one inference request, within the time limit."""
        started, status = time.perf_counter(), 500
        self.received += 1
        try:
            spec = self.spec(name, version)
            batcher, job = self.batchers[name], None
            try:
                async with asyncio.timeout(self.settings.request_timeout_s):
                    with batcher.arrival():
                        body = await read_body(request, self.settings.max_request_bytes)
                        columns, context = parse(spec, body, request.headers)
                        items, notes = spec.items(columns)
                        job = batcher.submit(items)
                    answers = await job.future
            except TimeoutError:
                if job is not None:
                    batcher.discard(job)
                raise Problem(504, "no answer within the server's --request-timeout-s "
                                   f"{self.settings.request_timeout_s:g} s") from None
            response = render(spec, answers, notes, context)
            status = response.status_code
            return response
        except Problem as e:
            status = e.status
            raise
        finally:
            model = name if name in self.specs else UNKNOWN
            self.metrics.request(model, status, time.perf_counter() - started)

    def parse_v2(self, spec: ModelSpec, body: bytes, headers: Any) -> tuple[list[list], Any]:
        request = parse_infer(body, headers.get(HEADER_LENGTH), spec, self.settings.max_items)
        return request.columns, request

    @staticmethod
    def render_v2(spec: ModelSpec, answers: list, notes: list, request: Any) -> Response:
        body, headers, media_type = infer_response(spec, request, spec.tensors(answers, notes))
        return Response(body, 200, headers, media_type=media_type)

    def parse_plain(self, spec: ModelSpec, body: bytes, headers: Any) -> tuple[list[list], Any]:
        return parse_plain(body, spec, self.settings.max_items), None

    @staticmethod
    def render_plain(spec: ModelSpec, answers: list, notes: list, _: Any) -> Response:
        return JSONResponse({"outputs": [spec.record(a, n) for a, n in zip(answers, notes)]})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is known to exceed `limit` bytes (from its
    Content-Length, or while it streams in)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Problem(413, f"the request body is {declared} bytes, more than the server's "
                           f"--max-request-bytes {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Problem(413, f"the request body is more than the server's --max-request-bytes "
                               f"{limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(models: dict[str, ServedModel], settings: Optional[Settings] = None) -> FastAPI:
    """The application serving `models` (name -> model); its Server is app.state.server."""
    server = Server(models, settings or Settings())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for batcher in server.batchers.values():
            batcher.start()
        yield
        for batcher in server.batchers.values():  # after every accepted request is answered
            await batcher.stop()
        answered = server.metrics.answered()
        logger.info(f"omoe-serve: shut down; answered {sum(answered.values())} of "
                    f"{server.received} inference requests (by status: {answered})")

    app = FastAPI(title="omoe-serve", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.server = server
    _errors(app)
    _routes(app, server)
    return app


def _errors(app: FastAPI) -> None:
    """Every refusal as {"error": message}."""
    @app.exception_handler(Problem)
    async def problem(_: Request, e: Problem) -> JSONResponse:
        return JSONResponse({"error": e.message}, e.status, e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, e.status_code, e.headers)

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        logger.exception("omoe-serve: internal error")
        return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)


def _routes(app: FastAPI, server: Server) -> None:
    """The v2 routes (with and without /versions/1), the plain form and /metrics."""
    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "omoe-serve", "version": __version__,
                "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> dict:
        return {"ready": True}  # models are loaded and warmed up before the port opens

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: Optional[str] = None) -> dict:
        return server.spec(name, version).metadata()

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: Optional[str] = None) -> dict:
        return {"name": server.spec(name, version).name, "ready": True}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: Optional[str] = None) -> Response:
        return await server.answer(name, request, server.parse_v2, server.render_v2, version)

    @app.get("/models")
    async def models() -> dict:
        return {"models": [{"name": name, "kind": SERVERS[spec.model.info.kind][1]}
                           for name, spec in server.specs.items()]}

    @app.post("/models/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        return await server.answer(name, request, server.parse_plain, server.render_plain)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.exposition(),
                        media_type="text/plain; version=0.0.4; charset=utf-8")
