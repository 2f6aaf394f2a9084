"""Reading a release's JSON and JSON-lines files with errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from vantage_core.errors import DataError


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from None


def read_jsonl(path: str | Path, *, strict: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, object)`` per non-empty line.

    A malformed line raises :class:`DataError` naming file and line; with ``strict=False`` it
    yields ``(line_number, DataError)`` instead, so the caller can count it and go on.
    """
    path = Path(path)
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                err = DataError(f"{path}:{lineno}: malformed JSON line: {exc.msg} (column {exc.colno})")
                if strict:
                    raise err from None
                yield lineno, err


def require(row: dict, fields: tuple[str, ...], where: str) -> None:
    """Raise :class:`DataError` at ``where`` (``file:line``) when ``row`` lacks a field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields {', '.join(fields)}, got {type(row).__name__}")
    missing = [f for f in fields if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(map(repr, missing))}; "
                        f"the row has {', '.join(map(repr, row)) or 'no fields'}")
