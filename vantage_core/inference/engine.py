"""Load a trained model and turn (question, database or schema) into SQL.

:meth:`Engine.load` reads a checkpoint folder, a run directory or a folder written by ``vantage
export`` (through :func:`vantage_core.model.io.load_model`), or several of them as one ensemble.
:class:`Engine` builds the request exactly as training did, through the model's target format
(:mod:`vantage_core.data.targets`: for ``tokens`` the prompt of question and schema text; for
``actions`` the featurized question and schema, the database's schema encoded on the fly), decodes
with the configured mode and constraint, and optionally picks
among the candidates by executing them read-only through the database's connector
(:mod:`vantage_core.sql`):
a candidate with rows first (``require_rows``), then any that runs, then a wider search
(``retry_beam``), then a counted fallback (``fallback``).
"""

from __future__ import annotations

import base64
import functools
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)

from vantage_core.config import DECODING_MODES, Config, InferenceConfig, plugin_params
from vantage_core.data.example import Example
from vantage_core.data.targets import Request, output_space, target_format
from vantage_core.sql.names import quoted
from vantage_core.sql.schema import Schema
from vantage_core.errors import ConfigError, DataError, VantageError
from vantage_core.inference.decoding import Search, decode
from vantage_core.inference.ensemble import load_ensemble
from vantage_core.model.io import load_model
from vantage_core.sql.format import formatted_sql

UNGUIDED = ("execution-guided choice skipped: a schema without a database has no rows to run the candidates on; "
            "the model's first candidate is given")


@dataclass
class Candidate:
    sql: str
    logprob: float
    finished: bool  # ended with EOS (not cut at max_new_tokens)
    executed: bool = False
    ok: bool | None = None  # ran without error (None: not executed)
    n_rows: int | None = None
    error: str | None = None


