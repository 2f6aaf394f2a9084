"""The server's routes for adapting the model to a database from the playground: save a corrected
question/SQL pair as an example of a served database, adapt the model to that database from its
examples (one job at a time, in the background), and follow the job.

- ``POST /v1/databases/{db_id}/examples`` ``{"question", "sql"}``: checks the pair as ``vantage
  adapt`` does (the SQL runs read-only on the database; the model can write it) and appends it to
  the database's examples file; 400 with the reason, and nothing written, otherwise.
- ``POST /v1/databases/{db_id}/adapt``: starts adapting the served model to the database from its
  examples (202); 409 while a job runs.
- ``GET /v1/adapt``: the job's state, step and steps, and its error. Once it has succeeded, the
  adapted model answers that database's questions; the others keep the served model.

The work is a :class:`Learner`'s (``vantage serve --adapt-dir`` gives one: it trains with
``vantage adapt``'s API); without one every route answers 403 saying how to turn adapting on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from vantage_core.errors import VantageError

OFF = ("adapting from the playground is off: start vantage serve with --adapt-dir DIR (the folder for each "
       "database's examples and adapted model)")

JobState = Literal["idle", "running", "succeeded", "failed"]


class AdaptBusy(VantageError):
    """A job is running (409): one adaptation at a time per server."""


@dataclass(frozen=True)
class ServedDatabase:
    """A database the server knows, as a learner needs it."""

    db_id: str
    path: str  # a SQLite file, or a URL
    notes: str | None  # its notes file where given with --notes (else the one beside it is read)


class Learner(Protocol):
    """Saves examples of a served database and adapts the model to it."""

    def save_example(self, db: ServedDatabase, question: str, sql: str) -> dict:
        """Check the pair and append it to ``db``'s examples: ``{"file", "examples"}`` (the file's
        name and how many pairs it holds); a :class:`VantageError` saying why it cannot be learned."""

    def start(self, db: ServedDatabase, adapted: Callable[[str], None]) -> dict:
        """Start adapting the model to ``db`` from its examples; ``adapted(folder)`` is called
        with the adapted run's folder when it has succeeded. The job's status (:meth:`status`);
        :class:`AdaptBusy` while one runs, a :class:`VantageError` when it cannot start."""

    def status(self) -> dict:
        """The job's ``state``, ``db_id``, ``step``, ``total``, ``message`` and ``error``."""

    def close(self) -> None:
        """Stop a running job: the server is stopping."""


# ---------------------------------------------------------------------------- request / response

class ExampleIn(BaseModel):
    """A question and the SQL that answers it on the database."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=2000)
    sql: str = Field(min_length=1, max_length=20000)


class ExampleSaved(BaseModel):
    db_id: str
    file: str = Field(description="the examples file's name (under the server's --adapt-dir)")
    examples: int = Field(description="pairs the file holds, this one included")


class AdaptJob(BaseModel):
    state: JobState
    db_id: str | None = None
    step: int = 0
    total: int = 0
    message: str = Field("", description="what the job is doing or did")
    error: str | None = None


def add_adapt_routes(app: FastAPI, models: Any, databases: dict, learner: Learner | None,
                     public_message: Callable[[str | None], str | None]) -> None:
    """The example, adapt and job routes on ``app``; ``models`` (the server's ``ServedModels``)
    takes each adapted model; ``public_message`` cuts the server's paths out of an error."""
    app.state.adapt_enabled = learner is not None

    @app.exception_handler(AdaptBusy)
    async def busy(request: Request, exc: AdaptBusy) -> JSONResponse:
        return JSONResponse({"detail": public_message(str(exc))}, status_code=409)
    if learner is not None:
        app.router.on_shutdown.append(learner.close)

    def enabled() -> Learner:
        if learner is None:
            raise HTTPException(403, OFF)
        return learner

    def served(db_id: str) -> ServedDatabase:
        if db_id not in databases:
            raise HTTPException(404, f"unknown db_id {db_id!r}; GET /v1/databases lists the known ones")
        path = str(databases[db_id])
        return ServedDatabase(db_id, path, models.engine.notes_files.get(path))

    def job(status: dict) -> AdaptJob:
        return AdaptJob(**{**status, "error": public_message(status.get("error"))})

    errors = {400: {"description": "the pair cannot be learned, or the database cannot be adapted to"},
              403: {"description": "adapting is off"}, 404: {"description": "unknown db_id"},
              409: {"description": "a job is running"}}

    @app.post("/v1/databases/{db_id}/examples", response_model=ExampleSaved, status_code=201, responses=errors)
    def save_example(db_id: str, pair: ExampleIn) -> ExampleSaved:
        """Check a question/SQL pair over a known database as ``vantage adapt`` does and add it to
        the database's examples."""
        saved = enabled().save_example(served(db_id), pair.question, pair.sql)
        return ExampleSaved(db_id=db_id, **saved)

    @app.post("/v1/databases/{db_id}/adapt", response_model=AdaptJob, status_code=202, responses=errors)
    def start_adapting(db_id: str) -> AdaptJob:
        """Start adapting the model to a known database from its examples; follow it at GET /v1/adapt."""
        the_learner, db = enabled(), served(db_id)
        return job(the_learner.start(db, lambda folder: models.use_adapted(db.path, folder)))

    @app.get("/v1/adapt", response_model=AdaptJob, responses={403: errors[403]})
    def adapt_job() -> AdaptJob:
        """The adaptation job: ``idle`` (none yet), ``running`` (``step`` of ``total``),
        ``succeeded`` (the adapted model answers ``db_id``) or ``failed`` (``error``)."""
        return job(enabled().status())
