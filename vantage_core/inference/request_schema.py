"""What a request may send the server: text types that refuse lone surrogates, a schema given as
fields (:class:`SchemaIn`) or as CREATE TABLE statements (:func:`schema_from_ddl`), and the limit on
a schema's size. Used by the server's routes (:mod:`vantage_core.inference.serve`) and the
OpenAI-compatible ones (:mod:`vantage_core.inference.openai_api`).

The server's request and response models are derived from the engine's own types
(:func:`option_fields` from the config's ``inference`` section, :func:`dataclass_model` from a
dataclass such as :class:`~vantage_core.inference.engine.Generation`), so a field added there
reaches the API without being written twice."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from vantage_core.errors import DataError
from vantage_core.sql.schema import Column, ForeignKey, Schema, Table


def utf8_text(value: str) -> str:
    """``value`` if it can be written as UTF-8; a lone surrogate (JSON's ``"\\udfff"``) cannot."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid text: a lone surrogate (U+{ord(value[exc.start]):04X}) at character "
                         f"{exc.start}; send UTF-8 text") from None
    return value


def utf8_str(min_length: int = 0, max_length: int | None = None) -> Any:
    """A str type with these lengths that refuses lone surrogates, for a field that may also be
    None (pydantic refuses them in a plain str field, not in a union)."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length), AfterValidator(utf8_text)]


Name = utf8_str(1, 128)
DDL = utf8_str(1, 32000)
ConstraintName = utf8_str(0, 64)


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


def schema_from_ddl(ddl: str, db_id: str = "request", max_items: int | None = None) -> Schema:
    """A schema from CREATE TABLE statements (parsed with sqlglot, SQLite dialect), read one
    statement at a time and no further than ``max_items`` tables and columns (then
    :class:`DataError` naming the limit)."""
    try:
        return _schema_from_ddl(ddl, db_id, max_items)
    except DataError:
        raise
    except RecursionError:  # sqlglot recurses once per nesting level: 5,000 parentheses
        raise DataError("schema_sql: nested too deeply to read") from None
    except Exception as exc:  # noqa: BLE001 - whatever sqlglot trips on, the DDL is what is wrong
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"schema_sql: not valid SQL: {first}") from None


def _schema_from_ddl(ddl: str, db_id: str, max_items: int | None) -> Schema:
    import sqlglot

    dialect = sqlglot.Dialect.get_or_raise("sqlite")
    parser = dialect.parser()
    tables, fks, items = [], [], 0
    for tokens in _statement_tokens(dialect.tokenize(ddl)):
        for statement in parser.parse(tokens, ddl):
            if statement is None:
                continue
            table, table_fks = _table_of(statement)
            tables.append(table)
            fks += table_fks
            items += 1 + len(table.columns)
            if max_items is not None and items > max_items:
                raise DataError(f"schema_sql: more than {max_items} tables and columns (reading stopped at "
                                f"table {table.name!r}); {limit_text(max_items)}")
    if not tables:
        raise DataError("schema_sql: no CREATE TABLE statement")
    return Schema(db_id, tables, _resolved(fks, tables))


def _statement_tokens(tokens: list) -> list[list]:
    """The tokens of each statement (split at the semicolons between them)."""
    from sqlglot.tokens import TokenType

    out: list[list] = [[]]
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            out.append([])
        else:
            out[-1].append(token)
    return [chunk for chunk in out if chunk]


def _table_of(statement: Any) -> tuple[Table, list[ForeignKey]]:
    """The table a CREATE TABLE statement makes, and its foreign keys (a reference without its
    column names the column as None). Columns may go without a type, as SQLite allows."""
    from sqlglot import exp

    from vantage_core.sql.schema import coarse_type

    if not isinstance(statement, exp.Create) or not isinstance(statement.this, exp.Schema):
        raise DataError(f"schema_sql: only CREATE TABLE statements are accepted, got: {statement.key.upper()}")
    name = statement.this.this.name
    cols, pks, fks = [], [], []
    for d in statement.this.expressions:
        if isinstance(d, exp.Identifier):  # a column without a type: CREATE TABLE a(x, y)
            cols.append(Column(d.name, coarse_type("")))
        elif isinstance(d, exp.ColumnDef):
            kind = d.args.get("kind")
            cols.append(Column(d.name, coarse_type(kind.sql() if kind else "")))
            for c in d.constraints:
                if isinstance(c.kind, exp.PrimaryKeyColumnConstraint):
                    pks.append(d.name)
                elif isinstance(c.kind, exp.Reference):
                    fks += _references(name, [d.name], c.kind)
        elif isinstance(d, exp.PrimaryKey):
            pks += [e.name for e in d.expressions]
        elif isinstance(d, exp.ForeignKey):
            fks += _references(name, [e.name for e in d.expressions], d.args.get("reference"))
    if not cols:
        raise DataError(f"schema_sql: table {name!r} has no columns")
    return Table(name, cols, primary_keys=pks), fks


def _references(table: str, columns: list[str], ref: Any) -> list[ForeignKey]:
    from sqlglot import exp

    if ref is None:
        return []
    if isinstance(ref.this, exp.Schema):
        return [ForeignKey(table, src, ref.this.this.name, dst.name) for src, dst in zip(columns, ref.this.expressions)]
    return [ForeignKey(table, src, ref.this.name, None) for src in columns[:1]]


def _resolved(fks: list[ForeignKey], tables: list[Table]) -> list[ForeignKey]:
    """Foreign keys with a bare ``REFERENCES t`` pointed at t's one primary key (dropped where
    t has none, or several)."""
    pks = {t.name.lower(): t.primary_keys for t in tables}
    out = []
    for fk in fks:
        if fk.ref_column is None:
            ref = pks.get(fk.ref_table.lower(), [])
            if len(ref) != 1:
                continue
            fk = ForeignKey(fk.table, fk.column, fk.ref_table, ref[0])
        out.append(fk)
    return out


def schema_items(schema: Schema) -> int:
    """How many tables and columns ``schema`` has: what a request's cost grows with."""
    return sum(1 + len(t.columns) for t in schema.tables)


