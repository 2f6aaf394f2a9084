"""The OpenAI-compatible part of ``vantage serve``: ``GET /v1/models`` and
``POST /v1/chat/completions``, so that clients written for the OpenAI protocol (the ``openai``
package, LangChain's SQL chains, DB-GPT, Vanna, mlx-lm's clients) can call the model.

How a chat request maps onto a generation:

- **the question** is the text of the last ``user`` message;
- **the schema** is either the ``database`` field (an extra field naming a database the server
  was started with, ``--db-dir``) or the ``CREATE TABLE`` statements found in the ``system``
  (or ``developer``) messages; other text around them is ignored;
- **the answer's content** is the SQL alone (no prose, no code fence);
- **decoding** is the model's configured one (beam search, constraint, execution-guided choice):
  ``temperature`` and ``top_p`` apply only when the extra field ``decoding`` is ``"sample"``;
  ``max_tokens`` caps the generated tokens;
- **rows**: with the extra field ``run: true`` (needs ``database``) the SQL is run read-only and
  the response carries an extra top-level field ``vantage``:
  ``{"sql", "rows", "error", "truncated", "choice", "note", "database"}`` (``rows`` is null
  without ``run``; its cells as on every route: bytes as ``{"$base64": ...}``, non-finite floats
  as ``"Infinity"``, ``"-Infinity"``, ``"NaN"``; ``note`` says when execution-guided choice
  stepped aside for a schema without a database). With the ``openai`` package: ``extra_body={"database": "concerts", "run": True}``,
  then ``completion.model_extra["vantage"]["rows"]``.
- **stream: true** answers with server-sent events in OpenAI's ``chat.completion.chunk`` form,
  ending with ``data: [DONE]``. The SQL is chosen before the first event (a beam search and an
  execution-guided choice need the whole candidates), then sent in pieces whose concatenation is
  the non-streamed content; the last chunk carries ``finish_reason`` and ``vantage``.

The same limits hold as for ``/v1/generate``: body size, admission counting running work, the
time limit with cancellation. Errors on these routes carry OpenAI's
``{"error": {"message", "type", "param", "code"}}`` beside the server's usual ``detail``, so
the ``openai`` package raises them with the message (``NotFoundError``, ``UnprocessableEntityError``, ...).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any, Callable, Literal

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from vantage_core.config import DecodingMode
from vantage_core.inference.request_schema import Name, check_schema_size, schema_from_ddl, utf8_str
from vantage_core.sql.format import formatted_sql

MessageText = utf8_str()


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = "text"
    text: str = Field("", max_length=64000)


class ChatMessage(BaseModel):
    # Clients send more (name, tool_calls, ...): kept out of the way, not refused.
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: MessageText | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content if p.type in ("text", "input_text"))


class ChatRequest(BaseModel):
    """OpenAI's chat-completions request; unknown OpenAI parameters are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    max_tokens: int | None = Field(None, ge=1, le=4096)
    max_completion_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    # Vantage's extra fields (send them with the openai package's extra_body=)
    database: Name | None = Field(None, description="a served database's id")
    run: bool = Field(False, description="run the SQL read-only; rows in the response's `vantage` field")
    decoding: DecodingMode | None = None


_CREATE_TABLE = re.compile(r"\bCREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\b", re.IGNORECASE)


def create_table_statements(text: str) -> str:
    """The ``CREATE TABLE ... ( ... )`` statements in ``text`` (prose around them dropped), one per
    line. Parentheses are balanced outside quotes, so column lists with ``DECIMAL(10, 2)`` or
    ``CHECK (...)`` are kept whole."""
    out = []
    for m in _CREATE_TABLE.finditer(text):
        end = _statement_end(text, m.end())
        if end is not None:
            out.append(text[m.start():end].strip() + ";")
    return "\n".join(out)


def _statement_end(text: str, start: int) -> int | None:
    """The index after the ``)`` closing the first ``(`` from ``start``; None if it never closes."""
    depth, quote = 0, None
    for i in range(start, len(text)):
        c = text[i]
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        elif c == ";" and depth == 0:
            return None  # a statement ended before any column list
    return None


def _question_of(req: ChatRequest) -> str:
    users = [m for m in req.messages if m.role == "user"]
    if not users or not users[-1].text().strip():
        raise HTTPException(422, "messages: no user message with text; the last user message is the question")
    question = users[-1].text().strip()
    if len(question) > 2000:
        raise HTTPException(422, f"messages: the question (last user message) has {len(question)} characters; at most 2000")
    return question


def _sql_pieces(sql: str) -> list[str]:
    """The SQL cut into word-sized pieces (each with the space before it): joined, the SQL exactly."""
    return re.findall(r"\s*\S+", sql) or [sql]


OPENAI_PATHS = ("/v1/models", "/v1/chat/completions")
_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error",
                422: "invalid_request_error", 503: "server_busy", 504: "timeout"}


def _openai_errors(app: FastAPI) -> None:
    """Wrap the app's error handlers: on the OpenAI routes the JSON body also carries OpenAI's
    ``error`` object (message, type, param, code), which OpenAI clients read."""
    from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    defaults = {StarletteHTTPException: http_exception_handler,
                RequestValidationError: request_validation_exception_handler}
    for kind in {*app.exception_handlers, *defaults}:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            continue  # handlers by status code stay as they are
        inner = app.exception_handlers.get(kind, defaults.get(kind))
        if inner is not None:
            app.exception_handlers[kind] = _with_openai_error(inner)


