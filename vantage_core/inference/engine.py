"""Load a trained model and turn (question, database or schema) into SQL.

:func:`load_engine` reads a checkpoint folder (``model.safetensors``, ``config.yaml``,
``tokenizer/``), a run directory (its ``checkpoints/best``, else ``checkpoints/last``) or a
folder written by ``vantage export`` (which may hold quantized weights). :class:`Engine`
builds the request exactly as training did (for ``data.target: tokens`` the prompt of question
and schema text; for ``actions`` the featurized question and schema, the database's schema encoded
on the fly), decodes with the configured mode and constraint, and optionally picks among the
candidates by executing them with the evaluation package's sandboxed, read-only executor:
a candidate with rows first (``require_rows``), then any that runs, then a wider search
(``retry_beam``), then a counted fallback (``fallback``).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx

from vantage_core.config import Config, InferenceConfig, load_config, plugin_params
from vantage_core.data.example import Example, Schema
from vantage_core.errors import ConfigError, DataError, VantageError
from vantage_core.inference.decoding import decode

EXPORT_FILE = "export.json"  # written by `vantage export`: format version, quantization


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
    # how the SQL was chosen: top (the model's first), rows / runs (execution-guided), retry-rows /
    # retry-runs (after the wider search), fallback, none (nothing ran: the model's first)
    choice: str = "top"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- loading

def resolve_model_dir(path: str | Path) -> Path:
    """The folder holding ``model.safetensors``: ``path`` itself, or a run's best/last checkpoint."""
    p = Path(path)
    if not p.exists():
        raise VantageError(f"{p}: no such folder; give a run directory, a checkpoint folder or an export")
    if (p / "model.safetensors").is_file():
        return p
    from vantage_core.train.checkpoint import resolve_checkpoint

    for name in ("best", "last"):
        try:
            return resolve_checkpoint(p / "checkpoints" / name)
        except VantageError:
            continue
    raise VantageError(f"{p}: holds neither model.safetensors nor checkpoints/best or checkpoints/last "
                       f"(expected a run directory, a checkpoint folder or a `vantage export` folder)")


def load_model(path: str | Path) -> tuple[Any, Any, Config, dict]:
    """``(model, tokenizer, config, export_info)`` from a checkpoint, run or export folder."""
    from vantage_core.data.tokenizer import load_tokenizer
    from vantage_core.model import build_model
    from vantage_core.train.checkpoint import load_weights_file

    folder = resolve_model_dir(path)
    for need in ("config.yaml", "tokenizer"):
        if not (folder / need).exists():
            raise VantageError(f"{folder}: missing {need}; a model folder holds model.safetensors, "
                               f"config.yaml and tokenizer/ (write one with `vantage export`)")
    # Only the plugins inference builds matter here (built, and so checked, below).
    cfg = load_config(folder / "config.yaml", registry=False)
    tokenizer = load_tokenizer(folder / "tokenizer")
    info = json.loads((folder / EXPORT_FILE).read_text()) if (folder / EXPORT_FILE).is_file() else {}
    model = build_model(cfg.model, tokenizer)
    quant = info.get("quantization")
    if quant:
        quantize_model(model, bits=quant["bits"], group_size=quant["group_size"])
    load_weights_file(model, folder)
    model.eval()
    info = {**info, "folder": str(folder)}
    return model, tokenizer, cfg, info


def quantize_model(model: Any, bits: int, group_size: int = 64) -> int:
    """Quantize the model's linear and embedding layers in place (MLX's ``nn.quantize``).

    Layers whose input width is not a multiple of ``group_size`` stay in float, and so do the
    routers (a few weights, and their argmax decides everything downstream). Returns the number
    of layers quantized.
    """
    import mlx.nn as nn

    if bits not in (4, 8):
        raise ConfigError(f"quantization bits: {bits}; valid: 4, 8")
    count = 0

    def predicate(path: str, module: Any) -> bool:
        nonlocal count
        if not hasattr(module, "to_quantized") or ".router" in f".{path}":
            return False
        widths = module.quantizable_widths() if hasattr(module, "quantizable_widths") else \
            [module.weight.shape[-1]] if getattr(module, "weight", None) is not None else []
        if not widths or any(w % group_size for w in widths):
            return False
        count += 1
        return True

    nn.quantize(model, group_size=group_size, bits=bits, class_predicate=predicate)
    return count


# ---------------------------------------------------------------------------- routing capture

class _RouterTap:
    """Stands in front of a router and keeps its last decision (the parameters stay where they are)."""

    def __init__(self, router: Any):
        self.router = router
        self.last = None

    def __call__(self, x: mx.array):
        self.last = self.router(x)
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self.router, name)


