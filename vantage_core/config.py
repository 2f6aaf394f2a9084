"""YAML in, typed config objects out.

A config holds names and parameters only: each ``{name: ..., other keys}`` mapping selects a
registered plugin and gives its parameters. Errors name the file, the line and the field.
"""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path
from typing import Any, Iterator, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from vantage_core.errors import ConfigError, VantageError
from vantage_core.textfiles import read_utf8

Lines = dict[tuple, int]  # path of keys/indices -> 1-based line in the source file


DecodingMode = Literal["greedy", "beam", "sample"]
"""How candidates are searched for: one greedy path, a beam search, or samples (``inference.decoding``;
:mod:`vantage_core.inference.decoding` runs each)."""
DECODING_MODES: tuple[str, ...] = get_args(DecodingMode)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


CLASH = "fields_clash"  # the error type of values that do not work together


def clash(field: str, message: str) -> PydanticCustomError:
    """A validator's error about values that do not work together, reported at ``field`` (dotted,
    within the validated section) so that the message names that field and its line."""
    return PydanticCustomError(CLASH, message, {"clash_field": field})


class PluginSpec(BaseModel):
    """``{name: <registered name>, <param>: <value>, ...}``"""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="before")
    @classmethod
    def _accept_bare_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class DataSource(PluginSpec):
    """A dataset adapter with the split to read and its share of a training mixture."""

    split: str | None = None  # None: the slot's own split (train / validation / test)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    limit: int | None = Field(None, gt=0)  # keep the first N examples (for quick runs)
    sample: int | None = Field(None, gt=0)  # keep N examples drawn at random, the same N every time


class RunConfig(Section):
    name: str = "run"
    dir: str | None = None  # default: runs/<name>
    seed: int = 0

    @property
    def path(self) -> Path:
        return Path(self.dir or os.path.join("runs", self.name))


HEADS = ("vocab", "pointer", "copy")  # the model's output heads (vantage_core/model/transformer.py)


class ModelConfig(Section):
    vocab_size: int | None = Field(None, gt=0)  # None: taken from the trained tokenizer
    d_model: int = Field(256, gt=0)
    n_layers: int = Field(4, gt=0)
    n_heads: int = Field(4, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)  # None: as many as n_heads (no grouped-query attention)
    head_dim: int | None = Field(None, gt=0)  # None: d_model // n_heads
    max_seq_len: int = Field(512, gt=0)
    rope_theta: float = Field(10000.0, gt=0, allow_inf_nan=False)
    norm_eps: float = Field(1e-5, gt=0, allow_inf_nan=False)
    num_experts: int = Field(8, gt=0)
    expert_hidden: int = Field(512, gt=0)
    moe_every: int = Field(1, ge=0)  # an MoE block in every n-th layer, a dense SwiGLU elsewhere; 0: never
    dense_hidden: int | None = Field(None, gt=0)  # hidden size of the dense layers; None: expert_hidden * k
    cross_attention_every: int = Field(4, ge=0)  # schema cross-attention in every n-th layer; 0: never
    tie_embeddings: bool = True
    # Output heads: vocab (subword or SQL-keyword vocabulary), pointer (this database's tables
    # and columns), copy (spans of the question); pointer and copy need data.target: actions.
    heads: list[str] = ["vocab"]
    dropout: float = Field(0.0, ge=0, lt=1)  # on the decoder's input embeddings
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # float32 on the CPU; bfloat16 where the device has fast bf16
    router: PluginSpec = PluginSpec(name="topk")
    expert: PluginSpec = PluginSpec(name="swiglu")
    schema_encoder: PluginSpec = PluginSpec(name="transformer")

    @field_validator("router")
    @classmethod
    def _check_router_k(cls, router: PluginSpec, info: ValidationInfo) -> PluginSpec:
        """The router's ``k`` (experts per token) must be a whole number from 1 to num_experts."""
        k, experts = router.params.get("k"), info.data.get("num_experts")
        if k is None:
            return router
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k: {k!r}; the experts per token must be a whole number of at least 1")
        if experts is not None and k > experts:
            raise ValueError(f"k: {k} is more than num_experts ({experts}); a token cannot use more experts than exist")
        return router

    @field_validator("heads")
    @classmethod
    def _check_heads(cls, heads: list[str]) -> list[str]:
        if any(h not in HEADS for h in heads) or "vocab" not in heads or len(set(heads)) != len(heads):
            raise ValueError(f"{heads}: a list of distinct heads from {', '.join(HEADS)} that includes vocab")
        return heads

    @model_validator(mode="after")
    def _check_shapes(self) -> "ModelConfig":
        """The sizes the model builder divides: heads into the width, key/value heads into heads."""
        n_kv = self.n_kv_heads or self.n_heads
        if self.n_heads % n_kv:
            raise clash("n_kv_heads", f"{n_kv} must divide n_heads ({self.n_heads}): each key/value head "
                                      f"serves the same number of query heads")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise clash("n_heads", f"{self.n_heads} must divide d_model ({self.d_model}), or set head_dim")
        if len(self.heads) > 1 and not self.cross_attention_every:
            raise clash("heads", f"{self.heads} point at schema items, which reach the decoder through "
                                 f"cross-attention; set cross_attention_every above 0 or heads: [vocab]")
        return self


