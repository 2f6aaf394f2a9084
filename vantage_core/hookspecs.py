"""Every hook a Vantage plugin can implement, in one place.

Each hook is a *registration* hook: Vantage calls it once per plugin with a ``register``
callback, and the plugin calls ``register(name, factory)`` for each component it offers. The
``name`` is exactly the name a YAML config uses (``router: {name: topk, k: 2}``); the other keys
of that mapping are passed to ``factory`` as keyword arguments, checked against its signature
before any work starts. Passing a callback (rather than returning a list) lets the core add
keyword arguments to ``register`` later without breaking a plugin.

A minimal plugin module::

    from vantage_core.api import hookimpl

    @hookimpl
    def register_routers(register):
        register("my_router", MyRouter)

declared in its ``pyproject.toml`` under the ``vantage`` entry-point group::

    [project.entry-points.vantage]
    my_plugin = "my_package.my_module"

Everything a plugin imports from Vantage comes from :mod:`vantage_core.api`, grouped there by hook.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import pluggy

hookspec = pluggy.HookspecMarker("vantage")


class Register(Protocol):
    """The callback handed to every ``register_*`` hook."""

    def __call__(self, name: str, factory: Callable[..., Any], *, description: str = "") -> None:
        """Offer ``factory`` under ``name``; ``description`` defaults to its docstring's first line."""


@hookspec
def register_routers(register: Register) -> None:
    """Register token-to-expert routers.

    ``factory(d_model: int, num_experts: int, **params)`` returns an ``mlx.nn.Module`` whose
    ``__call__(x)`` takes ``x`` of shape ``(N, d_model)`` and returns a
    :class:`vantage_core.model.moe.Routing` (expert indices ``(N, k)``, combine weights
    ``(N, k)``, router probabilities and the auxiliary losses it adds to the training loss).
    """


@hookspec
def register_experts(register: Register) -> None:
    """Register expert feed-forward banks.

    ``factory(d_model: int, hidden: int, num_experts: int, **params)`` returns an
    ``mlx.nn.Module`` implementing :class:`vantage_core.model.moe.ExpertBank`: the weights of
    all experts, applied to token blocks already grouped by expert.
    """


@hookspec
def register_schema_encoders(register: Register) -> None:
    """Register schema encoders: what the decoder reads besides its own tokens.

    ``factory(d_model: int, tokenizer, **params)`` (``tokenizer``: the decoder's
    :class:`vantage_core.data.tokenizer.Tokenizer`, for encoders that share it) returns an ``mlx.nn.Module``
    implementing :class:`vantage_core.model.schema.SchemaEncoder`: ``inputs(batch)`` turns a
    host-side batch into arrays (outside the gradient: frozen models and caches belong here),
    ``memory(arrays)`` gives a :class:`vantage_core.model.schema.Memory`, the states
    cross-attention reads and, for pointer models, the schema items and question pieces the
    pointer and copy heads choose from (then ``provides_items = True`` and a
    ``question_tokenizer``, whose pieces the data pipeline counts copied spans in).
    Encoders over serialized schema text get both methods from
    :class:`vantage_core.model.schema.TextSchemaEncoder`.
    """


@hookspec
def register_schema_linkers(register: Register) -> None:
    """Register schema linkers: which question words name which tables, columns and cell values.

    ``factory(**params)`` returns a linker with

    - ``uses_values: bool``: whether the caller should read the database's cell values for it
      (reading them costs a pass over every text column, so a linker that ignores them says so);
    - ``link(question_words: list[str], items: list[SchemaItem], values: dict[tuple[str, str],
      set[str]] | None) -> Links``, with ``SchemaItem`` and ``Links`` those of
      ``vantage_core.data.linking``. ``values`` maps ``(table, column)`` (lower-cased)
      to the column's normalized distinct values (and the meanings schema notes give them), or
      is ``None`` when ``uses_values`` is false. An item's ``synonyms`` (from schema notes) are
      other names it goes by, as normalized words like its ``words``.

    ``Links`` holds per-item features (``item_name``, ``item_value``: one per item) and per-word
    features (``word_table``, ``word_column``, ``word_value``: one per question word). The model
    embeds them with fixed-size embeddings, so the ranges are part of the contract: name features
    (``item_name``, ``word_table``, ``word_column``) are 0 (none), 1 (partial) or 2 (exact);
    value features (``item_value``, ``word_value``) are 0 or 1.
    """


@hookspec
def register_databases(register: Register) -> None:
    """Register database connectors; the name is the URL scheme that selects one
    (``duckdb:///file.duckdb`` builds the connector registered as ``duckdb``).

    ``factory(url: str, **params)`` returns a :class:`vantage_core.sql.database.Database` (subclass it)
    for the database at ``url``, which does four things: ``schema()`` introspects tables, columns
    (Spider's coarse types), primary and foreign keys into a :class:`~vantage_core.sql.schema.Schema`;
    ``column_values(...)`` / ``cased_values(...)`` read distinct cell values for the schema linker,
    capped per column; ``transpile(sql)`` turns the model's SQLite SQL into the engine's dialect
    (sqlglot), refusing anything but one reading statement; ``execute(sql, timeout_s, max_rows,
    max_result_bytes, digest)`` checks the transpiled SQL on the engine (``EXPLAIN``) and runs it
    read-only and bounded, returning a :class:`~vantage_core.sql.database.DialectResult` (rows, error,
    both SQL texts) and never raising for bad SQL; ``signature()`` (optional) says what changes when
    the database is written, so that what was read from it is read again. The built-ins are
    ``sqlite`` (:mod:`vantage_core.sql.sqlite`), ``duckdb`` and ``postgresql``, all registered by
    ``plugins/vantage_plugins/databases/``.
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Register dataset adapters.

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.data.example.DatasetAdapter`: ``load(split)`` gives the split's
    :class:`~vantage_core.data.example.Example` rows with a count of what was skipped and why.
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register evaluation metrics.

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.evaluate.metric.Metric`: it scores one prediction against one example
    and summarizes many scores.
    """


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register tokenizers for the decoder's text.

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.data.tokenizer.Tokenizer` (train, encode, decode, save, load).
    """


@hookspec
def register_constraints(register: Register) -> None:
    """Register decoding constraints (logits processors).

    ``factory(**params)`` returns an object implementing
    :class:`vantage_core.inference.constraints.Constraint`: ``bind(schema, tokenizer, eos_id,
    features=None)`` gives, per request, a processor that masks the next-token logits that
    cannot continue a valid query (``features``: a pointer model's featurized question). A
    factory with ``targets`` (the ``data.target`` values whose output it masks: ``"tokens"``,
    ``"actions"``) is refused up front on any other model.
    """


@hookspec
def register_loggers(register: Register) -> None:
    """Register telemetry sinks for training runs.

    ``factory(run_dir: str, config: dict, **params)`` returns an object with ``log(step: int,
    metrics: dict)`` and ``close()``.
    """
