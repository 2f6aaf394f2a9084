"""The HTTP API (FastAPI): ``POST /v1/generate``, ``GET /health``, known databases, a playground,
and the OpenAI-compatible ``GET /v1/models`` and ``POST /v1/chat/completions``
(:mod:`vantage_core.inference.openai_api`).

Limits: at most ``max_concurrency`` requests are admitted at once (waiting or running; the model
itself runs one request at a time), the next ones get 503 at once; a request body over
``max_body_bytes`` gets 413 (counted as it is read, so a chunked body without a Content-Length
is stopped too); a request still unanswered after ``timeout_s`` gets 504, and its generation is
asked to stop at its next step, still counting against the limit until it has; a schema of more
than ``max_schema_items`` tables and columns gets 400 (a request's cost grows with it); a
connection that has not sent a whole request within ``read_timeout_s`` of connecting or of its
last answer is closed (:class:`RequestDeadline`). Bad input gets a 4xx whose ``detail`` says
what was wrong, without echoing the body and without the server's paths (a lone surrogate gets
422, as a NaN does); nothing a client sends can stop the server. Result cells are strict JSON on
every route (:func:`vantage_core.inference.engine.json_cell`).
"""

from __future__ import annotations

import asyncio
import inspect
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h11
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model
from uvicorn.protocols.http.h11_impl import H11Protocol

from vantage_core.config import InferenceConfig
from vantage_core.inference.engine import Candidate, Generation
from vantage_core.inference.request_schema import (DDL, ConstraintName, Name, SchemaIn, check_schema_size,
                                                   dataclass_model, option_fields, schema_from_ddl)
from vantage_core.sql.schema import Schema
from vantage_core.errors import ConfigError, DataError, VantageError


@dataclass
class ServeSettings:
    db_dirs: list[str] = field(default_factory=list)
    db_urls: list[str] = field(default_factory=list)  # database URLs (or NAME=URL), `vantage serve --db`
    notes: list[str] = field(default_factory=list)  # NAME=FILE: a served database's notes file, `vantage serve --notes`
    max_concurrency: int = 4
    timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024
    max_beam_size: int = 8
    max_new_tokens: int = 256
    # tables and columns a request's schema may have: a request's time and memory grow with them
    # (Spider's largest database has 379)
    max_schema_items: int = 1000
    # seconds a connection may take to send a whole request (from connecting, or from its last
    # answer); a stalled or idle connection is closed then
    read_timeout_s: float = 10.0


# ---------------------------------------------------------------------------- request / response

class QuestionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)
    db_id: Name | None = None
    schema_: SchemaIn | None = Field(None, alias="schema")
    schema_sql: DDL | None = None
    run: bool = False
    routing: bool = False


# The inference options a request may set, in the config's types and bounds, within these limits.
REQUEST_OPTIONS = ("decoding", "beam_size", "max_new_tokens", "temperature", "top_p", "constraint",
                   "execution_guided", "require_rows")
REQUEST_LIMITS = {"beam_size": {"le": 64}, "max_new_tokens": {"le": 4096}, "temperature": {"le": 10}}

GenerateRequest = create_model(
    "GenerateRequest", __base__=QuestionIn,
    __doc__="""A question and a database: a known ``db_id``, a ``schema`` object or ``schema_sql``
    (CREATE TABLE statements). Unset decoding fields take the model's configured values.""",
    **option_fields(InferenceConfig, REQUEST_OPTIONS, REQUEST_LIMITS, replaced={
        "constraint": (ConstraintName | None, Field(None, description="a registered constraint, or 'none'"))}))

# The answer is a Generation as JSON (Generation.to_json): a candidate's log-probability is None
# where it is not finite; cells as JSON: bytes as {"$base64": "..."}, non-finite floats as
# "Infinity", "-Infinity", "NaN".
CandidateOut = dataclass_model(Candidate, "CandidateOut", types={"logprob": float | None})
GenerateResponse = dataclass_model(Generation, "GenerateResponse", types={"candidates": list[CandidateOut]},
                                   required=("seconds", "n_tokens"))  # filled in on every answer


