"""The HTTP side: a Starlette app speaking the OpenAI API over the engine, served by uvicorn.

Every request is checked first (`Guard`, plain ASGI): the Bearer key when one is set, and the body's size.
Handlers parse the body (glmcore.serve.openai_api), find the model in the registry, submit a `Request` to the
engine and hand its tokens back, whole or as server-sent events (sse-starlette, which also notices a client
that went away: its request is cancelled and its row freed at the next step). Every refusal is the API's error
JSON; anything unexpected is logged with its traceback on the server and answered with a sentence. When the
server stops, every open stream ends with an event carrying an `error` object (the `openai` client raises
APIError, rather than returning a quietly cut answer), and every answer still being written gets a 503.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Callable

import anyio
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from glmcore.errors import GlmError
from glmcore.models import family_of
from glmcore.serve import openai_api as api
from glmcore.serve.batching import STOPPED, Engine, EngineStopped, QueueFull, Request, RequestTooLong
from glmcore.serve.registry import ModelRegistry, UnknownModel

log = logging.getLogger("glmcore.serve")

STOP_GRACE_S = 3.0
"""How long an open stream has to send its last event once the server stops (uvicorn waits 5 s for all)."""


def error_response(
    status: int, message: str, kind: str, *, param=None, code=None, headers=None
) -> JSONResponse:
    return JSONResponse(
        api.error_body(message, kind, param=param, code=code), status_code=status, headers=headers
    )


class BodyTooLarge(GlmError):
    """A body sent without a Content-Length that grew past the limit."""


class Guard:
    """The key on every request (loopback too: every local user can reach a port) and the body's size."""

    def __init__(self, app, *, key: str | None, max_request_bytes: int) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode() if key else None
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.expected is not None and not hmac.compare_digest(
            headers.get(b"authorization", b""), self.expected
        ):
            given = b"authorization" in headers
            message = (
                "The API key is wrong."
                if given
                else "This server needs an API key: send it as a Bearer token."
            )
            response = error_response(401, message, "invalid_request_error", code="invalid_api_key")
            return await response(scope, receive, send)
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_request_bytes:
            response = error_response(
                413,
                f"The request body is larger than this server takes ({self.max_request_bytes} bytes).",
                "invalid_request_error",
            )
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class Service:
    """The endpoints over one engine, registry and tokenizer; `on_request` records each answered request."""

    def __init__(
        self,
        engine: Engine,
        registry: ModelRegistry,
        *,
        max_request_bytes: int,
        on_request: Callable[[dict], None] | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.tokenizer = engine.tokenizer
        self.family = engine.family
        self.family_title = family_of(engine.model).title
        self.max_request_bytes = max_request_bytes
        self.on_request = on_request or (lambda record: None)

    def app(self, key: str | None) -> Guard:
        routes = [
            Route("/v1/models", self.list_models, methods=["GET"]),
            Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
        ]
        handlers = {HTTPException: self._http_error, Exception: self._unexpected}
        starlette = Starlette(routes=routes, exception_handlers=handlers)
        return Guard(starlette, key=key, max_request_bytes=self.max_request_bytes)

    # errors

    async def _http_error(self, request: HttpRequest, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return error_response(
                404, f"There is no {request.url.path} here.", "invalid_request_error", code="unknown_url"
            )
        return error_response(error.status_code, str(error.detail), "invalid_request_error")

    async def _unexpected(self, request: HttpRequest, error: Exception) -> JSONResponse:
        log.exception("unexpected error answering %s", request.url.path)
        return error_response(500, "The server failed to answer; its log says why.", "server_error")

    def _refusal(self, error: GlmError) -> JSONResponse:
        if isinstance(error, UnknownModel):
            return error_response(
                404, str(error), "invalid_request_error", param="model", code="model_not_found"
            )
        if isinstance(error, api.BadRequest):
            return error_response(400, str(error), "invalid_request_error", param=error.param)
        if isinstance(error, RequestTooLong):
            return error_response(
                400, str(error), "invalid_request_error", param="max_tokens", code="context_length_exceeded"
            )
        if isinstance(error, QueueFull):
            headers = {"Retry-After": str(error.retry_after)}
            return error_response(429, str(error), "rate_limit_error", headers=headers)
        if isinstance(error, BodyTooLarge):
            return error_response(413, str(error), "invalid_request_error")
        if isinstance(error, EngineStopped):
            return error_response(503, str(error), "server_error")
        return error_response(400, str(error), "invalid_request_error")

    # endpoints

    async def list_models(self, request: HttpRequest) -> JSONResponse:
        models = await asyncio.to_thread(self.registry.refresh)
        return JSONResponse(api.model_list(models))

    async def get_model(self, request: HttpRequest) -> JSONResponse:
        try:
            served = await asyncio.to_thread(self.registry.find, request.path_params["model_id"])
        except GlmError as error:
            return self._refusal(error)
        return JSONResponse(api.model_list([served])["data"][0])

    async def chat_completions(self, request: HttpRequest) -> Response:
        try:
            body = api.parse(api.ChatCompletionRequest, await self._body(request))
            prompt = api.request_prompt(self.family, self.tokenizer, body, self.family_title)
            return await self._generate(request, body, prompt, chat=True)
        except GlmError as error:
            return self._refusal(error)

    async def completions(self, request: HttpRequest) -> Response:
        try:
            body = api.parse(api.CompletionRequest, await self._body(request))
            prompt = self.tokenizer.encode(body.text)
            return await self._generate(request, body, prompt, chat=False)
        except GlmError as error:
            return self._refusal(error)

    async def _body(self, request: HttpRequest) -> bytes:
        """The body, refused past the size limit even when sent without a Content-Length."""
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_request_bytes:
                raise BodyTooLarge(
                    f"The request body is larger than this server takes ({self.max_request_bytes} bytes)."
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def _generate(self, http: HttpRequest, body, prompt: list[int], *, chat: bool) -> Response:
        served = await asyncio.to_thread(self.registry.find, body.model)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def deliver(kind: str, value: object) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (kind, value))

        budget = body.answer_budget
        if budget is None:  # chat without max_tokens: whatever room the row has left
            prefix = await asyncio.to_thread(self.engine.prefix_length, served.prefix)
            budget = max(1, self.engine.capacity - prefix - len(prompt))
        request = Request(prompt, served.prefix, budget, deliver, body.sampling(), adapter=served.adapter)
        await asyncio.to_thread(self.engine.submit, request)
        tools = api.served_tools(body) if chat else None
        chat_prompt = prompt if chat else None
        if tools:
            answer = api.ToolAnswer(self.tokenizer, self.family, body.stops, tools, prompt=chat_prompt)
        else:
            answer = api.AnswerText(self.tokenizer, self.family, body.stops, clean=chat, prompt=chat_prompt)
        record = {"model": served.id, "endpoint": "chat" if chat else "completions", "stream": body.stream}
        if body.stream:
            stopping = anyio.Event()
            return EventSourceResponse(
                self._stream(request, answer, events, body, chat, record, stopping),
                ping=15,
                send_timeout=60,
                shutdown_event=stopping,
                shutdown_grace_period=STOP_GRACE_S,
            )
        return await self._whole(http, request, answer, events, body, chat, record)

    async def _next(self, request: Request, answer: api.AnswerText, events: asyncio.Queue):
        """The next (text delta, finish reason or None) of a request; a stop string cancels it in the engine."""
        kind, value = await events.get()
        if kind == "token":
            delta = answer.add(value)
            if answer.stopped:
                request.cancel()
                return delta, "stop"
            return delta, None
        if kind == "error":
            raise value
        text = answer.finish()
        if answer.parsed is not None:
            return text, "tool_calls"
        return text, "stop" if value == "stop" else value

    async def _whole(self, http, request, answer, events, body, chat, record) -> Response:
        response_id = api.new_id("chatcmpl" if chat else "cmpl")
        text, finish = "", None
        try:
            while finish is None:
                try:
                    delta, finish = await asyncio.wait_for(self._next(request, answer, events), timeout=1.0)
                except TimeoutError:
                    if await http.is_disconnected():
                        request.cancel()
                        self._record(request, record, "cancelled")
                        return Response(status_code=499)
                    continue
                text += delta
        except GlmError as error:
            self._record(request, record, "error")
            return error_response(503 if isinstance(error, EngineStopped) else 500, str(error), "server_error")
        usage = api.usage(len(request.prompt_ids), request.generated, request.reused_tokens)
        self._record(request, record, finish)
        if chat:
            call = answer.parsed.call if finish == "tool_calls" else None
            reply = answer.reply(text)
            return JSONResponse(
                api.chat_response(response_id, body.model, reply.answer, finish, usage, call, reply.reasoning)
            )
        return JSONResponse(api.completion_response(response_id, body.model, text, finish, usage))

    async def _stream(self, request, answer, events, body, chat, record, stopping: anyio.Event):
        response_id = api.new_id("chatcmpl" if chat else "cmpl")
        finish = "cancelled"

        async def tell_when_stopping() -> None:
            await stopping.wait()
            events.put_nowait(("error", EngineStopped(STOPPED)))

        watcher = asyncio.create_task(tell_when_stopping())
        parts, streamed = answer.reply_stream(), ""
        try:
            if chat:
                yield json.dumps(
                    api.chat_chunk(response_id, body.model, {"role": "assistant", "content": ""}, None)
                )
            while True:
                try:
                    delta, finish_now = await self._next(request, answer, events)
                except GlmError as error:
                    finish = "error"
                    yield json.dumps(api.error_body(str(error), "server_error"))
                    return
                if delta:
                    if chat:
                        streamed += delta
                        reasoning, content = parts.advance(streamed)
                        for field, text in (("reasoning_content", reasoning), ("content", content)):
                            if text:
                                yield json.dumps(api.chat_chunk(response_id, body.model, {field: text}, None))
                    else:
                        yield json.dumps(api.completion_response(response_id, body.model, delta, None, None))
                if finish_now is not None:
                    finish = finish_now
                    break
            if finish == "tool_calls":
                call = {"index": 0, **api.tool_call_json(answer.parsed.call)}
                yield json.dumps(api.chat_chunk(response_id, body.model, {"tool_calls": [call]}, None))
            if chat:
                yield json.dumps(api.chat_chunk(response_id, body.model, {}, finish))
            else:
                yield json.dumps(api.completion_response(response_id, body.model, "", finish, None))
            if body.stream_options and body.stream_options.include_usage:
                usage = api.usage(len(request.prompt_ids), request.generated, request.reused_tokens)
                chunk = api.chat_chunk(response_id, body.model, {}, None, usage)
                if not chat:
                    chunk["object"] = "text_completion"
                yield json.dumps(chunk)
            yield "[DONE]"
        finally:  # also when the client went away: sse-starlette cancels this generator
            watcher.cancel()
            request.cancel()
            self._record(request, record, finish)

    def _record(self, request: Request, record: dict, finish: str) -> None:
        now = time.monotonic()
        seconds = now - request.submitted
        first = request.first_token_at
        decoding = now - first if first is not None else 0.0
        self.on_request(
            {
                **record,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "prompt_tokens": len(request.prompt_ids),
                "cached_tokens": request.reused_tokens,
                "completion_tokens": request.generated,
                "seconds": round(seconds, 3),
                "first_token_s": round(first - request.submitted, 3) if first is not None else None,
                "tokens_per_s": round(request.generated / decoding, 1) if decoding > 0 else None,
                "batch": request.batch,
                "finish": finish,
            }
        )
