"""The HTTP API (FastAPI): ``POST /v1/generate``, ``GET /health``, known databases, a playground.

Limits: at most ``max_concurrency`` requests are admitted at once (waiting or running; the model
itself runs one request at a time), the next ones get 503 at once; a request body over
``max_body_bytes`` gets 413; a request still unanswered after ``timeout_s`` gets 504. Bad input
gets a 4xx whose ``detail`` says what was wrong; nothing a client sends can stop the server.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from vantage_core.data.example import Column, ForeignKey, Schema, Table
from vantage_core.errors import VantageError



@dataclass
class ServeSettings:
    db_dirs: list[str] = field(default_factory=list)
    max_concurrency: int = 4
    timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024
    max_beam_size: int = 8
    max_new_tokens: int = 256


# ---------------------------------------------------------------------------- request / response

class ColumnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    type: str = Field("text", max_length=32)


class TableIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    columns: list[ColumnIn] = Field(min_length=1, max_length=256)
    primary_keys: list[str] = Field(default_factory=list, max_length=16)


class SchemaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    db_id: str = Field("request", max_length=128)
    tables: list[TableIn] = Field(min_length=1, max_length=128)

    def to_schema(self) -> Schema:
        return Schema(self.db_id, [Table(t.name, [Column(c.name, c.type) for c in t.columns],
                                         primary_keys=list(t.primary_keys)) for t in self.tables])


class GenerateRequest(BaseModel):
    """A question and a database: a known ``db_id``, a ``schema`` object or ``schema_sql``
    (CREATE TABLE statements). Unset decoding fields take the model's configured values."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)
    db_id: str | None = Field(None, min_length=1, max_length=128)
    schema_: SchemaIn | None = Field(None, alias="schema")
    schema_sql: str | None = Field(None, min_length=1, max_length=32000)
    run: bool = False
    routing: bool = False
    decoding: Literal["greedy", "beam", "sample"] | None = None
    beam_size: int | None = Field(None, ge=1, le=64)
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0, le=10)
    top_p: float | None = Field(None, gt=0, le=1)
    constraint: str | None = Field(None, max_length=64, description="a registered constraint, or 'none'")
    execution_guided: bool | None = None
    require_rows: bool | None = None


class CandidateOut(BaseModel):
    sql: str
    logprob: float
    finished: bool
    executed: bool = False
    ok: bool | None = None
    n_rows: int | None = None
    error: str | None = None


class GenerateResponse(BaseModel):
    sql: str
    candidates: list[CandidateOut]
    chosen: int
    rows: list[list[Any]] | None = None
    error: str | None = None
    truncated: bool = False
    tokens: list[str] = []
    routing: list[list[dict[str, Any]]] | None = None
    seconds: float
    n_tokens: int


def schema_from_ddl(ddl: str, db_id: str = "request") -> Schema:
    """A schema from CREATE TABLE statements (parsed with sqlglot, SQLite dialect)."""
    import sqlglot
    from sqlglot import exp

    from vantage_core.data.schemas import coarse_type
    from vantage_core.errors import DataError

    try:
        statements = [s for s in sqlglot.parse(ddl, read="sqlite") if s is not None]
    except sqlglot.errors.SqlglotError as exc:
        raise DataError(f"schema_sql: not valid SQL: {str(exc).splitlines()[0]}") from None
    tables, fks = [], []
    for st in statements:
        if not isinstance(st, exp.Create) or not isinstance(st.this, exp.Schema):
            raise DataError(f"schema_sql: only CREATE TABLE statements are accepted, got: {st.sql()[:80]!r}")
        name = st.this.this.name
        cols, pks = [], []
        for d in st.this.expressions:
            if isinstance(d, exp.ColumnDef):
                kind = d.args.get("kind")
                cols.append(Column(d.name, coarse_type(kind.sql() if kind else "")))
                if any(isinstance(c.kind, exp.PrimaryKeyColumnConstraint) for c in d.constraints):
                    pks.append(d.name)
            elif isinstance(d, exp.ForeignKey):
                ref = d.args.get("reference")
                if ref is not None and isinstance(ref.this, exp.Schema):
                    for src, dst in zip(d.expressions, ref.this.expressions):
                        fks.append(ForeignKey(name, src.name, ref.this.this.name, dst.name))
        if not cols:
            raise DataError(f"schema_sql: table {name!r} has no columns")
        tables.append(Table(name, cols, primary_keys=pks))
    if not tables:
        raise DataError("schema_sql: no CREATE TABLE statement")
    return Schema(db_id, tables, fks)


def find_databases(db_dirs: list[str]) -> dict[str, Path]:
    """db_id -> SQLite file, from folders laid out as ``<db_id>/<db_id>.sqlite`` or ``<db_id>.sqlite``."""
    out: dict[str, Path] = {}
    for d in db_dirs:
        root = Path(d)
        for p in sorted(root.glob("*/*.sqlite")) + sorted(root.glob("*.sqlite")):
            if p.stem == p.parent.name or p.parent == root:
                out.setdefault(p.stem, p)
    return out