class _RoutingModel:
    """The model, with each MoE layer's routing of the last call added to its aux as ``routing``."""

    def __init__(self, model: Any):
        from vantage_core.model.moe import MoEBlock

        self.model = model
        self.taps = []
        for layer in getattr(model, "layers", []):
            block = getattr(layer, "ffn", None)
            if isinstance(block, MoEBlock):
                tap = _RouterTap(block.router)
                # An instance attribute shadows the module's child without touching parameters().
                object.__setattr__(block, "router", tap)
                self.taps.append(tap)

    def __call__(self, tokens, memory=None, cache=None):
        logits, aux = self.model(tokens, memory, cache=cache)
        if self.taps and not (isinstance(aux, dict) and aux.get("routing")):
            aux = {**(aux if isinstance(aux, dict) else {}), "routing": [t.last for t in self.taps]}
        return logits, aux

    def make_cache(self):
        return self.model.make_cache()


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
        self._schemas: dict[str, Schema] = {}
        self._linker = None

    @classmethod
    def load(cls, path: str | Path) -> "Engine":
        return cls(*load_model(path))

    # -- pieces --------------------------------------------------------------------------
    def schema_of(self, db_path: str | Path) -> Schema:
        """The schema of a SQLite file (cached by path)."""
        from vantage_core.data.schemas import schema_from_sqlite

        key = str(db_path)
        if key not in self._schemas:
            if not Path(db_path).is_file():
                raise DataError(f"{db_path}: no such SQLite file")
            self._schemas[key] = schema_from_sqlite(db_path)
        return self._schemas[key]

    def request(self, question: str, schema: Schema, db_path: str | None = None,
                extras: dict | None = None) -> "Request":
        """What decoding needs for one question, built as in training."""
        ex = Example(question=question, sql="", db_id=schema.db_id, schema=schema,
                     db_paths=[str(db_path)] if db_path else [], extras=dict(extras or {}))
        if self.config.data.target == "actions":
            return self._action_request(ex)
        from vantage_core.data.pipeline import encode_example

        enc = encode_example(ex, self.tokenizer, self.config.data.serialization)
        tokenizer = self.tokenizer
        return Request(list(enc["tokens"][:enc["sql_start"] + 1]), {"encoder_texts": [enc["encoder_text"]]},
                       None, lambda ids: tokenizer.decode(ids).strip())

    def _action_request(self, ex: Example) -> "Request":
        from vantage_core.data.actions import collate, featurize_request, to_actions
        from vantage_core.data.linking import cased_values, schema_items
        from vantage_core.data.sql_actions import render_sql

        if self._linker is None:
            from vantage_core.plugins import registry

            spec = self.config.data.linker
            self._linker = registry().build("schema_linker", spec.name, **plugin_params(spec))
        feats = featurize_request(ex, self.model.schema_encoder.question_tokenizer, self._linker)
        batch = collate([feats], [ex], self.tokenizer, with_targets=False)
        items = schema_items(ex.schema)
        values = cased_values(ex.db_paths[0]) if ex.db_paths else None
        vocab = self.tokenizer

        def to_sql(ids: list[int]) -> str:
            return render_sql(to_actions(ids, vocab, len(items)), items, ex.question, feats["offsets"], values)

        return Request([vocab.bos_id], batch, feats, to_sql)

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
        try:
            opts = InferenceConfig.model_validate(data)
        except Exception as exc:
            raise ConfigError(f"inference options: {exc}") from None
        if opts.decoding not in ("greedy", "beam", "sample"):
            raise ConfigError(f"inference.decoding: {opts.decoding!r}; valid: greedy, beam, sample")
        if opts.beam_size < 1 or opts.max_new_tokens < 1:
            raise ConfigError("inference.beam_size and inference.max_new_tokens must be at least 1")
        return opts

    # -- one request -----------------------------------------------------------------------
    def generate(self, question: str, *, db_path: str | Path | None = None, schema: Schema | None = None,
                 run: bool = False, routing: bool = False, options: InferenceConfig | None = None,
                 extras: dict | None = None, cancel: Any = None, **overrides: Any) -> Generation:
        """SQL for ``question`` over the database at ``db_path`` or the given ``schema``.

        ``run``: execute the chosen SQL read-only and return its rows (needs ``db_path``).
        ``routing``: record per generated token the experts each MoE layer chose.
        ``extras``: a dataset example's extras (BIRD's ``evidence`` goes into the prompt).
        ``cancel``: a ``threading.Event``; once set, decoding stops at its next step
        (:class:`~vantage_core.errors.Cancelled`).
        ``overrides``: any :class:`~vantage_core.config.InferenceConfig` field for this call.
        """
        opts = options or self.options(**overrides)
        if not question or not question.strip():
            raise DataError("question: empty; ask something about the database")
        if schema is None:
            if db_path is None:
                raise DataError("give a database (db_path) or a schema")
            schema = self.schema_of(db_path)
        if not schema.tables:
            raise DataError(f"schema {schema.db_id!r}: no tables")
        if (run or opts.execution_guided) and db_path is None:
            raise DataError("running the SQL (run, execution_guided) needs a database file, not only a schema")
        t0 = time.perf_counter()
        with self.lock:
            req = self.request(question, schema, str(db_path) if db_path else None, extras)
            room = self.model.args.max_seq_len - len(req.prompt)
            if room <= 1:
                raise DataError(f"the prompt takes {len(req.prompt)} tokens, the model's limit is "
                                f"{self.model.args.max_seq_len}; shorten the question or the schema")
            memory = self.model.encode_schema(self.model.schema_inputs(req.inputs))
            constraint = self.constraint(opts.constraint)
            processor = constraint.bind(schema, self.tokenizer, self.tokenizer.eos_id, features=req.features) \
                if constraint else None

            def candidates_at(beam_size: int):
                hyps = decode(self.routing_model if routing else self.model, req.prompt,
                              eos_id=self.tokenizer.eos_id, mode=opts.decoding, beam_size=beam_size,
                              temperature=opts.temperature, top_p=opts.top_p,
                              max_new_tokens=min(opts.max_new_tokens, room), schema=memory, processor=processor,
                              length_penalty=opts.length_penalty, cancel=cancel)
                return hyps, [Candidate(req.to_sql(h.tokens), round(h.logprob, 4), h.finished) for h in hyps]

            hyps, candidates = candidates_at(opts.beam_size)
        chosen, how, results = 0, "top", {}
        if opts.execution_guided:
            chosen, how = self._choose(candidates, str(db_path), opts, results)
            if chosen is None and opts.retry_beam > opts.beam_size and opts.decoding != "greedy":
                with self.lock:  # nothing ran: search wider before giving up
                    wide_hyps, wide = candidates_at(opts.retry_beam)
                wide_results: dict[int, Any] = {}
                chosen, how = self._choose(wide, str(db_path), opts, wide_results)
                if chosen is not None:
                    hyps, candidates, results, how = wide_hyps, wide, wide_results, f"retry-{how}"
            if chosen is None and opts.fallback:
                candidates.append(Candidate(fallback_sql(schema), 0.0, False))
                chosen, how = len(candidates) - 1, "fallback"
            elif chosen is None:
                chosen, how = 0, "none"  # none qualifies: keep the model's favourite
        hyp = hyps[chosen] if chosen < len(hyps) else None
        out = Generation(sql=candidates[chosen].sql, candidates=candidates, chosen=chosen, choice=how,
                         tokens=[self.tokenizer.decode([t]) for t in hyp.tokens] if hyp else [],
                         routing=hyp.routing if routing and hyp else None, n_tokens=len(hyp.tokens) if hyp else 0)
        if run:
            res = results.get(chosen) or self._execute(str(db_path), out.sql)
            out.rows = [list(r) for r in res.rows] if res.ok else None
            out.error = None if res.ok else res.error
            out.truncated = bool(res.truncated)
        out.seconds = round(time.perf_counter() - t0, 4)
        return out

    def _execute(self, db_path: str, sql: str):
        from vantage_core.evaluate.executor import execute

        return execute(db_path, sql, self.config.evaluate.timeout_s, self.config.evaluate.max_rows)

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
class Request:
    """One question made ready for decoding: the decoder's prompt ids, the host-side batch the
    schema encoder reads, the featurized question (pointer models; for the constraint), and how
    output ids become SQL."""

    prompt: list[int]
    inputs: dict[str, Any]
    features: dict | None
    to_sql: Callable[[list[int]], str]


