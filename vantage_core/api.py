"""Everything a Vantage plugin imports, in one place: ``from vantage_core.api import ...``.

A plugin (built in under ``plugins/vantage_plugins/`` or third party) imports Vantage only from
this module; the modules behind it may move without breaking a plugin. Each hook is specified in
:mod:`vantage_core.hookspecs`. The names, grouped by what they serve:

Every plugin
    ``hookimpl``: the marker for hook implementations (``@hookimpl def register_routers(register)``).
    ``ConfigError``, ``DataError``, ``PluginError``: the errors a plugin raises for a bad
    parameter, bad data or a missing dependency; Vantage prints their message as one line.

Schemas and examples (datasets, databases, linkers, metrics)
    ``Schema``: a database's tables and foreign keys (``db_id``, ``tables``, ``foreign_keys``).
    ``Table``: a table's ``name``, ``columns``, ``natural_name`` and ``primary_keys``.
    ``Column``: a column's ``name``, coarse ``type`` (text, number, time, boolean, others) and
    ``natural_name``.
    ``ForeignKey``: ``table.column`` referencing ``ref_table.ref_column``.
    ``Example``: one question with its gold SQL, database id, schema and database files.
    ``schema_from_sqlite``, ``connect_readonly``, ``quoted``.

Routers (``register_routers``)
    ``Routing``, ``expert_load``.

Experts (``register_experts``) and schema encoders
    ``kernels``: the fused kernels (``kernels.swiglu``, ``kernels.attention``, ...), and
    ``kernels.matmul``: the product an expert's weights are applied with (bf16 inputs and float32
    sums in mixed-precision training, ``train.precision``).
    ``Linear``: ``mlx.nn.Linear`` (same parameters) whose product follows ``train.precision``
    the same way.

Schema encoders (``register_schema_encoders``)
    ``TextSchemaEncoder``, ``Memory``, ``pad_batch``, ``Dropout``, ``Packing``, ``pack``,
    ``unpack``, ``packing_arrays``.
    ``RELATIONS``: the names of the relations between question words and schema items, in the
    order of the ids in a batch's relation matrix.

Schema linkers (``register_schema_linkers``)
    ``Links``, ``SchemaItem``, ``schema_items``, ``normalize``, ``stem``.
    ``NAME_NONE``, ``NAME_PARTIAL``, ``NAME_EXACT``: the values of a name-match feature (0, 1, 2).

Databases (``register_databases``)
    ``QueriedDatabase``, ``SQLiteDatabase``, ``ExecutionResult``, ``fetch_bounded``, ``plain``,
    ``describe``, ``file_of_url``, ``privileged_allowed``, ``SandboxPool``, ``coarse_type``,
    ``file_signature``; for ``vantage data load-into``: ``read_sqlite``, ``creation_order``,
    ``LoadSummary``.

Datasets (``register_datasets``)
    ``LoadReport``, ``read_json``, ``read_jsonl``, ``utf8_error``, ``schema_from_spider_tables``,
    ``missing_in_database``; for a dataset that ships its databases' notes: ``read_notes``,
    ``apply_notes``.
    ``NOTES_SUFFIX``: how a notes file's name ends beside its database (``shop.notes.yaml``).

Metrics (``register_metrics``)
    ``ExecutingMetric``, ``summarize_by``, ``results_equal``, ``spider`` (Spider's official
    metrics: parser, normalization, hardness, exact and execution match).

Tokenizers (``register_tokenizers``)
    ``SentencePieceTokenizer``.
    ``META_FILE``: the file in a tokenizer folder that names the registered tokenizer and its
    parameters.
    ``PAD``, ``BOS``, ``EOS``, ``UNK_LIT``, ``SPECIALS``: the special tokens of the SQL action
    vocabulary, and all of them in id order.

Constraints (``register_constraints``)
    ``apply_mask``, ``token_surfaces``, ``sqlite_prepare_error``; for models that write SQL as
    actions, ``SchemaItem`` and ``schema_items`` (above) and the action vocabulary's constants:
    ``VOCAB``, ``ITEM``, ``QUESTION``: the three sources an action is drawn from (a vocabulary
    token, a schema item, a copied question span).
    ``CLAUSES``, ``SET_OPS``: the clause keywords in the order SQL writes them, and the set
    operators.
    ``VALUE_MARKERS``: the tokens that stand for a literal value.
    ``MAX_SPAN``: the longest copied question span, in word pieces.

Loggers (``register_loggers``) need nothing beyond ``hookimpl`` and the errors.

Nothing in ``vantage_core`` imports this module: it sits above every module it re-exports.
"""