class SerializationConfig(Section):
    cell_values: int = Field(0, ge=0)  # cell values shown per column (read from the database)
    max_schema_tokens: int = Field(384, gt=0)  # beyond this, the least relevant tables and columns are cut
    max_question_tokens: int = Field(64, gt=0)
    max_sql_tokens: int = Field(160, gt=0)
    schema_in_prompt: bool = True  # the schema text also goes into the decoder's prompt (after <sep>)


class DataConfig(Section):
    # What the decoder writes: tokens (the SQL text in the tokenizer's pieces, the schema in the
    # prompt) or actions (SQL keywords, pointers to schema items, spans copied from the question;
    # vantage_core/data/sql_actions.py), with the sql_actions tokenizer and a pointer model.
    target: Literal["tokens", "actions"] = "tokens"
    linker: PluginSpec | None = None  # actions: the schema_linker plugin (lexical; none for no links)
    # actions: in training batches only, each schema item of each example loses its name matches
    # (exact and partial; value matches stay) with this probability, so the model also links
    # question words that do not spell a name (synonyms). Drawn from run.seed and the batch's index.
    link_dropout: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    train: list[DataSource] = [DataSource(name="synthetic")]
    validation: list[DataSource] = []
    test: list[DataSource] = []
    tokenizer: PluginSpec = PluginSpec(name="sentencepiece", vocab_size=2048)
    serialization: SerializationConfig = SerializationConfig()
    cache_dir: str | None = None  # None: ~/.cache/vantage

    @field_validator("tokenizer")
    @classmethod
    def _check_vocab_size(cls, tokenizer: PluginSpec) -> PluginSpec:
        """The tokenizer's ``vocab_size`` (which ``vantage params`` also reads) must be a whole number above 0."""
        size = tokenizer.params.get("vocab_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise clash("vocab_size", f"{size!r}; the vocabulary size must be a whole number above 0")
        return tokenizer


class DistillConfig(Section):
    """Knowledge distillation from trained teachers (docs/model.md); no teachers: off."""

    teachers: list[str] = []  # run folders (their best, else last checkpoint), checkpoints or exports
    # the loss: (1 - weight) * cross-entropy on the gold targets + weight * T^2 * cross-entropy on
    # the teachers' mean distribution at temperature T
    weight: float = Field(0.5, ge=0, le=1, allow_inf_nan=False)
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)
    top_k: int = Field(16, gt=0)  # entries kept per position of the teachers' distribution (renormalized)

    @field_validator("teachers", mode="before")
    @classmethod
    def _accept_one_teacher(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("teachers")
    @classmethod
    def _check_teachers(cls, teachers: list[str]) -> list[str]:
        if any(not t.strip() for t in teachers):
            raise ValueError(f"{teachers}: each teacher is a folder (a run, a checkpoint or an export), not empty text")
        return teachers


class TrainConfig(Section):
    steps: int = Field(1000, ge=0)
    minutes: float | None = Field(None, gt=0, allow_inf_nan=False)  # wall-clock ceiling: stop (save, evaluate) when it is reached
    batch_size: int = Field(16, gt=0)
    grad_accum: int = Field(1, gt=0)
    # Rows of this many batches are sorted by length together before they are cut into batches
    # (whose order is then shuffled): more pads less; 0: the whole epoch.
    bucket_batches: int = Field(32, ge=0)
    # The decoder's and the relation mixer's projections, norms and feed-forward blocks run on
    # real positions only, not on the padding (vantage_core/model/packing.py); false: on the whole
    # padded batch, as before.
    pack_padding: bool = True
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, allow_inf_nan=False)  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False)
    grad_clip: float = Field(1.0, ge=0, allow_inf_nan=False)
    # An exponential moving average of the trainable weights, with this decay per step, is what
    # validation scores and the checkpoints hold (the raw weights are kept beside it for --resume);
    # null: the raw weights.
    ema_decay: float | None = Field(None, gt=0, lt=1, allow_inf_nan=False)
    eval_every: int = Field(250, ge=0)
    eval_examples: int = Field(200, ge=0)  # validation examples decoded at each evaluation
    # The best checkpoint is kept by this validation metric: a metric plugin's (decoding
    # eval_examples) or, with data.target: actions, action_exact (teacher-forced: the share of
    # examples whose every action is the model's first choice; cheap, no decoding).
    select_metric: str = "execution"
    save_every: int = Field(250, ge=0)
    log_every: int = Field(1, gt=0)
    compile: bool = True
    # The GEMMs of the forward and backward passes: fp32, or bf16 inputs with float32 sums
    # (weights, optimizer state, norms, softmax and the loss stay float32); auto: bf16 where the
    # CPU has AVX512-BF16, fp32 elsewhere. VANTAGE_PRECISION=fp32 forces fp32 (docs/cpu.md).
    # fp32 by default until the AVX512-BF16 kernel has been measured on a CPU that has it.
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    loggers: list[PluginSpec] = [PluginSpec(name="jsonl")]
    distill: DistillConfig = DistillConfig()
    # A run, checkpoint or export folder whose weights and tokenizer start this run (fine-tuning,
    # as `vantage adapt` does); the model section must build the same shapes. null: fresh weights.
    init_from: str | None = Field(None, min_length=1)