def find_databases(db_dirs: list[str], db_urls: list[str] = ()) -> dict[str, Path | str]:
    """db_id -> SQLite file, from folders laid out as ``<db_id>/<db_id>.sqlite`` or ``<db_id>.sqlite``,
    and db_id -> URL for each database URL (``NAME=URL``, or the URL alone: then its database's
    name or file stem is the id)."""
    from vantage_core.sql.database import database_id

    out: dict[str, Path | str] = {}
    for given in db_urls:
        name, url = database_id(given)
        if name in out:
            raise DataError(f"--db {given}: a database named {name!r} is already given; write NAME=URL to tell them apart")
        out[name] = url
    for d in db_dirs:
        root = Path(d)
        for p in sorted(root.glob("*/*.sqlite")) + sorted(root.glob("*.sqlite")):
            if p.stem == p.parent.name or p.parent == root:
                out.setdefault(p.stem, p)
    return out


def use_notes(engine: Any, databases: dict, given: list[str]) -> None:
    """Give each ``NAME=FILE`` of ``given`` to the served database NAME, then read and check the
    notes of every database that has some (given, or beside it): a mistake in one stops the
    server before it serves, in one line naming the file, line and field."""
    from vantage_core.data.notes import notes_beside

    for text in given:
        name, sep, file = text.partition("=")
        if not sep or name not in databases:
            raise DataError(f"--notes {text}: expected NAME=FILE, NAME one of the served databases: "
                            f"{', '.join(sorted(databases)[:20]) or '(none)'}")
        if not Path(file).is_file():
            raise DataError(f"--notes {text}: no such notes file {file}")
        engine.notes_files[str(databases[name])] = file
    for db in databases.values():
        if str(db) in engine.notes_files or notes_beside(db):
            engine.schema_of(db)


def request_database(req: GenerateRequest, engine: Any, databases: dict, max_items: int) -> tuple[Any, Schema | None]:
    """``(db_path, None)`` for a known ``db_id``, ``(None, schema)`` for a pasted one; 422 unless
    exactly one is given, 404 for an unknown id, 400 for a schema over ``max_items``."""
    given = sum(x is not None for x in (req.db_id, req.schema_, req.schema_sql))
    if given != 1:
        raise HTTPException(422, "give exactly one of db_id, schema, schema_sql")
    if req.db_id is not None:
        if req.db_id not in databases:
            raise HTTPException(404, f"unknown db_id {req.db_id!r}; known: {', '.join(sorted(databases)[:20]) or '(none)'}")
        check_schema_size(engine.schema_of(databases[req.db_id]), max_items, f"db_id {req.db_id!r}")
        return databases[req.db_id], None
    if req.schema_ is not None:
        schema = req.schema_.to_schema()
        check_schema_size(schema, max_items, "schema")
        return None, schema
    return None, schema_from_ddl(req.schema_sql, max_items=max_items)


# ---------------------------------------------------------------------------- limits

class BodyLimit:
    """ASGI middleware: reads at most ``max_bytes`` of a request body, counting what arrives
    (a chunked body has no Content-Length to trust), and answers 413 past it; the app then reads
    the body from what was kept."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal_from_headers(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break  # the client left
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._too_big()(scope, receive, send)
                return
            if not message.get("more_body"):
                break
        await self.app(scope, self._replay(messages, receive), send)

    def _too_big(self) -> JSONResponse:
        return JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413,
                            headers={"Connection": "close"})

    def _refusal_from_headers(self, scope: dict) -> JSONResponse | None:
        """413 at once when the declared length is over the limit; 400 when it is no number."""
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    return JSONResponse({"detail": "Content-Length is not a number"}, status_code=400)
                return self._too_big() if too_big else None
        return None

    @staticmethod
    def _replay(messages: list[dict], receive: Callable) -> Callable:
        pending = list(messages)

        async def replay() -> dict:
            return pending.pop(0) if pending else await receive()

        return replay


class Admission:
    """How many requests hold a slot: from admission until their work has really ended, so a
    request answered 504 still counts while its generation runs (the limit caps work, not
    waiting clients)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.running = 0
        self._lock = threading.Lock()  # released from the generation's own thread

    def try_enter(self) -> bool:
        with self._lock:
            if self.running >= self.limit:
                return False
            self.running += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.running -= 1


