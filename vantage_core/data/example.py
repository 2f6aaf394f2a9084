"""The example type every dataset adapter produces, and the adapter protocol (the schema types
are :mod:`vantage_core.sql.schema`'s)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from vantage_core.sql.schema import Schema


@dataclass
class Example:
    question: str
    sql: str  # the gold query
    db_id: str
    schema: Schema
    db_paths: list[str]  # SQLite file(s) to execute on; several for test-suite evaluation
    source: str = ""  # the adapter's registered name
    extras: dict[str, Any] = field(default_factory=dict)  # evidence, difficulty, domain, ...
    id: str = ""  # unique within a load: "<source>/<split>/<index>" unless the release has ids

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "schema": self.schema.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        d = dict(d)
        d["schema"] = Schema.from_dict(d["schema"])
        return cls(**d)


@dataclass
class LoadReport:
    """What a load gave: the examples, and how many rows were skipped and why."""

    examples: list[Example]
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    details: list[str] = field(default_factory=list)  # one line per skipped row: file:line: reason
    notes: list[str] = field(default_factory=list)  # what the adapter did to the rows it kept, one line each

    def skip(self, reason: str, detail: str) -> None:
        """Count one skipped row under ``reason``; ``detail`` says which (``file:line: ...``)."""
        self.skipped[reason] += 1
        self.details.append(detail)

    def summary(self, name: str, split: str) -> str:
        total = len(self.examples) + sum(self.skipped.values())
        why = "; ".join(f"{n} {reason}" for reason, n in self.skipped.most_common()) or "none"
        notes = "".join(f"; {note}" for note in self.notes)
        return f"{name}/{split}: {len(self.examples)} loaded of {total}, skipped: {why}{notes}"


class DatasetAdapter(Protocol):
    """What a registered dataset factory returns."""

    splits: tuple[str, ...]

    def load(self, split: str) -> LoadReport:
        """Read one split; raise :class:`vantage_core.errors.DataError` naming the file (and line)
        when the release itself is unreadable."""