class EvaluateConfig(Section):
    metrics: list[PluginSpec] = [PluginSpec(name="execution"), PluginSpec(name="exact_match")]
    workers: int = Field(1, ge=0)
    timeout_s: float = Field(5.0, gt=0, allow_inf_nan=False)  # per query
    max_rows: int = Field(10000, gt=0)


class InferenceConfig(Section):
    decoding: DecodingMode = "greedy"
    beam_size: int = Field(4, ge=1)
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    max_new_tokens: int = Field(160, ge=1)
    constraint: PluginSpec | None = None
    execution_guided: bool = False  # among the candidates, the first that runs without error
    require_rows: bool = False  # execution-guided: prefer candidates whose result has rows
    retry_beam: int = 0  # execution-guided: no candidate runs -> search again this wide (0: never)
    fallback: bool = False  # still none runs -> SELECT count(*) FROM the first table (counted)
    length_penalty: float = Field(1.0, allow_inf_nan=False)  # beam ranking: log-probability / length**penalty
    batch_size: int = Field(32, ge=1)  # questions decoded together by `vantage evaluate --checkpoint`
    # How an 8- or 4-bit export's layers run once loaded: dequantize (to float, once, at load),
    # native (MLX's quantized_matmul) or auto: dequantize on the CPU, where quantized_matmul is
    # slower than fp32 (docs/quantization.md), native on a GPU.
    quantized: Literal["auto", "dequantize", "native"] = "auto"


class Config(Section):
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    inference: InferenceConfig = InferenceConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _check_target(self) -> "Config":
        actions = self.data.target == "actions"
        if len(self.model.heads) > 1 and not actions:
            raise clash("model.heads", f"{self.model.heads} point at schema items and question pieces; "
                                       f"they need data.target: actions (or set model.heads: [vocab])")
        if actions and self.data.linker is None:
            raise clash("data.linker", "data.target: actions needs a schema_linker plugin, e.g. "
                                       "{name: lexical} (or {name: none} for no linking features)")
        if self.data.link_dropout and not actions:
            raise clash("data.link_dropout", f"{self.data.link_dropout}; hiding schema-linking matches needs "
                                             f"data.target: actions (or set data.link_dropout: 0)")
        if actions and self.train.select_metric != "action_exact":
            raise clash("train.select_metric", f"{self.train.select_metric!r}; with data.target: actions "
                        f"the best checkpoint is chosen by action_exact (teacher-forced, on validation)")
        return self