async def run_in_own_thread(func: Callable[[], Any], on_exit: Callable[[], None]) -> Any:
    """``func()`` in a new thread; ``on_exit()`` runs in that thread when ``func`` has returned
    or raised, even after the awaiting request was cancelled (timed out). A thread of its own,
    not a pool's: work queued in a pool and cancelled before it starts would never run
    ``on_exit``."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def settle(outcome: tuple[bool, Any]) -> None:
        if not future.done():
            ok, value = outcome
            future.set_result(value) if ok else future.set_exception(value)

    def target() -> None:
        try:
            outcome = (True, func())
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
            outcome = (False, exc)
        finally:
            on_exit()
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:
            pass  # the server stopped meanwhile: nobody waits for the answer

    threading.Thread(target=target, name="vantage-generate", daemon=True).start()
    return await future


class RequestDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request to arrive whole: a connection that
    has not sent a complete request (line, headers and body) within ``timeout_keep_alive``
    seconds of connecting, or of its last answer, is closed. (uvicorn's own keep-alive timer
    stops at the first byte received, so a partial request held its connection forever.) A
    request received whole is never cut: its answer may take as long as the app allows."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_deadline()
        super().connection_lost(exc)

    def _arm_deadline(self) -> None:
        self._disarm_deadline()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._deadline_passed)

    def _disarm_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        receiving = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)  # nothing yet, or part of a request
        if receiving and not self.transport.is_closing():
            self.transport.close()


def server_config(app: FastAPI, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
                  log_level: str = "info") -> uvicorn.Config:
    """uvicorn's settings for serving ``app``: connections that stall are closed after
    ``settings.read_timeout_s`` (:class:`RequestDeadline`)."""
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=RequestDeadline,
                          timeout_keep_alive=settings.read_timeout_s)


def run_server(app: FastAPI, settings: ServeSettings, host: str, port: int) -> None:
    """Serve ``app`` until interrupted."""
    uvicorn.Server(server_config(app, settings, host, port)).run()


def accepts_cancel(generate: Callable) -> bool:
    """Whether ``generate`` takes ``cancel=`` (a threading.Event checked between decoding steps)."""
    try:
        return "cancel" in inspect.signature(generate).parameters
    except (TypeError, ValueError):
        return False


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:[^\s'\"/:,;()]+/)+([^\s'\"/:,;()]*)")


def public_message(text: str | None) -> str | None:
    """``text`` with every absolute path cut to its last part: the server's folders stay its own."""
    return None if text is None else _ABSOLUTE_PATH.sub(lambda m: m.group(1) or "(path)", text)


def public_validation_errors(errors: list[dict]) -> list[dict]:
    """Pydantic's errors without the input they saw (never echo a request body back; a NaN
    there cannot even be written as JSON), each field name and message cut short."""
    out = []
    for e in errors:
        loc = [part if isinstance(part, int) else str(part)[:64] for part in e.get("loc", ())]
        out.append({"loc": loc, "msg": str(e.get("msg", ""))[:300], "type": str(e.get("type", ""))})
    return out


def folder_name(folder: str | None) -> str | None:
    """The last part of a folder's path (a checkpoint's ``best`` with its run: ``run/checkpoints/best``)."""
    if not folder:
        return None
    parts = Path(folder).parts
    return "/".join(parts[-3:]) if len(parts) >= 3 and parts[-2] == "checkpoints" else Path(folder).name


# ---------------------------------------------------------------------------- the app