def fallback_sql(schema: Schema) -> str:
    """The answer when no candidate runs: a query that always does (counted as ``fallback``)."""
    name = schema.tables[0].name
    return 'SELECT count(*) FROM "{}"'.format(name.replace('"', '""'))


def predict_examples(engine: Engine, examples: list[Example], *, progress: bool = True,
                     choices: Any = None, **overrides: Any) -> list[str]:
    """The engine's SQL for each dataset example, in order (for ``vantage evaluate --checkpoint``).

    Uses the example's own schema and its first database (for execution-guided choice); a
    request that fails gives an empty prediction, which scores 0, instead of stopping the run.
    """
    from tqdm.auto import tqdm

    opts = engine.options(**overrides)
    out = []
    for ex in tqdm(examples, desc="generating", unit="q", disable=not progress, dynamic_ncols=True):
        db = ex.db_paths[0] if ex.db_paths and Path(ex.db_paths[0]).is_file() else None
        if db is None and opts.execution_guided:
            opts_ex = opts.model_copy(update={"execution_guided": False})
        else:
            opts_ex = opts
        try:
            gen = engine.generate(ex.question, db_path=db, schema=ex.schema, options=opts_ex, extras=ex.extras)
        except VantageError:
            out.append("")
            if choices is not None:
                choices["error"] += 1
            continue
        out.append(gen.sql)
        if choices is not None:
            choices[gen.choice] += 1
    return out


def load_engine(path: str | Path) -> Engine:
    """An :class:`Engine` for a checkpoint, run or export folder."""
    return Engine.load(path)