# Where each plugin spec lives in a config: (path pattern, plugin kind); "*" is any list index.
PLUGIN_FIELDS: list[tuple[tuple, str]] = [
    (("model", "router"), "router"),
    (("model", "expert"), "expert"),
    (("model", "schema_encoder"), "schema_encoder"),
    (("data", "train", "*"), "dataset"),
    (("data", "validation", "*"), "dataset"),
    (("data", "test", "*"), "dataset"),
    (("data", "tokenizer"), "tokenizer"),
    (("data", "linker"), "schema_linker"),
    (("train", "loggers", "*"), "logger"),
    (("evaluate", "metrics", "*"), "metric"),
    (("inference", "constraint"), "constraint"),
]
NOT_PLUGIN_PARAMS = {"name", "split", "weight", "limit", "sample"}


# ---------------------------------------------------------------------------- YAML with lines

class _Loader(yaml.SafeLoader):
    pass


MERGE_TAG = "tag:yaml.org,2002:merge"
PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")}


MAX_YAML_NODES = 200_000  # more is an alias bomb, not a config


def read_yaml_lines(text: str, source: str) -> tuple[Any, Lines]:
    """The plain data of a YAML text and the line of each of its values (keyed by the path of
    keys and indices); anything YAML could run or expand without bound is one :class:`ConfigError`
    naming ``source``, the line and the field."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply to read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if node is None:
        return {}, {}
    lines: Lines = {}
    try:
        return _construct(node, (), lines, source), lines
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply to read") from None


def _construct(node: yaml.Node, path: tuple, lines: Lines, source: str, inside: frozenset = frozenset()) -> Any:
    """Plain data from ``node``, recording each path's line. ``inside``: the ids of the nodes
    being built around this one; meeting one again means an anchor refers to itself
    (``a: &a [*a]``), which has no finite value."""
    lines[path] = node.start_mark.line + 1
    if id(node) in inside:
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: {_dotted(path)}: the YAML anchor refers to itself")
    if len(lines) > MAX_YAML_NODES:
        raise ConfigError(f"{source}: more than {MAX_YAML_NODES} values once aliases are expanded")
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
        _check_tag(node, path, source)
        inside = inside | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = _key(key_node, path, source)
            if key in out:
                raise ConfigError(f"{source}:{key_node.start_mark.line + 1}: {_dotted(path + (key,))}: "
                                  f"duplicate key (first at line {lines[path + (key,)]})")
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, path + (key,), lines, source, inside)
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, path + (i,), lines, source, inside) for i, v in enumerate(node.value)]
    return _scalar(node, path, source)


def _check_tag(node: yaml.Node, path: tuple, source: str) -> None:
    """Refuse a tag other than YAML's plain ones (``!!python/...``, ``!!binary``, ``!custom``)."""
    if node.tag not in PLAIN_TAGS:
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: {_dotted(path)}: the YAML tag {_short_tag(node.tag)} "
                          f"is not allowed; a config holds plain values only (text, numbers, true/false, lists, "
                          f"mappings)")


def _key(node: yaml.Node, path: tuple, source: str) -> Any:
    """A mapping key: plain text, a number or true/false; a merge key (``<<``) is refused."""
    where = f"{source}:{node.start_mark.line + 1}"
    if node.tag == MERGE_TAG:
        raise ConfigError(f"{where}: {_dotted(path + ('<<',))}: YAML merge keys are not read; write the "
                          f"fields out, or give the whole mapping by its alias (key: *name)")
    if not isinstance(node, yaml.ScalarNode):
        raise ConfigError(f"{where}: {_dotted(path)}: a key must be text or a number, not a "
                          f"{'list' if isinstance(node, yaml.SequenceNode) else 'mapping'}")
    return _scalar(node, path + (node.value,), source)


def _scalar(node: yaml.Node, path: tuple, source: str) -> Any:
    """The value of a plain scalar (text, number, true/false, null); any other tag, or a number
    too long to read, is a one-line error naming the file, line and field."""
    _check_tag(node, path, source)
    where = f"{source}:{node.start_mark.line + 1}: {_dotted(path)}"
    try:
        return _Loader(" ").construct_object(node, deep=True)
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        shown = node.value if len(node.value) <= 40 else f"{node.value[:20]}... ({len(node.value)} characters)"
        raise ConfigError(f"{where}: {shown} cannot be read as {_short_tag(node.tag)}: "
                          f"{str(exc).split(';')[0]}") from None


def _short_tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