def create_app(model: Any, settings: ServeSettings | None = None, learner: Any = None) -> FastAPI:
    """The API for ``model`` (a model folder path, or a loaded :class:`Engine`). ``learner``
    (a :class:`~vantage_core.inference.adapt_routes.Learner`, or None: adapting is off) saves
    corrected pairs and adapts the model to a served database."""
    from vantage_core.inference.adapt_routes import add_adapt_routes
    from vantage_core.inference.engine import Engine
    from vantage_core.inference.openai_api import add_openai_routes
    from vantage_core.inference.playground import mount_playground

    settings = settings or ServeSettings()
    engine: Engine = model if isinstance(model, Engine) else Engine.load(model)
    databases = find_databases(settings.db_dirs, settings.db_urls)
    use_notes(engine, databases, settings.notes)
    app = FastAPI(title="Vantage text-to-SQL", version="1",
                  description="Questions in, SQL out, from a Mixture-of-Experts model.")
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    add_error_handlers(app)
    models = ServedModels(engine)
    run_generation = LimitedGeneration(models, settings)
    add_database_routes(app, models, databases, settings, run_generation)
    add_generate_route(app, engine, databases, settings, run_generation)
    add_openai_routes(app, engine, databases, settings, run_generation, public_message)
    add_adapt_routes(app, models, databases, learner, public_message)
    mount_playground(app)  # the page at /, its files under /playground/ (after the API routes)
    return app


class ServedModels:
    """The model that answers each database: the served one, or the one adapted to that database
    (from the playground). Every model shares the served engine's lock: MLX work in this process
    stays one request at a time."""

    def __init__(self, engine: Any):
        self.engine = engine  # the served model
        self._adapted: dict[str, Any] = {}  # database path or URL -> the engine adapted to it

    def for_database(self, db_path: Any) -> Any:
        """The engine that answers questions on ``db_path`` (None: a pasted schema)."""
        return self._adapted.get(str(db_path), self.engine) if db_path is not None else self.engine

    def adapted_to(self) -> list[str]:
        """The databases (paths or URLs) answered by an adapted model."""
        return sorted(self._adapted)

    def use_adapted(self, db_path: Any, folder: str | Path) -> None:
        """Answer ``db_path`` with the model in ``folder`` from now on (requests already running
        finish on the model they started with); loaded under the shared lock."""
        from vantage_core.inference.engine import Engine

        with self.engine.lock:
            adapted = Engine.load(folder)
        adapted.lock = self.engine.lock
        adapted.notes_files = self.engine.notes_files  # the served databases' notes, as given
        self._adapted[str(db_path)] = adapted