def limit_text(max_items: int) -> str:
    return f"this server's limit is {max_items} tables and columns in all (vantage serve --max-schema-items)"


def check_schema_size(schema: Schema, max_items: int, what: str) -> None:
    """:class:`DataError` when ``schema`` has more than ``max_items`` tables and columns."""
    n = schema_items(schema)
    if n > max_items:
        raise DataError(f"{what}: {len(schema.tables)} tables and {n - len(schema.tables)} columns; "
                        f"{limit_text(max_items)}")


# ---------------------------------------------------------------------------- models derived from the engine's types

BOUNDS = ("ge", "gt", "le", "lt", "min_length", "max_length", "allow_inf_nan")  # what a field's metadata may bound


def field_bounds(info: Any) -> dict[str, Any]:
    """The bounds a pydantic field declares (``ge``, ``le``, ``allow_inf_nan``, ...), as ``Field`` takes them."""
    return {name: getattr(m, name) for m in info.metadata for name in BOUNDS if getattr(m, name, None) is not None}


def option_fields(section: type[BaseModel], names: typing.Sequence[str], limits: dict[str, dict],
                  replaced: dict[str, tuple]) -> dict[str, tuple]:
    """Request fields for the fields ``names`` of a config section, in that order: each of the
    section's type with its bounds, optional (None: the model's configured value); ``limits``
    adds or tightens a field's bounds; ``replaced`` gives a field its own ``(type, Field)``
    (a constraint is asked for by name, not as a plugin spec)."""
    out = {}
    for name in names:
        if name in replaced:
            out[name] = replaced[name]
            continue
        info = section.model_fields[name]
        out[name] = (info.annotation | None, Field(None, **{**field_bounds(info), **limits.get(name, {})}))
    return out


def dataclass_model(cls: type, name: str, *, types: dict[str, Any] | None = None,
                    required: typing.Sequence[str] = ()) -> type[BaseModel]:
    """A pydantic model ``name`` with the public fields of dataclass ``cls``, in its order,
    with its types and defaults: ``types`` gives a field the type it has on the wire, a field in
    ``required`` is always sent though ``cls`` gives it a default."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name.startswith("_"):
            continue
        default: Any = ...
        if f.name not in required and f.default is not dataclasses.MISSING:
            default = f.default
        elif f.name not in required and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()  # a fresh value: the model copies it per instance
        fields[f.name] = ((types or {}).get(f.name, hints[f.name]), default)
    return create_model(name, **fields)