def _with_openai_error(inner: Callable) -> Callable:
    async def handler(request: Any, exc: Exception) -> Any:
        response = await inner(request, exc)
        if request.url.path not in OPENAI_PATHS or not hasattr(response, "body"):
            return response
        try:
            body = json.loads(response.body)
        except ValueError:
            return response
        detail = body.get("detail") if isinstance(body, dict) else None
        message = detail if isinstance(detail, str) else "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in detail or [] if isinstance(e, dict))
        status = response.status_code
        body["error"] = {"message": message or f"HTTP {status}", "type": _ERROR_TYPES.get(status, "api_error"),
                         "param": None, "code": status}
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse(body, status_code=status, headers=headers)

    return handler


def add_openai_routes(app: FastAPI, engine: Any, databases: dict, settings: Any,
                      run_generation: Callable, public_message: Callable[[str | None], str | None]) -> None:
    """Add ``GET /v1/models`` and ``POST /v1/chat/completions`` to the server's ``app``."""
    from vantage_core.inference.engine import json_rows

    _openai_errors(app)

    model_id = engine.config.run.name
    created = int(time.time())

    @app.get("/v1/models")
    def list_models() -> dict:
        """The served model, in OpenAI's model-list form."""
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                            "owned_by": "vantage"}]}

    def schema_args(req: ChatRequest) -> dict:
        if req.database is not None:
            if req.database not in databases:
                raise HTTPException(404, f"database: unknown {req.database!r}; served: "
                                         f"{', '.join(sorted(databases)[:20]) or '(none: start with --db-dir)'}")
            check_schema_size(engine.schema_of(databases[req.database]), settings.max_schema_items,
                              f"database {req.database!r}")
            return {"db_path": databases[req.database], "schema": None}
        if req.run:
            raise HTTPException(422, "run: needs `database` naming a served database (a pasted schema has no rows)")
        ddl = create_table_statements("\n".join(m.text() for m in req.messages if m.role in ("system", "developer")))
        if not ddl:
            raise HTTPException(422, "no schema: put CREATE TABLE statements in a system message, or name a served "
                                     f"database in `database` (served: {', '.join(sorted(databases)[:20]) or 'none'})")
        return {"db_path": None, "schema": schema_from_ddl(ddl, max_items=settings.max_schema_items)}

    def options(req: ChatRequest) -> Any:
        """The model's decoding settings with what the request may change, within the server's limits."""
        overrides: dict[str, Any] = {"decoding": req.decoding}
        if req.decoding == "sample":
            overrides.update(temperature=req.temperature, top_p=req.top_p)
        if req.max_tokens or req.max_completion_tokens:
            overrides["max_new_tokens"] = min(x for x in (req.max_tokens, req.max_completion_tokens) if x)
        opts = engine.options(**overrides)
        return opts.model_copy(update={"beam_size": min(opts.beam_size, settings.max_beam_size),
                                       "max_new_tokens": min(opts.max_new_tokens, settings.max_new_tokens)})

    @app.post("/v1/chat/completions",
              responses={404: {"description": "unknown model or database"}, 413: {"description": "body too large"},
                         422: {"description": "no question or no schema"},
                         503: {"description": "too many requests in flight"}, 504: {"description": "time limit"}})
    async def chat_completions(req: ChatRequest) -> Any:
        """SQL for the last user message, over the schema in the system message or a served
        database; OpenAI's response (or, with ``stream``, its server-sent chunks)."""
        if req.model != model_id:
            raise HTTPException(404, f"model: unknown {req.model!r}; this server serves {model_id!r} (GET /v1/models)")
        question = _question_of(req)
        where = schema_args(req)
        g = await run_generation(question, run=req.run, routing=False,
                                 options=options(req), **where)
        finished = bool(g.candidates) and g.candidates[g.chosen].finished
        sql = formatted_sql(g.sql)
        extra = {"sql": sql, "rows": json_rows(g.rows) if req.run else None, "error": public_message(g.error),
                 "truncated": g.truncated, "choice": g.choice, "note": g.note, "database": req.database}
        reply_id, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        finish = "stop" if finished else "length"
        if req.stream:
            return StreamingResponse(_chunks(reply_id, now, model_id, sql, finish, extra),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return {"id": reply_id, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": sql},
                             "finish_reason": finish, "logprobs": None}],
                "vantage": extra}  # no `usage`: the prompt is not counted in OpenAI's tokens


def _chunks(reply_id: str, created: int, model_id: str, sql: str, finish: str, extra: dict):
    """The server-sent events of a streamed answer: the role, the SQL in pieces, the finish, [DONE]."""
    def event(delta: dict, finish_reason: str | None = None, **more: Any) -> str:
        chunk = {"id": reply_id, "object": "chat.completion.chunk", "created": created, "model": model_id,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}], **more}
        return f"data: {json.dumps(chunk, allow_nan=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    for piece in _sql_pieces(sql):
        yield event({"content": piece})
    yield event({}, finish, vantage=extra)
    yield "data: [DONE]\n\n"