from vantage_core import hookimpl, kernels
from vantage_core.data.actions import RELATIONS
from vantage_core.data.example import Example, LoadReport
from vantage_core.data.files import read_json, read_jsonl
from vantage_core.data.linking import NAME_EXACT, NAME_NONE, NAME_PARTIAL, Links, SchemaItem, normalize, schema_items, stem
from vantage_core.data.load_into import LoadSummary, creation_order, read_sqlite
from vantage_core.data.notes import NOTES_SUFFIX, apply_notes, read_notes
from vantage_core.data.schemas import missing_in_database, schema_from_spider_tables
from vantage_core.data.sql_actions import (BOS, CLAUSES, EOS, ITEM, MAX_SPAN, PAD, QUESTION, SET_OPS, SPECIALS, UNK_LIT,
                                           VALUE_MARKERS, VOCAB)
from vantage_core.data.tokenizer import META_FILE, SentencePieceTokenizer
from vantage_core.errors import ConfigError, DataError, PluginError
from vantage_core.evaluate import spider
from vantage_core.evaluate.metric import ExecutingMetric, summarize_by
from vantage_core.evaluate.spider import results_equal
from vantage_core.inference.constraints import apply_mask, sqlite_prepare_error, token_surfaces
from vantage_core.model.moe import Routing, expert_load
from vantage_core.model.packing import Packing, pack, packing_arrays, unpack
from vantage_core.model.schema import Memory, TextSchemaEncoder, pad_batch
from vantage_core.model.transformer import Dropout, Linear
from vantage_core.sql.database import QueriedDatabase, describe, file_of_url, privileged_allowed
from vantage_core.sql.names import quoted
from vantage_core.sql.result import ExecutionResult, fetch_bounded, plain
from vantage_core.sql.sandbox import SandboxPool
from vantage_core.sql.schema import Column, ForeignKey, Schema, Table, coarse_type
from vantage_core.sql.sqlite import SQLiteDatabase
from vantage_core.sql.sqlite_file import connect_readonly, file_signature, schema_from_sqlite
from vantage_core.textfiles import utf8_error

__all__ = [
    # every plugin
    "hookimpl", "ConfigError", "DataError", "PluginError",
    # schemas and examples
    "Schema", "Table", "Column", "ForeignKey", "Example", "schema_from_sqlite", "connect_readonly", "quoted",
    # routers, experts
    "Routing", "expert_load", "kernels", "Linear",
    # schema encoders
    "TextSchemaEncoder", "Memory", "pad_batch", "Dropout", "Packing", "pack", "unpack", "packing_arrays",
    "RELATIONS",
    # schema linkers
    "Links", "SchemaItem", "schema_items", "normalize", "stem", "NAME_NONE", "NAME_PARTIAL", "NAME_EXACT",
    # databases
    "QueriedDatabase", "SQLiteDatabase", "ExecutionResult", "fetch_bounded", "plain", "describe", "file_of_url",
    "privileged_allowed", "SandboxPool", "coarse_type", "file_signature", "read_sqlite", "creation_order",
    "LoadSummary",
    # datasets
    "LoadReport", "read_json", "read_jsonl", "utf8_error", "schema_from_spider_tables", "missing_in_database",
    "read_notes", "apply_notes", "NOTES_SUFFIX",
    # metrics
    "ExecutingMetric", "summarize_by", "results_equal", "spider",
    # tokenizers
    "SentencePieceTokenizer", "META_FILE", "PAD", "BOS", "EOS", "UNK_LIT", "SPECIALS",
    # constraints
    "apply_mask", "token_surfaces", "sqlite_prepare_error", "VOCAB", "ITEM", "QUESTION", "CLAUSES", "SET_OPS",
    "VALUE_MARKERS", "MAX_SPAN",
]