class Located:
    """A raw config mapping with the line of each field, for error messages."""

    def __init__(self, data: dict, lines: Lines, source: str, overrides: dict[tuple, str] | None = None):
        self.data, self.lines, self.source = data, lines, source
        self.overrides = overrides or {}  # path -> the --set text that set it

    def where(self, path: tuple) -> str:
        for i in range(len(path), -1, -1):
            prefix = tuple(path[:i])
            if prefix in self.overrides:
                return f"--set {self.overrides[prefix]}"
            if prefix in self.lines and i > 0:
                return f"{self.source}:{self.lines[prefix]}"
        return self.source

    def error(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {_dotted(path)}: {message}")


# ---------------------------------------------------------------------------- overrides

def parse_override(text: str) -> tuple[tuple, Any]:
    """``model.router.k=1`` -> (("model", "router", "k"), 1); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text}: expected KEY=VALUE, for example model.router.k=1")
    path = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"--set {key}=...: the value is not valid YAML: {str(exc).splitlines()[0].split(';')[0]}") from None
    return path, parsed


def apply_override(data: dict, path: tuple, value: Any, text: str) -> None:
    node: Any = data
    for i, key in enumerate(path[:-1]):
        if isinstance(node, list):
            if not isinstance(key, int) or key >= len(node):
                raise ConfigError(f"--set {text}: {_dotted(path[:i + 1])}: no list item {key} "
                                  f"(the list has {len(node)})")
            node = node[key]
        else:
            if not isinstance(node.get(key, {}), (dict, list)):
                node[key] = {}
            node = node.setdefault(key, {})
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(f"--set {text}: no list item {last} (the list has {len(node)})")
        node[last] = value
    else:
        node[last] = value


# ---------------------------------------------------------------------------- loading

def load_config(path: str | os.PathLike | None = None, overrides: list[str] = (),
                registry: Any = None, *, base: dict | None = None) -> Config:
    """Read a YAML config, apply ``--set`` overrides, validate types and plugin names/parameters.

    ``registry`` (a :class:`vantage_core.plugins.Registry`) checks every plugin name and
    parameter; pass ``False`` to skip that check.
    """
    if path is not None:
        path = Path(path)
        try:
            text = read_utf8(path, ConfigError)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the config: {exc.strerror or exc}") from None
        data, lines = read_yaml_lines(text, str(path))
        source = str(path)
    else:
        data, lines, source = copy.deepcopy(base or {}), {}, "(defaults)"
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: the config must be a mapping of sections "
                          f"({', '.join(Config.model_fields)}), not {type(data).__name__}")
    located = Located(data, lines, source)
    cfg = _validate(located)
    if overrides:
        # Overrides apply to the validated config, so that `--set model.router.k=1` keeps the
        # file's (or the default's) router name.
        located.data = cfg.to_dict()
        for text in overrides:
            key, value = parse_override(text)
            apply_override(located.data, key, value, text)
            located.overrides[key] = text
        cfg = _validate(located)
    if registry is not False:
        from vantage_core.plugins import registry as default_registry
        check_plugins(cfg, located, registry or default_registry())
    return cfg


def _validate(located: Located) -> Config:
    try:
        return Config.model_validate(located.data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("function-before",)))
            msg = err["msg"]
            if err["type"] == CLASH:  # reported at the field it names
                loc = loc + tuple(err["ctx"]["clash_field"].split("."))
            if err["type"] == "extra_forbidden":
                section = _section_model(loc[:-1])
                valid = ", ".join(section.model_fields) if section else ""
                msg = f"unknown field {loc[-1]!r}" + (f"; valid fields: {valid}" if valid else "")
            problems.append(str(located.error(loc, msg)))
        raise ConfigError("\n".join(problems)) from None


def _section_model(path: tuple) -> type[BaseModel] | None:
    model: Any = Config
    for key in path:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        for candidate in (ann, *getattr(ann, "__args__", ())):
            inner = getattr(candidate, "__args__", None)
            candidate = inner[0] if inner else candidate
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        else:
            return None
    return model


def iter_plugin_specs(cfg: Config) -> Iterator[tuple[tuple, str, PluginSpec]]:
    """Every plugin spec in ``cfg`` as (path, kind, spec)."""
    for pattern, kind in PLUGIN_FIELDS:
        node: Any = cfg
        for key in pattern[:-1] if pattern[-1] == "*" else pattern:
            node = getattr(node, key)
        if pattern[-1] == "*":
            for i, spec in enumerate(node):
                yield pattern[:-1] + (i,), kind, spec
        elif node is not None:
            yield pattern, kind, node


def check_plugins(cfg: Config, located: Located, registry: Any) -> None:
    from vantage_core.errors import PluginError

    problems = []
    for path, kind, spec in iter_plugin_specs(cfg):
        try:
            registry.get(kind, spec.name)
        except PluginError as exc:
            problems.append(str(located.error(path + ("name",), str(exc))))
            continue
        params = {k: v for k, v in spec.params.items() if k not in NOT_PLUGIN_PARAMS}
        for key, problem in zip(params, registry.check_params(kind, spec.name, params)):
            problems.append(str(located.error(path + (key,), problem)))
    if problems:
        raise ConfigError("\n".join(problems))


def plugin_params(spec: PluginSpec) -> dict[str, Any]:
    """The parameters a plugin factory receives (the core's own keys removed)."""
    return {k: v for k, v in spec.params.items() if k not in NOT_PLUGIN_PARAMS}


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------- sweeps

class SweepRun(BaseModel):
    name: str
    overrides: list[str]


def is_sweep_file(path: str | os.PathLike) -> bool:
    """Whether a YAML file is a sweep (a mapping with a ``base`` config) rather than a config. A
    file that cannot be read or parsed is not judged here: loading it reports why."""
    try:
        data, _ = read_yaml_lines(read_utf8(path, ConfigError), str(path))
    except (OSError, VantageError):
        return False
    return isinstance(data, dict) and "base" in data


def expand_sweep(path: str | os.PathLike) -> tuple[Path, str, list[SweepRun]]:
    """Read a sweep file and expand it into runs.

    The file names a ``base`` config (relative to itself), fixed overrides in ``set``, a ``grid``
    of ``dotted.key: [values]`` expanded as a cartesian product, and/or a list of ``runs`` (each
    a mapping of overrides, with an optional ``name``); runs x grid gives the full set.
    """
    path = Path(path)
    try:
        data, lines = read_yaml_lines(read_utf8(path, ConfigError), str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the sweep file: {exc.strerror or exc}") from None
    located = Located(data if isinstance(data, dict) else {}, lines, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a sweep file is a mapping with base, name, set, grid and runs")
    allowed = {"base", "name", "set", "grid", "runs"}
    for key in data:
        if key not in allowed:
            raise located.error((key,), f"unknown field {key!r}; valid fields: {', '.join(sorted(allowed))}")
    if "base" not in data:
        raise located.error((), "missing field 'base' (the config the sweep starts from)")
    base = (path.parent / str(data["base"])).resolve()
    fixed = [_override_text(k, v) for k, v in (data.get("set") or {}).items()]
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise located.error(("grid",), "grid maps dotted keys to non-empty lists of values")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise located.error(("grid", key), f"grid maps dotted keys to non-empty lists of values, not {values!r}")
    explicit = data.get("runs") or [{}]
    if not isinstance(explicit, list):
        raise located.error(("runs",), "runs is a list of mappings of overrides")
    runs = []
    for i, entry in enumerate(explicit):
        if not isinstance(entry, dict):
            raise located.error(("runs", i), "each run is a mapping of dotted keys to values")
        entry = dict(entry)
        label = entry.pop("name", None)
        for combo in itertools.product(*grid.values()) if grid else [()]:
            chosen = dict(zip(grid, combo))
            parts = [label] if label else [f"{k.split('.')[-2] if k.endswith('.name') else k.split('.')[-1]}={_short(v)}"
                                            for k, v in entry.items()]
            parts += [f"{k.split('.')[-2] if k.endswith('.name') else k.split('.')[-1]}={_short(v)}" for k, v in chosen.items()]
            name = ",".join(p for p in parts if p) or f"run{len(runs)}"
            overrides = fixed + [_override_text(k, v) for k, v in {**entry, **chosen}.items()]
            runs.append(SweepRun(name=name, overrides=overrides))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise located.error(("runs",), f"two runs would share a name: {sorted(n for n in names if names.count(n) > 1)[0]!r}; give them names")
    return base, str(data.get("name") or path.stem), runs


def _override_text(key: str, value: Any) -> str:
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def _short(value: Any) -> str:
    return str(value).replace(" ", "")