def add_error_handlers(app: FastAPI) -> None:
    """A :class:`VantageError` is a 400 and an invalid request a 422, each with a message that
    shows no path of the server's and no input back."""

    @app.exception_handler(VantageError)
    async def vantage_error(request: Request, exc: VantageError):
        return JSONResponse({"detail": public_message(str(exc))}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": public_validation_errors(exc.errors())}, status_code=422)


class LimitedGeneration:
    """Generation by the served models under the server's limits, counting what it served and
    turned away."""

    def __init__(self, models: ServedModels, settings: ServeSettings):
        self.models, self.settings = models, settings
        self.admission = Admission(settings.max_concurrency)
        self.served = 0
        self.rejected = 0

    async def __call__(self, question: str, **kwargs: Any) -> Any:
        """``generate(question, **kwargs)`` of the engine that answers ``kwargs["db_path"]``
        under the server's limits: a slot held until the
        work has really ended (503 when none is free), the time limit (504), then cancellation."""
        if not self.admission.try_enter():
            self.rejected += 1
            raise HTTPException(503, f"busy: {self.settings.max_concurrency} requests in flight; retry later",
                                headers={"Retry-After": "1"})
        cancel = threading.Event()
        generate = self.models.for_database(kwargs.get("db_path")).generate
        if accepts_cancel(generate):
            kwargs["cancel"] = cancel
        try:
            g = await asyncio.wait_for(run_in_own_thread(lambda: generate(question, **kwargs), self.admission.leave),
                                       timeout=self.settings.timeout_s)
        except asyncio.TimeoutError:
            # The client is answered now; the generation stops at its next step (its slot is
            # given back when it has).
            cancel.set()
            raise HTTPException(504, f"no answer within {self.settings.timeout_s:g} s") from None
        self.served += 1
        return g


def add_database_routes(app: FastAPI, models: ServedModels, databases: dict, settings: ServeSettings,
                        run_generation: LimitedGeneration) -> None:
    """``/health`` and the known databases with their schemas."""
    engine = models.engine

    @app.get("/health")
    def health() -> dict:
        """Liveness, the model's folder name (never the server's path to it), the load, and
        whether the playground may adapt the model to a database (``adapt``; ``adapted``: the
        databases answered by an adapted model)."""
        adapted = set(models.adapted_to())
        return {"status": "ok", "model": folder_name(engine.info.get("folder")),
                "adapt": app.state.adapt_enabled,
                "adapted": sorted(name for name, db in databases.items() if str(db) in adapted),
                "ensemble": [folder_name(f) for f in engine.info["ensemble"]] if engine.info.get("ensemble") else None,
                "quantization": engine.info.get("quantization"),
                "databases": len(databases), "in_flight": run_generation.admission.running,
                "served": run_generation.served, "rejected_busy": run_generation.rejected,
                "max_concurrency": settings.max_concurrency}

    @app.get("/v1/databases")
    def list_databases() -> list[str]:
        """The ids of the databases the server knows."""
        return sorted(databases)

    @app.get("/v1/databases/{db_id}/schema")
    def database_schema(db_id: str) -> dict:
        """A known database's schema (tables, columns, keys)."""
        if db_id not in databases:
            raise HTTPException(404, f"unknown db_id {db_id!r}; GET /v1/databases lists the known ones")
        return engine.schema_of(databases[db_id]).to_dict()


def add_generate_route(app: FastAPI, engine: Any, databases: dict, settings: ServeSettings,
                       run_generation: LimitedGeneration) -> None:
    """``POST /v1/generate``."""

    @app.post("/v1/generate", response_model=GenerateResponse,
              responses={400: {"description": "the request cannot be answered as asked"},
                         404: {"description": "unknown db_id"}, 413: {"description": "body too large"},
                         503: {"description": "too many requests in flight"}, 504: {"description": "time limit"}})
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """SQL for a question, with the candidates and, with ``run``, the rows."""
        db_path, schema = request_database(req, engine, databases, settings.max_schema_items)
        if (req.run or req.execution_guided) and db_path is None:
            raise HTTPException(422, "run and execution_guided need a known db_id (a pasted schema has no rows)")
        g = await run_generation(req.question, db_path=db_path, schema=schema, run=req.run,
                                 routing=req.routing, options=request_options(req, engine, settings))
        return generate_response(g)


def request_options(req: GenerateRequest, engine: Any, settings: ServeSettings) -> Any:
    """The inference options a request asks for, within the server's limits (422 past them or
    for a constraint that does not fit the model)."""
    if req.beam_size is not None and req.beam_size > settings.max_beam_size:
        raise HTTPException(422, f"beam_size {req.beam_size} over this server's limit {settings.max_beam_size}")
    if req.max_new_tokens is not None and req.max_new_tokens > settings.max_new_tokens:
        raise HTTPException(422, f"max_new_tokens {req.max_new_tokens} over this server's limit {settings.max_new_tokens}")
    if req.constraint is not None and req.constraint != "none":
        try:
            engine.check_constraint(req.constraint)
        except ConfigError as exc:
            raise HTTPException(422, str(exc)) from None
    overrides = {k: getattr(req, k) for k in REQUEST_OPTIONS if k != "constraint"}
    if req.constraint is not None:
        overrides["constraint"] = "none" if req.constraint == "none" else {"name": req.constraint}
    opts = engine.options(**overrides)
    if opts.beam_size > settings.max_beam_size or opts.max_new_tokens > settings.max_new_tokens:
        opts = opts.model_copy(update={"beam_size": min(opts.beam_size, settings.max_beam_size),
                                       "max_new_tokens": min(opts.max_new_tokens, settings.max_new_tokens)})
    return opts


def generate_response(g: Any) -> GenerateResponse:
    """A generation as the API answers it, its error messages without the server's paths."""
    out = g.to_json()
    candidates = [{**c, "error": public_message(c["error"])} for c in out["candidates"]]
    return GenerateResponse(**{**out, "candidates": candidates, "error": public_message(g.error)})
