"""Reading text files whose bytes may not be UTF-8, with an error that names the file, line and
column (instead of a UnicodeDecodeError traceback)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from vantage_core.errors import DataError, VantageError


def utf8_error(path: str | os.PathLike, data: bytes, exc: UnicodeDecodeError,
               error: type[VantageError] = DataError) -> VantageError:
    """The error for ``data`` (the bytes of ``path``) failing to decode at ``exc.start``."""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return error(f"{path}:{line}:{column}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); "
                 f"save the file as UTF-8")


def read_utf8(path: str | os.PathLike, error: type[VantageError] = DataError) -> str:
    """The text of ``path``; ``error`` (a :class:`VantageError`) naming where it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise utf8_error(path, data, exc, error) from None


def decode_line(raw: bytes, path: str | os.PathLike, lineno: int,
                error: type[VantageError] = DataError) -> str:
    """One line's bytes as text; ``error`` naming the file, line and column where it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}:{lineno}:{exc.start + 1}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})") from None


LINE_END = re.compile(r"\r\n|\r|\n")


def text_lines(text: str) -> list[str]:
    """The lines of ``text`` split at line ends only; ``str.splitlines`` would also split at a
    form feed, a vertical tab or U+2028 inside a query, turning one prediction into two."""
    lines = LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def json_lines(text: str, path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, value) for each non-blank line of JSON Lines ``text`` read from ``path``;
    :class:`DataError` naming the file and line that is not JSON."""
    for lineno, line in enumerate(text_lines(text), 1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
