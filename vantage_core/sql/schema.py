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
    # what the database's owner says (SQL comments, a notes file: vantage_core/data/notes.py)
    description: str | None = None
    synonyms: list[str] = field(default_factory=list)  # other names people use for it
    values: dict[str, str] = field(default_factory=dict)  # stored value -> what it means


@dataclass
class Table:
    name: str
    columns: list[Column]
    natural_name: str | None = None
    primary_keys: list[str] = field(default_factory=list)  # column names
    description: str | None = None
    synonyms: list[str] = field(default_factory=list)


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
        """The schema as plain data; the notes' fields only where set, so a schema without notes
        reads as it always has (and keys the same caches)."""
        out = asdict(self)
        for t in out["tables"]:
            for part in (t, *t["columns"]):
                for key in NOTE_FIELDS:
                    if key in part and not part[key]:
                        del part[key]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Schema":
        return cls(
            db_id=d["db_id"],
            tables=[Table(t["name"], [Column(**c) for c in t["columns"]], t.get("natural_name"),
                          list(t.get("primary_keys", [])), t.get("description"), list(t.get("synonyms", [])))
                    for t in d["tables"]],
            foreign_keys=[ForeignKey(**fk) for fk in d.get("foreign_keys", [])],
        )


NOTE_FIELDS = ("description", "synonyms", "values")  # left out of Schema.to_dict where empty


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
