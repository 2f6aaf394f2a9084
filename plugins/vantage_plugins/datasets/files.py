"""The core's JSON readers with one clear error for a file that is not UTF-8 (the line and
column of its first bad byte), the check that a row's text fields hold text, and the schema of a
user's SQLite file as the model sees it (with its notes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from vantage_core.api import DataError, Schema, apply_notes, read_json, read_jsonl, read_notes, schema_from_sqlite, utf8_error


def not_utf8(path: Path) -> DataError:
    """The error naming the first byte of ``path`` that is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return utf8_error(path, data, exc)
    return DataError(f"{path}: not valid UTF-8")


def read_json_utf8(path: Path) -> Any:
    """:func:`read_json`, with a file that is not UTF-8 reported where it goes wrong."""
    try:
        return read_json(path)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def read_jsonl_utf8(path: Path, *, strict: bool = True) -> Iterator[tuple[int, Any]]:
    """:func:`read_jsonl`, with a file that is not UTF-8 reported where it goes wrong."""
    try:
        yield from read_jsonl(path, strict=strict)
    except UnicodeDecodeError:
        raise not_utf8(path) from None


def non_text_fields(row: dict, fields: tuple[str, ...]) -> str | None:
    """Why ``row`` cannot be used when one of ``fields`` is not a string (``question: 123``),
    else None."""
    bad = [f"{f} is {type(row[f]).__name__}" for f in fields if f in row and not isinstance(row[f], str)]
    return f"{', '.join(bad)}, not text" if bad else None


def read_yaml_data(path: Path, what: str, kind: type, shape: str) -> Any:
    """The data of a YAML file shipped with a dataset, which must be a ``kind`` (list or dict);
    an unreadable file or another shape is one :class:`DataError` naming the file, ``what`` it
    holds and the ``shape`` expected."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: cannot read {what}: {exc}") from None
    if not isinstance(data, kind):
        raise DataError(f"{path}: expected {shape}")
    return data


def database_schema(dataset: str, db: str, notes: str | None) -> Schema:
    """The schema of the SQLite file ``db`` with the notes in the file ``notes`` applied (hidden
    tables and columns gone, descriptions and synonyms kept), where given; a missing file is one
    :class:`DataError` naming the ``dataset`` and the parameter."""
    if not db:
        raise DataError(f"{dataset}: give db, the SQLite file the examples are about")
    if not Path(db).is_file():
        raise DataError(f"{dataset}: db {db}: no such SQLite file")
    schema = schema_from_sqlite(db)
    return schema if notes is None else apply_notes(schema, read_notes(notes, schema))