@dataclass
class Generation:
    """What one request gives back."""

    sql: str  # the chosen candidate's SQL
    candidates: list[Candidate]
    chosen: int  # index of the chosen candidate
    rows: list[list[Any]] | None = None  # with run=True: the chosen SQL's result
    error: str | None = None  # with run=True: why it did not run
    truncated: bool = False  # the result had more rows than max_rows
    tokens: list[str] = field(default_factory=list)  # the chosen output's pieces
    routing: list[list[dict]] | None = None  # per token: per MoE layer {"experts", "weights"}
    seconds: float = 0.0
    n_tokens: int = 0
    # with run=True on a database of another engine: the chosen SQL as transpiled and run there
    executed_sql: str | None = None
    dialect: str | None = None
    # how the SQL was chosen: top (the model's first), rows / runs (execution-guided), retry-rows /
    # retry-runs (after the wider search), fallback, none (nothing ran: the model's first)
    choice: str = "top"
    note: str | None = None  # what the engine left out of what was asked (execution-guided choice without a database)
    _results: dict = field(default_factory=dict, repr=False)  # executed candidates (not serialized)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_results", None)
        return out

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_dict` as a client is shown it, in strict JSON: the SQL of the answer and of
        each candidate formatted for people (:func:`~vantage_core.sql.format.formatted_sql`, the
        same meaning; ``sql`` here stays the model's text, which evaluation scores), rows as
        :func:`json_rows` gives them, a candidate's non-finite log-probability as None."""
        out = self.to_dict()
        out["sql"] = formatted_sql(self.sql)
        out["rows"] = json_rows(self.rows)
        for c in out["candidates"]:
            c["sql"] = formatted_sql(c["sql"])
            c["logprob"] = c["logprob"] if math.isfinite(c["logprob"]) else None
        return out


def json_cell(value: Any) -> Any:
    """A result cell as strict JSON, the same on every route: bytes as ``{"$base64": "..."}``,
    a non-finite float as the string ``"Infinity"``, ``"-Infinity"`` or ``"NaN"``; text, numbers
    and NULL as they are."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    if value is None or isinstance(value, (str, int, float)):
        return value
    return str(value)


def json_rows(rows: list[list[Any]] | None) -> list[list[Any]] | None:
    """``rows`` with every cell as :func:`json_cell` gives it."""
    return None if rows is None else [[json_cell(v) for v in row] for row in rows]


# ---------------------------------------------------------------------------- routing capture

class _RoutingModel:
    """The model, with each MoE layer's routing of the last call added to its aux as ``routing``
    (through :func:`vantage_core.model.moe.capture_routing`, which leaves the model as it was)."""

    def __init__(self, model: Any):
        self.model = model
        self.args = model.args

    def __call__(self, tokens, memory=None, cache=None):
        from vantage_core.model.moe import capture_routing

        with capture_routing(self.model) as taps:
            logits, aux = self.model(tokens, memory, cache=cache)
        if taps and not (isinstance(aux, dict) and aux.get("routing")):
            aux = {**(aux if isinstance(aux, dict) else {}), "routing": [t.calls[-1] for t in taps]}
        return logits, aux

    def make_cache(self):
        return self.model.make_cache()

    def step_memory(self, memory):
        return self.model.step_memory(memory)

    def reorder_cache(self, cache, rows, requests=None):
        return self.model.reorder_cache(cache, rows, requests)


# ---------------------------------------------------------------------------- the engine

class Engine:
    """Text-to-SQL with a loaded model; one request at a time (MLX models are not thread-safe)."""

    def __init__(self, model: Any, tokenizer: Any, config: Config, info: dict | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.info = info or {}
        self.routing_model = _RoutingModel(model)
        self.lock = threading.Lock()
        self._constraints: dict[str, Any] = {}
        # path or URL -> (the database's schema, the notes file and its signature, the schema with notes)
        self._noted: dict[str, tuple[Schema, tuple, Schema]] = {}
        self.notes_files: dict[str, str] = {}  # path or URL -> its notes file, where given (else the one beside it)
        self.target = target_format(config.data)  # what the model writes SQL as

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], quantized: str | None = None) -> "Engine":
        """An engine for a checkpoint, run or export folder; for several, one engine decoding with
        their ensemble (:mod:`vantage_core.inference.ensemble`). ``quantized`` overrides the
        models' ``inference.quantized`` (auto, dequantize, native)."""
        paths = [path] if isinstance(path, (str, Path)) else list(path)
        load = functools.partial(load_model, quantized=quantized)
        if len(paths) == 1:
            return cls(*load(paths[0]))
        return cls(*load_ensemble(paths, load))

    def config_file(self) -> Path | None:
        """The YAML config the loaded model came with (None for an export: its config is in config.json)."""
        f = Path(self.info.get("folder", ".")) / "config.yaml"
        return f if f.is_file() else None

    # -- pieces --------------------------------------------------------------------------
    def schema_of(self, db_path: str | Path) -> Schema:
        """The schema the model sees of a SQLite file or of the database a URL names: the one its
        connector reads (and reads again once a SQLite file was written or replaced), with the
        database's notes (``notes_files[db_path]``, else the file beside it:
        :mod:`vantage_core.data.notes`; read again once the notes file changes)."""
        from vantage_core.data.notes import apply_notes, notes_beside, read_notes
        from vantage_core.sql.database import open_database
        from vantage_core.sql.sqlite_file import file_signature

        key = str(db_path)
        schema = open_database(db_path).schema()
        notes = self.notes_files.get(key) or notes_beside(key)
        if notes is None:
            return schema
        read_from = (str(notes), file_signature(notes))
        known = self._noted.get(key)
        if known is None or known[0] is not schema or known[1] != read_from:
            self._noted[key] = (schema, read_from, apply_notes(schema, read_notes(notes, schema)))
        return self._noted[key][2]

    def request(self, question: str, schema: Schema, db_path: str | None = None,
                extras: dict | None = None) -> Request:
        """What decoding needs for one question, built as in training (by the model's target format)."""
        ex = Example(question=question, sql="", db_id=schema.db_id, schema=schema,
                     db_paths=[str(db_path)] if db_path else [], extras=dict(extras or {}))
        return self.target.request(ex, self.tokenizer, self.model)

    def host_batch(self, requests: list[Request]) -> dict[str, Any]:
        """The host-side batch the schema encoder reads for these requests (one row each)."""
        return self.target.host_batch(requests, self.tokenizer)

    def constraint(self, spec: Any) -> Any:
        if spec is None:
            return None
        from vantage_core.plugins import registry

        key = json.dumps(spec.model_dump(), sort_keys=True)
        if key not in self._constraints:
            self._constraints[key] = registry().build("constraint", spec.name, **plugin_params(spec))
        return self._constraints[key]

    def options(self, **overrides: Any) -> InferenceConfig:
        """The config's inference settings with the non-None ``overrides`` applied (validated);
        ``constraint="none"`` turns a configured constraint off."""
        data = self.config.inference.model_dump()
        data.update({k: v for k, v in overrides.items() if v is not None})
        if data.get("constraint") in ("none", {"name": "none"}):
            data["constraint"] = None
        if data.get("decoding") not in DECODING_MODES:
            raise ConfigError(f"inference.decoding: {data.get('decoding')!r}; valid: {', '.join(DECODING_MODES)}")
        try:
            opts = InferenceConfig.model_validate(data)
        except Exception as exc:
            raise ConfigError(f"inference options: {exc}") from None
        if opts.beam_size < 1 or opts.max_new_tokens < 1:
            raise ConfigError("inference.beam_size and inference.max_new_tokens must be at least 1")
        if opts.constraint is not None:
            self.check_constraint(opts.constraint.name)
        return opts

    def fitting_constraints(self) -> list[str]:
        """The registered constraints that can mask this model's output (its ``data.target``)."""
        from vantage_core.plugins import registry

        reg = registry()
        return [name for name in reg.names("constraint")
                if self.target.name in getattr(reg.get("constraint", name).factory, "targets", (self.target.name,))]

    def check_constraint(self, name: str) -> None:
        """:class:`ConfigError` naming the constraints that fit when ``name`` is unknown or masks
        another output space than this model's (a text grammar on a pointer model's actions)."""
        from vantage_core.plugins import registry

        fitting = self.fitting_constraints()
        if name in fitting:
            return
        valid = ", ".join(fitting + ["none"])
        if name not in registry().names("constraint"):
            raise ConfigError(f"unknown constraint {name!r}; the ones that fit this model: {valid}")
        theirs = getattr(registry().get("constraint", name).factory, "targets", ())
        what = " or ".join(output_space(t) or f"data.target: {t}" for t in theirs)
        raise ConfigError(f"constraint {name!r} masks the output of a model that {what}; this model "
                          f"{self.target.output_space}. Constraints that fit it: {valid}")

    # -- one request -----------------------------------------------------------------------
    def generate(self, question: str | Question, *, db_path: str | Path | None = None, schema: Schema | None = None,
                 run: bool = False, routing: bool = False, options: InferenceConfig | None = None,
                 cancel: Any = None, **overrides: Any) -> Generation:
        """SQL for ``question`` over the database at ``db_path`` or the given ``schema``.

        ``question``: its text, or a :class:`Question` (its database, schema and a dataset
        example's extras: BIRD's ``evidence`` goes into the prompt) instead of ``db_path`` and
        ``schema``.
        ``run``: execute the chosen SQL read-only and return its rows (needs ``db_path``).
        ``routing``: record per generated token the experts each MoE layer chose.
        ``cancel``: a ``threading.Event``; once set, decoding stops at its next step
        (:class:`~vantage_core.errors.Cancelled`).
        ``overrides``: any :class:`~vantage_core.config.InferenceConfig` field for this call.
        """
        opts = options or self.options(**overrides)
        if not isinstance(question, Question):
            question = Question(question, db_path, schema)
        elif db_path is not None or schema is not None:
            raise TypeError("generate: give the database and schema in the Question, not beside it")
        return self.generate_many([question], run=run, routing=routing, options=opts, cancel=cancel)[0]

    def generate_many(self, questions: list["Question"], *, run: bool = False, routing: bool = False,
                      options: InferenceConfig | None = None, cancel: Any = None) -> list[Generation]:
        """:meth:`generate` for several questions, decoded together (one batched beam search
        where the prompts have the same length, as a pointer model's always do)."""
        opts = options or self.options()
        t0 = time.perf_counter()
        for q in questions:
            self._check_question(q, run)
        with self.lock:
            reqs = [self.request(q.text, q.schema, str(q.db_path) if q.db_path else None, q.extras) for q in questions]
            for r in reqs:
                if self.model.args.max_seq_len - len(r.prompt) <= 1:
                    raise DataError(f"the prompt takes {len(r.prompt)} tokens, the model's limit is "
                                    f"{self.model.args.max_seq_len}; shorten the question or the schema")
            hyps = self._decode(reqs, opts, opts.beam_size, routing, cancel)
        gens = []
        for q, r, h in zip(questions, reqs, hyps):
            gens.append(self._generation(q, r, h, opts))
        retry = [i for i, g in enumerate(gens) if g.choice == "none"] \
            if opts.execution_guided and opts.retry_beam > opts.beam_size and opts.decoding != "greedy" else []
        if retry:  # nothing ran: search wider before giving up
            with self.lock:
                wide = self._decode([reqs[i] for i in retry], opts, opts.retry_beam, routing, cancel)
            for i, h in zip(retry, wide):
                g = self._generation(questions[i], reqs[i], h, opts)
                if g.choice != "none":
                    g.choice = f"retry-{g.choice}"
                    gens[i] = g
        for q, g in zip(questions, gens):
            if g.choice == "none" and opts.fallback:
                g.candidates.append(Candidate(fallback_sql(q.schema), 0.0, False))
                g.chosen, g.sql, g.choice, g.tokens, g.routing, g.n_tokens = \
                    len(g.candidates) - 1, g.candidates[-1].sql, "fallback", [], None, 0
            if run:
                res = g._results.get(g.chosen) or self._execute(str(q.db_path), g.sql)
                g.rows = [list(row) for row in res.rows] if res.ok else None
                g.error = None if res.ok else res.error
                g.truncated = bool(res.truncated)
                if getattr(res, "dialect", "sqlite") != "sqlite":
                    g.executed_sql, g.dialect = res.transpiled or None, res.dialect
            g.seconds = round((time.perf_counter() - t0) / len(questions), 4)
        return gens

    def _check_question(self, q: "Question", run: bool) -> None:
        if not q.text or not q.text.strip():
            raise DataError("question: empty; ask something about the database")
        if q.schema is None:
            if q.db_path is None:
                raise DataError("give a database (db_path) or a schema")
            q.schema = self.schema_of(q.db_path)
        if not q.schema.tables:
            raise DataError(f"schema {q.schema.db_id!r}: no tables")
        if run and q.db_path is None:
            raise DataError("running the SQL (run) needs a database file or a database URL, not only a schema")

    def _decode(self, reqs: list[Request], opts: InferenceConfig, beam_size: int, routing: bool,
                cancel: Any) -> list[list[Any]]:
        """Candidate hypotheses per request (call with the lock held)."""
        from vantage_core.inference.decoding import beam_search_batch

        model = self.routing_model if routing else self.model
        constraint = self.constraint(opts.constraint)
        procs = [constraint.bind(r.example.schema, self.tokenizer, self.tokenizer.eos_id, features=r.features)
                 if constraint else None for r in reqs]
        room = min(self.model.args.max_seq_len - len(r.prompt) for r in reqs)
        eos = self.tokenizer.eos_id
        search = Search(mode=opts.decoding, beam_size=beam_size, max_new_tokens=min(opts.max_new_tokens, room),
                        temperature=opts.temperature, top_p=opts.top_p, length_penalty=opts.length_penalty)
        if opts.decoding == "beam" and len({len(r.prompt) for r in reqs}) == 1:
            memory = self.model.encode_schema(self.model.schema_inputs(self.host_batch(reqs)))
            spaces = self.target.output_spaces(reqs)
            return beam_search_batch(model, [r.prompt for r in reqs], eos_id=eos, search=search, memory=memory,
                                     processors=procs, spaces=spaces, cancel=cancel)
        out = []
        for r, proc in zip(reqs, procs):
            memory = self.model.encode_schema(self.model.schema_inputs(self.host_batch([r])))
            out.append(decode(model, r.prompt, eos_id=eos, search=search, schema=memory, processor=proc,
                              cancel=cancel))
        return out

    def _generation(self, q: "Question", req: Request, hyps: list[Any], opts: InferenceConfig) -> Generation:
        """The candidates of one request, and the one chosen (execution-guided where asked)."""
        candidates = [Candidate(req.to_sql(h.tokens), round(h.logprob, 4), h.finished) for h in hyps]
        chosen, how, results, note = 0, "top", {}, None
        if opts.execution_guided and q.db_path is not None:
            chosen, how = self._choose(candidates, str(q.db_path), opts, results)
            if chosen is None:
                chosen = 0  # none qualifies: keep the model's favourite (or the fallback, later)
        elif opts.execution_guided:
            note = UNGUIDED
        h = hyps[chosen]
        g = Generation(sql=candidates[chosen].sql, candidates=candidates, chosen=chosen, choice=how,
                       tokens=req.to_tokens(h.tokens), routing=h.routing or None,
                       n_tokens=len(h.tokens), note=note)
        g._results = results
        return g

    def _execute(self, db_path: str, sql: str):
        """Run ``sql`` read-only through the database's connector: a SQLite file in the sandboxed
        pool; another engine's database transpiled to its dialect, checked, bounded by the same limits."""
        from vantage_core.sql.database import open_database

        return open_database(db_path).execute(sql, self.config.evaluate.timeout_s, self.config.evaluate.max_rows)

    def _choose(self, candidates: list[Candidate], db_path: str, opts: InferenceConfig,
                results: dict[int, Any]) -> tuple[int | None, str]:
        """Execution-guided choice: the first candidate whose result has rows (``require_rows``),
        else the first that runs; ``(None, "none")`` when none runs. Fills ``results``."""
        runs = None
        for i, c in enumerate(candidates):
            res = results[i] = self._execute(db_path, c.sql)
            c.executed, c.ok, c.error = True, res.ok, res.error
            c.n_rows = len(res.rows) if res.ok else None
            if res.ok and (res.rows or not opts.require_rows):
                return i, "rows" if res.rows else "runs"
            if res.ok and runs is None:
                runs = i
        return (runs, "runs") if runs is not None else (None, "none")


@dataclass
class Question:
    """One question for :meth:`Engine.generate_many`: over the database at ``db_path`` (a SQLite
    file or a database URL), or the given ``schema`` (then nothing can run)."""

    text: str
    db_path: str | Path | None = None
    schema: Schema | None = None
    extras: dict | None = None


def fallback_sql(schema: Schema) -> str:
    """The answer when no candidate runs: a query that always does (counted as ``fallback``)."""
    name = schema.tables[0].name
    return f"SELECT count(*) FROM {quoted(name)}"


def predict_examples(engine: Engine, examples: list[Example], *, progress: bool = True,
                     choices: Any = None, **overrides: Any) -> list[str]:
    """The engine's SQL for each dataset example, in order (for ``vantage evaluate --checkpoint``).

    Uses the example's own schema and its first database (for execution-guided choice), and
    decodes ``inference.batch_size`` questions together (similar schema sizes side by side). A
    request that fails gives an empty prediction, which scores 0, instead of stopping the run.
    ``choices`` (a Counter) counts how each SQL was chosen (:attr:`Generation.choice`, or ``error``).
    """
    from tqdm.auto import tqdm

    opts = engine.options(**overrides)
    out = [""] * len(examples)

    def question(ex: Example) -> Question:
        db = ex.db_paths[0] if ex.db_paths and Path(ex.db_paths[0]).is_file() else None
        return Question(ex.question, db, ex.schema, ex.extras)

    def count(choice: str) -> None:
        if choices is not None:
            choices[choice] += 1

    order = sorted(range(len(examples)), key=lambda i: sum(len(t.columns) + 1 for t in examples[i].schema.tables))
    with tqdm(total=len(examples), desc="generating", unit="q", disable=not progress, dynamic_ncols=True) as bar:
        for s in range(0, len(order), opts.batch_size):
            chunk = order[s:s + opts.batch_size]
            qs = [question(examples[i]) for i in chunk]
            guided = [q.db_path is not None for q in qs]
            groups = [[j for j, g in enumerate(guided) if g], [j for j, g in enumerate(guided) if not g]]
            for group, eg in zip(groups, (opts.execution_guided, False)):
                if not group:
                    continue
                o = opts if eg == opts.execution_guided else opts.model_copy(update={"execution_guided": False})
                try:
                    gens = engine.generate_many([qs[j] for j in group], options=o)
                except VantageError:  # one bad question: the others still get answers
                    gens = []
                    for j in group:
                        try:
                            gens.append(engine.generate_many([qs[j]], options=o)[0])
                        except VantageError:
                            gens.append(None)
                for j, g in zip(group, gens):
                    out[chunk[j]] = g.sql if g is not None else ""
                    count(g.choice if g is not None else "error")
            bar.update(len(chunk))
    return out
