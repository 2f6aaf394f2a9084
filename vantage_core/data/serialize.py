"""Schema text for the encoder and the prompt, and the prompt itself.

Format (one line)::

    employees: id (number, pk), name (text), dept_id (number, fk departments.id) | departments: ...

With ``cell_values=k`` each column shows up to k values read from the database:
``city (text; Boston, Paris)``. When the text would exceed ``max_tokens``, tables and columns
are ranked by how much the question mentions them and the least relevant are cut; what was cut
is reported in :attr:`SerializedSchema.cut`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from vantage_core.data.example import Example
from vantage_core.sql.schema import Schema, Table
from vantage_core.data.tokenizer import EVIDENCE, SEP, SQL

TABLE_SEP = " | "
_WORD = re.compile(r"[a-z]+|\d+")


def approx_tokens(text: str) -> int:
    """A tokenizer-free token count (words, numbers and punctuation): the default budget unit."""
    return len(re.findall(r"[A-Za-z]+|\d|[^\sA-Za-z\d]", text))


@dataclass
class SerializedSchema:
    text: str
    kept: dict[str, list[str]]  # table -> columns kept, in schema order
    cut: list[str] = field(default_factory=list)  # "table" (whole table) or "table.column"
    n_tokens: int = 0  # by the count_tokens the text was built with


@functools.lru_cache(maxsize=65536)
def _words(text: str) -> frozenset[str]:
    """Lower-case word stems: split on case, underscores, digits; a trailing plural 's' dropped."""
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text).lower()
    return frozenset(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in _WORD.findall(text))


def _mentions(name: str, natural: str | None, question_words: set[str]) -> float:
    words = _words(name) | (_words(natural) if natural else set())
    if not words:
        return 0.0
    return len(words & question_words) / len(words)


def relevance(schema: Schema, question: str | None) -> tuple[dict[str, float], dict[tuple[str, str], float]]:
    """Scores: per table, and per (table, column). Lexical overlap with the question; a table
    also scores from its best column, and keys linking relevant tables score with them."""
    q = _words(question or "")
    col_score = {(t.name, c.name): _mentions(c.name, c.natural_name, q) for t in schema.tables for c in t.columns}
    tab_score = {}
    for t in schema.tables:
        best_col = max((col_score[(t.name, c.name)] for c in t.columns), default=0.0)
        tab_score[t.name] = 2.0 * _mentions(t.name, t.natural_name, q) + best_col
    for fk in schema.foreign_keys:  # a join key is as relevant as the less relevant of its two tables
        link = min(tab_score.get(fk.table, 0.0), tab_score.get(fk.ref_table, 0.0))
        for key in ((fk.table, fk.column), (fk.ref_table, fk.ref_column)):
            if key in col_score:
                col_score[key] = max(col_score[key], link)
    for t in schema.tables:
        for pk in t.primary_keys:
            if (t.name, pk) in col_score:
                col_score[(t.name, pk)] += 0.5  # keys are cheap and needed for joins
    return tab_score, col_score


def _column_text(table: Table, col, fk_of: dict, values: list[str]) -> str:
    marks = [col.type]
    if col.name in table.primary_keys:
        marks.append("pk")
    ref = fk_of.get((table.name.lower(), col.name.lower()))
    if ref:
        marks.append(f"fk {ref[0]}.{ref[1]}")
    inner = ", ".join(marks)
    if values:
        inner += "; " + ", ".join(values)
    return f"{col.name}{_natural(col.name, col.natural_name)} ({inner})"


def _natural(name: str, natural: str | None) -> str:
    """` "Player"` when the natural name says more than the name (WikiSQL's col0 is "Player");
    nothing when it only re-spells it (Spider's "people id" for People_ID)."""
    norm = lambda x: re.sub(r"[^a-z0-9]", "", x.lower())  # noqa: E731
    return f' "{natural}"' if natural and norm(natural) != norm(name) else ""


@dataclass
class _Pieces:
    """What serializing one schema needs, whatever the question: computed once per schema."""

    heads: dict[str, str]  # table -> "name:" text
    columns: dict[str, list[tuple[str, str, int]]]  # table -> [(column, text, tokens)]
    head_tokens: dict[str, int]
    sep_tokens: int
    full: str
    full_tokens: int


def _schema_pieces(schema: Schema, cell_values: int, db_path: str | None,
                   count_tokens: Callable[[str], int], cache: dict | None) -> _Pieces:
    from vantage_core.sql.values import sample_values

    key = ("pieces", schema.db_id, id(schema), db_path, cell_values, count_tokens)
    if cache is not None and key in cache:
        return cache[key][1]
    fk_of = {(fk.table.lower(), fk.column.lower()): (fk.ref_table, fk.ref_column) for fk in schema.foreign_keys}
    heads, columns, head_tokens = {}, {}, {}
    for t in schema.tables:
        heads[t.name] = f"{t.name}{_natural(t.name, t.natural_name)}:"
        head_tokens[t.name] = count_tokens(heads[t.name])
        cols = []
        for c in t.columns:
            values = sample_values(db_path, t.name, c.name, cell_values) \
                if cell_values > 0 and db_path and c.type == "text" else []
            text = _column_text(t, c, fk_of, values)
            cols.append((c.name, text, count_tokens(text)))
        columns[t.name] = cols
    full = TABLE_SEP.join(f"{heads[t.name]} " + ", ".join(x[1] for x in columns[t.name]) for t in schema.tables)
    pieces = _Pieces(heads, columns, head_tokens, count_tokens(TABLE_SEP.strip()) or 1, full, count_tokens(full))
    if cache is not None:
        cache[key] = (schema, pieces)  # the schema is kept alive so that its id is never reused
    return pieces


def serialize_schema(schema: Schema, question: str | None = None, *, cell_values: int = 0,
                     max_tokens: int | None = None, count_tokens: Callable[[str], int] = approx_tokens,
                     db_path: str | None = None, cache: dict | None = None) -> SerializedSchema:
    """The schema as one line of text, cut to ``max_tokens`` by relevance to ``question``.

    ``cell_values`` > 0 reads that many values per text column from ``db_path`` (the first of
    the example's databases). ``cache`` (a dict, shared across calls with the same
    ``count_tokens``) keeps each schema's rendered pieces, cell values and token counts.
    """
    pieces = _schema_pieces(schema, cell_values, db_path, count_tokens, cache)
    kept = {t.name: [c.name for c in t.columns] for t in schema.tables}
    if max_tokens is None or pieces.full_tokens <= max_tokens:
        return SerializedSchema(pieces.full, kept, [], pieces.full_tokens)

    def render(chosen: dict[str, list[str]]) -> str:
        parts = []
        for t in schema.tables:
            if t.name in chosen:
                texts = {c: text for c, text, _ in pieces.columns[t.name]}
                parts.append(f"{pieces.heads[t.name]} " + ", ".join(texts[c] for c in chosen[t.name]))
        return TABLE_SEP.join(parts)

    # Too long: add tables by relevance, each with its columns by relevance, while they fit.
    # Per-piece counts are summed (close to the joined text's count); the joined text is
    # re-counted at the end and trimmed further if the sum fell short.
    tab_score, col_score = relevance(schema, question)
    order = sorted(range(len(schema.tables)), key=lambda i: (-tab_score[schema.tables[i].name], i))
    budget = max_tokens
    chosen: dict[str, list[str]] = {}
    cut: list[str] = []
    for i in order:
        t = schema.tables[i]
        cols = pieces.columns[t.name]
        ranked = sorted(range(len(cols)), key=lambda j: (-col_score[(t.name, cols[j][0])], j))
        picked, cost = [], pieces.head_tokens[t.name] + (pieces.sep_tokens if chosen else 0)
        for j in ranked:
            c_cost = cols[j][2] + (1 if picked else 0)
            if cost + c_cost <= budget:
                picked.append(j)
                cost += c_cost
        if not picked:
            cut.append(t.name)
            continue
        budget -= cost
        chosen[t.name] = [cols[j][0] for j in sorted(picked)]
        cut += [f"{t.name}.{cols[j][0]}" for j in range(len(cols)) if j not in picked]
    text = render(chosen)
    n = count_tokens(text)
    while n > max_tokens and chosen:  # summed counts under-estimated: drop the least relevant column
        t_name, c_name = min(((t, c) for t, cs in chosen.items() for c in cs),
                             key=lambda tc: (col_score[tc] + tab_score[tc[0]]))
        chosen[t_name].remove(c_name)
        cut.append(f"{t_name}.{c_name}")
        if not chosen[t_name]:
            del chosen[t_name]
            cut = [x for x in cut if not x.startswith(f"{t_name}.")] + [t_name]
        text = render(chosen)
        n = count_tokens(text)
    return SerializedSchema(text, chosen, cut, n)


def question_text(example: Example) -> str:
    """The question with the external knowledge some datasets give (BIRD's evidence)."""
    evidence = (example.extras or {}).get("evidence")
    return f"{example.question} {EVIDENCE} {evidence}" if evidence else example.question


def build_prompt(example: Example, ser_cfg: Any = None, *, count_tokens: Callable[[str], int] = approx_tokens,
                 cache: dict | None = None, schema_in_prompt: bool | None = None) -> tuple[str, str]:
    """``(encoder_text, decoder_prompt_text)`` for one example.

    The encoder text is the serialized schema. The decoder prompt is
    ``question <sep> schema <sql>`` (the schema part only when ``schema_in_prompt``, which
    defaults to ``ser_cfg.schema_in_prompt`` or True); the tokenizer adds ``<bos>`` before it,
    and the SQL and ``<eos>`` follow it. ``ser_cfg`` is a
    :class:`vantage_core.config.SerializationConfig` (or anything with its fields).
    """
    ser = serialize_for(example, ser_cfg, count_tokens=count_tokens, cache=cache)
    if schema_in_prompt is None:
        schema_in_prompt = getattr(ser_cfg, "schema_in_prompt", True)
    prompt = f"{question_text(example)} {SEP} {ser.text if schema_in_prompt else ''} {SQL}"
    return ser.text, prompt


def serialize_for(example: Example, ser_cfg: Any = None, *, count_tokens: Callable[[str], int] = approx_tokens,
                  cache: dict | None = None) -> SerializedSchema:
    """:func:`serialize_schema` with the settings of a SerializationConfig."""
    return serialize_schema(
        example.schema, question_text(example),
        cell_values=getattr(ser_cfg, "cell_values", 0),
        max_tokens=getattr(ser_cfg, "max_schema_tokens", None),
        count_tokens=count_tokens, db_path=example.db_paths[0] if example.db_paths else None,
        cache=cache)