# ---------------------------------------------------------------------------- the app

def create_app(model: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The API for ``model`` (a model folder path, or a loaded :class:`Engine`)."""
    from vantage_core.inference.engine import Engine, load_engine

    settings = settings or ServeSettings()
    engine: Engine = model if isinstance(model, Engine) else load_engine(model)
    databases = find_databases(settings.db_dirs)
    app = FastAPI(title="Vantage text-to-SQL", version="1",
                  description="Questions in, SQL out, from a Mixture-of-Experts model.")
    state = {"admitted": 0, "served": 0, "rejected": 0}

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None:
            try:
                too_big = int(length) > settings.max_body_bytes
            except ValueError:
                return JSONResponse({"detail": "Content-Length is not a number"}, status_code=400)
            if too_big:
                return JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes"},
                                    status_code=413)
        return await call_next(request)

    @app.exception_handler(VantageError)
    async def vantage_error(request: Request, exc: VantageError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    def health() -> dict:
        """Liveness, the model folder and the load."""
        return {"status": "ok", "model": engine.info.get("folder"), "quantization": engine.info.get("quantization"),
                "databases": len(databases), "in_flight": state["admitted"], "served": state["served"],
                "rejected_busy": state["rejected"], "max_concurrency": settings.max_concurrency}

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

    @app.post("/v1/generate", response_model=GenerateResponse,
              responses={400: {"description": "the request cannot be answered as asked"},
                         404: {"description": "unknown db_id"}, 413: {"description": "body too large"},
                         503: {"description": "too many requests in flight"}, 504: {"description": "time limit"}})
    async def generate(req: GenerateRequest) -> GenerateResponse:
        """SQL for a question, with the candidates and, with ``run``, the rows."""
        given = sum(x is not None for x in (req.db_id, req.schema_, req.schema_sql))
        if given != 1:
            raise HTTPException(422, "give exactly one of db_id, schema, schema_sql")
        db_path, schema = None, None
        if req.db_id is not None:
            if req.db_id not in databases:
                raise HTTPException(404, f"unknown db_id {req.db_id!r}; known: {', '.join(sorted(databases)[:20]) or '(none)'}")
            db_path = databases[req.db_id]
        elif req.schema_ is not None:
            schema = req.schema_.to_schema()
        else:
            schema = schema_from_ddl(req.schema_sql)
        if (req.run or req.execution_guided) and db_path is None:
            raise HTTPException(422, "run and execution_guided need a known db_id (a pasted schema has no rows)")
        if req.beam_size is not None and req.beam_size > settings.max_beam_size:
            raise HTTPException(422, f"beam_size {req.beam_size} over this server's limit {settings.max_beam_size}")
        if req.max_new_tokens is not None and req.max_new_tokens > settings.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens {req.max_new_tokens} over this server's limit {settings.max_new_tokens}")
        if req.constraint is not None and req.constraint != "none":
            from vantage_core.plugins import registry

            if req.constraint not in registry().names("constraint"):
                raise HTTPException(422, f"unknown constraint {req.constraint!r}; registered: "
                                         f"{', '.join(registry().names('constraint'))}, none")
        overrides = {k: getattr(req, k) for k in ("decoding", "beam_size", "max_new_tokens", "temperature",
                                                  "top_p", "execution_guided", "require_rows")}
        if req.constraint is not None:
            overrides["constraint"] = "none" if req.constraint == "none" else {"name": req.constraint}
        opts = engine.options(**overrides)
        if opts.beam_size > settings.max_beam_size or opts.max_new_tokens > settings.max_new_tokens:
            opts = opts.model_copy(update={"beam_size": min(opts.beam_size, settings.max_beam_size),
                                           "max_new_tokens": min(opts.max_new_tokens, settings.max_new_tokens)})
        if state["admitted"] >= settings.max_concurrency:
            state["rejected"] += 1
            raise HTTPException(503, f"busy: {settings.max_concurrency} requests in flight; retry later",
                                headers={"Retry-After": "1"})
        state["admitted"] += 1
        try:
            g = await asyncio.wait_for(run_in_threadpool(
                engine.generate, req.question, db_path=db_path, schema=schema, run=req.run,
                routing=req.routing, options=opts), timeout=settings.timeout_s)
        except asyncio.TimeoutError:
            # The model call finishes in its thread; the client is answered now.
            raise HTTPException(504, f"no answer within {settings.timeout_s:g} s") from None
        finally:
            state["admitted"] -= 1
        state["served"] += 1
        return GenerateResponse(**{**g.to_dict(), "candidates": [c.__dict__ for c in g.candidates]})

    from vantage_core.playground import mount_playground

    mount_playground(app)  # the page at /, its files under /playground/ (after the API routes)
    return app
