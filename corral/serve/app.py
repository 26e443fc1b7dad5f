"""The OpenAI-compatible HTTP server: routes, errors, API keys, body limit, SSE streaming, metrics, web page.

Every error a client can cause comes back as OpenAI's body `{"error": {"message", "type", "param", "code"}}` with a
4xx status (FastAPI's own 422 for validation becomes OpenAI's 400). A 5xx means a bug or a failed engine step.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from corral.engine.engine import QueueFullError
from corral.errors import CorralError, InvalidArgumentError
from corral.serve import protocol as P
from corral.serve.errors import ModelNotServedError, ModerationUnavailableError, ParamError
from corral.serve.metrics import Metrics
from corral.serve.service import Service

STATIC = Path(__file__).parent / "static"
PROTECTED = ("/v1/", "/tokenize", "/detokenize")  # /, /static, /health and /metrics stay open
# HTTP metric labels: known routes by name, anything else as "other", so clients cannot grow the label set.
ROUTES = {r: r for r in ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions",
                         "/v1/embeddings", "/v1/moderations", "/tokenize", "/detokenize")}


def error_response(status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    message = message.encode("utf-8", "replace").decode()  # a message quoting bad input still encodes
    body = P.ErrorResponse(error=P.ErrorDetail(message=message, type=type_, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class SSEResponse(StreamingResponse):
    """Streams SSE lines; when the client goes away the generator is cancelled at once (its `finally` frees the
    engine slots), instead of lingering until the next write fails."""

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:
                async def stream() -> None:
                    try:
                        await self.stream_response(send)
                    except OSError:
                        pass
                    tg.cancel_scope.cancel()

                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    tg.cancel_scope.cancel()

                tg.start_soon(stream)
                tg.start_soon(watch)
        finally:
            await self.body_iterator.aclose()


class Guard:
    """ASGI middleware: API keys (constant-time), request body limit (413), HTTP status counts."""

    def __init__(self, app: ASGIApp, keys: list[str], max_body: int, metrics: Metrics):
        self.app, self.keys = app, [k.encode() for k in keys]
        self.max_body, self.metrics = max_body, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        route = ROUTES.get(path) or ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")

        async def counted_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                self.metrics.http.labels(route, str(msg["status"])).inc()
            await send(msg)

        if self.keys and path.startswith(PROTECTED) and not self._authorized(scope):
            await error_response(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                                 "invalid_request_error", code="invalid_api_key",
                                 headers={"WWW-Authenticate": "Bearer"})(scope, receive, counted_send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(scope, receive, counted_send)
            return
        received = [0]

        async def limited_receive() -> Message:  # a chunked body has no content-length to check up front
            msg = await receive()
            if msg["type"] == "http.request":
                received[0] += len(msg.get("body", b""))
                if received[0] > self.max_body:
                    raise StarletteHTTPException(413, self._too_large_msg())
            return msg

        await self.app(scope, limited_receive, counted_send)

    def _authorized(self, scope: Scope) -> bool:
        auth = dict(scope["headers"]).get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        ok = False
        for key in self.keys:  # compare with every key: the time taken does not depend on which one matched
            ok |= hmac.compare_digest(token, key)
        return ok

    def _too_large_msg(self) -> str:
        return f"the request body is larger than this server's limit of {self.max_body} bytes (--max-body-bytes)"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(413, self._too_large_msg(), "invalid_request_error",
                             code="request_too_large")(scope, receive, send)


def create_app(service: Service, metrics: Metrics, api_keys: list[str] | None = None,
               max_body_bytes: int = 8 << 20) -> FastAPI:
    """The FastAPI app for one `Service`; `corral serve` runs it under uvicorn."""
    app = FastAPI(title="corral", version="0.1.0", description="OpenAI-compatible API of a model you own.")
    svc = service

    # --- errors -------------------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            return error_response(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}",
                                  "invalid_request_error")
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        more = f" (and {len(errs) - 1} more problems)" if len(errs) > 1 else ""
        return error_response(400, f"{param or 'body'}: {msg}{more}", "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = "no such route; see /docs for the API" if exc.status_code == 404 else str(exc.detail)
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(exc.status_code)
        return error_response(exc.status_code, msg, "invalid_request_error", code=code,
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(ParamError)
    async def _param(_: Request, exc: ParamError) -> JSONResponse:
        return error_response(400, str(exc), "invalid_request_error", exc.param, exc.code)

    @app.exception_handler(ModelNotServedError)
    async def _model(_: Request, exc: ModelNotServedError) -> JSONResponse:
        return error_response(404, str(exc), "invalid_request_error", "model", "model_not_found")

    @app.exception_handler(ModerationUnavailableError)
    async def _no_guard(_: Request, exc: ModerationUnavailableError) -> JSONResponse:
        return error_response(404, str(exc), "invalid_request_error", code="moderation_unavailable")

    @app.exception_handler(QueueFullError)
    async def _busy(_: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(503, f"the server is at capacity: {exc}", "server_overloaded",
                              code="queue_full", headers={"Retry-After": "1"})

    @app.exception_handler(CorralError)
    async def _corral(_: Request, exc: CorralError) -> JSONResponse:
        status = 400 if isinstance(exc, InvalidArgumentError) else 500
        return error_response(status, str(exc), "invalid_request_error" if status == 400 else "server_error")

    @app.exception_handler(Exception)
    async def _bug(_: Request, exc: Exception) -> JSONResponse:
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", "server_error")

    # --- routes -------------------------------------------------------------------------------------------

    @app.get("/health", include_in_schema=True)
    async def health() -> dict[str, Any]:
        e = svc.engine
        return {"status": "ok", "model": svc.model_id, "running": len(e.running), "waiting": len(e.waiting)}

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=P.ModelList)
    async def models() -> P.ModelList:
        return P.ModelList(data=[P.ModelCard(id=svc.model_id, created=svc.created, max_model_len=svc.max_model_len)])

    @app.get("/v1/models/{model_id:path}", response_model=P.ModelCard)
    async def model(model_id: str) -> P.ModelCard:
        svc.check_model(model_id)
        return P.ModelCard(id=svc.model_id, created=svc.created, max_model_len=svc.max_model_len)

    @app.post("/v1/chat/completions", response_model=P.ChatCompletion)
    async def chat(body: P.ChatCompletionRequest, request: Request) -> Any:
        if body.stream:
            return SSEResponse(await svc.chat_stream(body))
        return await _unless_gone(request, svc.chat(body))

    @app.post("/v1/completions", response_model=P.Completion)
    async def completions(body: P.CompletionRequest, request: Request) -> Any:
        if body.stream:
            return SSEResponse(await svc.complete_stream(body))
        return await _unless_gone(request, svc.complete(body))

    @app.post("/v1/embeddings", response_model=P.EmbeddingList)
    async def embeddings(body: P.EmbeddingRequest) -> P.EmbeddingList:
        """Mean-pooled, L2-normalised last hidden states of the served decoder.

        They place texts the model reads alike near each other: good enough to cluster or deduplicate text of
        the model's own domain, or as features for a small classifier. The decoder was not trained for retrieval,
        so for search use a dedicated embedding model.
        """
        return await svc.embed(body)

    @app.post("/v1/moderations", response_model=P.ModerationResponse)
    async def moderations(body: P.ModerationRequest) -> P.ModerationResponse:
        """OpenAI's moderation endpoint, answered by the server's guard model (`corral serve --guard`).

        `categories` and `category_scores` hold OpenAI's keys (from the Llama Guard categories that correspond)
        and the guard's own codes; `corral` holds its verdict. Without a guard: 404 moderation_unavailable."""
        return await svc.moderate(body)

    @app.post("/tokenize", response_model=P.TokenizeResponse)
    async def tokenize(body: P.TokenizeRequest) -> P.TokenizeResponse:
        return svc.tokenize(body)

    @app.post("/detokenize", response_model=P.DetokenizeResponse)
    async def detokenize(body: P.DetokenizeRequest) -> P.DetokenizeResponse:
        return svc.detokenize(body)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return error_response(404, "the web page is not installed", "invalid_request_error")
        return FileResponse(page)

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    app.add_middleware(Guard, keys=api_keys or [], max_body=max_body_bytes, metrics=metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


ERRORS = {"400": "invalid request (bad JSON or values, context_length_exceeded; content_filter: a shield blocked it)",
          "401": "missing or wrong API key",
          "404": "unknown model (model_not_found) or route", "413": "request body over --max-body-bytes",
          "503": "queue full; retry after Retry-After seconds"}


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's spec, with the statuses this server really sends: its 422 is our 400, and every error is
    OpenAI's body."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for model in (P.ErrorDetail, P.ErrorResponse):
        schemas.setdefault(model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}"))
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            codes = []
            if method == "post":
                codes += ["400", "413"]
            if path.startswith(PROTECTED):
                codes.append("401")
            if path.startswith("/v1/") or method == "post":
                codes += ["404"]
            if path in ("/v1/chat/completions", "/v1/completions"):
                codes.append("503")
            for c in codes:
                responses[c] = {"description": ERRORS[c], **ref}
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = spec
    return spec


async def _unless_gone(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it (and so its engine requests) if the client disconnects first."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                return Response(status_code=499)
    finally:
        if not task.done():
            task.cancel()
