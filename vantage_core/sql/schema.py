"""A database's schema: its tables, their columns (with Spider's coarse types), primary and
foreign keys. Every connector reads one, every dataset adapter gives one with each example."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Column:
    name: str  # as in the database
    type: str = "text"  # text | number | time | boolean | others (Spider's coarse types)
    natural_name: str | None = None  # "student id" for student_id, when the dataset gives one


@dataclass
class Table:
    name: str
    columns: list[Column]
    natural_name: str | None = None
    primary_keys: list[str] = field(default_factory=list)  # column names


@dataclass
class ForeignKey:
    table: str
    column: str
    ref_table: str
    ref_column: str


@dataclass
class Schema:
    db_id: str
    tables: list[Table]
    foreign_keys: list[ForeignKey] = field(default_factory=list)

    def table(self, name: str) -> Table | None:
        low = name.lower()
        return next((t for t in self.tables if t.name.lower() == low), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        return cls(
            db_id=d["db_id"],
            tables=[Table(t["name"], [Column(**c) for c in t["columns"]], t.get("natural_name"),
                          list(t.get("primary_keys", []))) for t in d["tables"]],
            foreign_keys=[ForeignKey(**fk) for fk in d.get("foreign_keys", [])],
        )


def coarse_type(declared: str) -> str:
    """Spider's coarse column types from a declared SQLite type."""
    t = (declared or "").lower()
    if any(k in t for k in ("int", "real", "floa", "doub", "num", "dec")):
        return "number"
    if any(k in t for k in ("date", "time", "year")):
        return "time"
    if "bool" in t:
        return "boolean"
    if any(k in t for k in ("char", "text", "clob", "string")) or not t:
        return "text"
    return "others"
