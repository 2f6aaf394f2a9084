"""Load a trained model and turn (question, database or schema) into SQL.

:func:`load_engine` reads a checkpoint folder (``model.safetensors``, ``config.yaml``,
``tokenizer/``), a run directory (its ``checkpoints/best``, else ``checkpoints/last``) or a
folder written by ``vantage export`` (which may hold quantized weights). :class:`Engine`
builds the prompt exactly as training did, decodes with the configured mode and constraint,
and optionally picks among the candidates by executing them (execution-guided choice) with the
evaluation package's sandboxed, read-only executor.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx

from vantage_core.config import Config, InferenceConfig, load_config, plugin_params
from vantage_core.data.example import Example, Schema
from vantage_core.errors import ConfigError, DataError, VantageError
from vantage_core.inference.decoding import SchemaContext, decode

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

    def __call__(self, tokens, **kwargs):
        logits, aux = self.model(tokens, **kwargs)
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

    def prompt(self, question: str, schema: Schema, db_path: str | None = None,
               extras: dict | None = None) -> tuple[list[int], str]:
        """The decoder prompt ids (up to ``<sql>``) and the encoder text, built as in training."""
        from vantage_core.data.pipeline import encode_example

        ex = Example(question=question, sql="", db_id=schema.db_id, schema=schema,
                     db_paths=[str(db_path)] if db_path else [], extras=dict(extras or {}))
        enc = encode_example(ex, self.tokenizer, self.config.data.serialization)
        return list(enc["tokens"][:enc["sql_start"] + 1]), enc["encoder_text"]

    def schema_context(self, encoder_text: str) -> SchemaContext:
        encoder = getattr(self.model, "schema_encoder", None)
        if encoder is None:
            return SchemaContext()
        ids, mask = encoder.tokenize([encoder_text])
        states, smask = self.model.encode_schema(ids, mask)
        return SchemaContext(states, smask)

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
                 extras: dict | None = None, **overrides: Any) -> Generation:
        """SQL for ``question`` over the database at ``db_path`` or the given ``schema``.

        ``run``: execute the chosen SQL read-only and return its rows (needs ``db_path``).
        ``routing``: record per generated token the experts each MoE layer chose.
        ``extras``: a dataset example's extras (BIRD's ``evidence`` goes into the prompt).
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
        eval_cfg = self.config.evaluate
        t0 = time.perf_counter()
        with self.lock:
            prompt, encoder_text = self.prompt(question, schema, str(db_path) if db_path else None, extras)
            room = self.model.args.max_seq_len - len(prompt) if hasattr(self.model, "args") else opts.max_new_tokens
            if room <= 1:
                raise DataError(f"the prompt takes {len(prompt)} tokens, the model's limit is "
                                f"{self.model.args.max_seq_len}; shorten the question or the schema")
            constraint = self.constraint(opts.constraint)
            processor = constraint.bind(schema, self.tokenizer, self.tokenizer.eos_id) if constraint else None
            hyps = decode(self.routing_model if routing else self.model, prompt,
                          eos_id=self.tokenizer.eos_id, mode=opts.decoding, beam_size=opts.beam_size,
                          temperature=opts.temperature, top_p=opts.top_p,
                          max_new_tokens=min(opts.max_new_tokens, room),
                          schema=self.schema_context(encoder_text), processor=processor,
                          length_penalty=opts.length_penalty)
        candidates = [Candidate(self.tokenizer.decode(h.tokens).strip(), round(h.logprob, 4), h.finished)
                      for h in hyps]
        chosen = 0
        results: dict[int, Any] = {}
        if opts.execution_guided:
            from vantage_core.evaluate.executor import execute

            for i, c in enumerate(candidates):
                res = results[i] = execute(str(db_path), c.sql, eval_cfg.timeout_s, eval_cfg.max_rows)
                c.executed, c.ok, c.error = True, res.ok, res.error
                c.n_rows = len(res.rows) if res.ok else None
                if res.ok and (res.rows or not opts.require_rows):
                    chosen = i
                    break
            else:
                chosen = 0  # none qualifies: keep the model's favourite
        out = Generation(sql=candidates[chosen].sql, candidates=candidates, chosen=chosen,
                         tokens=[self.tokenizer.decode([t]) for t in hyps[chosen].tokens],
                         routing=hyps[chosen].routing if routing else None, n_tokens=len(hyps[chosen].tokens))
        if run:
            res = results.get(chosen)
            if res is None:
                from vantage_core.evaluate.executor import execute

                res = execute(str(db_path), out.sql, eval_cfg.timeout_s, eval_cfg.max_rows)
            out.rows = [list(r) for r in res.rows] if res.ok else None
            out.error = None if res.ok else res.error
            out.truncated = bool(res.truncated)
        out.seconds = round(time.perf_counter() - t0, 4)
        return out


def predict_examples(engine: Engine, examples: list[Example], *, progress: bool = True,
                     **overrides: Any) -> list[str]:
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
            out.append(engine.generate(ex.question, db_path=db, schema=ex.schema, options=opts_ex,
                                       extras=ex.extras).sql)
        except VantageError:
            out.append("")
    return out


def load_engine(path: str | Path) -> Engine:
    """An :class:`Engine` for a checkpoint, run or export folder."""
    return Engine.load(path)
