"""``synthetic``: small SQLite databases in several domains, with question/SQL pairs from
templates. The quickstart's dataset: it needs no download and trains a tiny model in minutes.

Each database has a parent table and a child table with a foreign key to it (departments and
employees, authors and books, ...). Table and column names are drawn from synonym lists per
database, so the held-out databases carry schemas never seen in training; every question names
the tables, columns and values it is about exactly as the schema and the rows spell them, so a
model that reads the schema can answer on an unseen database by copying. Splits are over
different databases. Every gold query is executed on its database when generated, and kept only
when it runs and returns rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from vantage_core.api import Column, DataError, Example, ForeignKey, LoadReport, Schema, Table

VERSION = 1  # bump when generation changes, so cached databases are rebuilt

PERSONS_FIRST = ["Ada", "Ben", "Cora", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lea",
                 "Max", "Nina", "Omar", "Pia", "Quin", "Rosa", "Sam", "Tara", "Uma", "Vic", "Wes", "Yara"]
PERSONS_LAST = ["Smith", "Jones", "Brown", "Lee", "Khan", "Garcia", "Muller", "Rossi", "Silva", "Kim",
                "Novak", "Dubois", "Ito", "Berg", "Costa", "Walsh"]
CITIES = ["Boston", "Paris", "Berlin", "Tokyo", "Madrid", "Oslo", "Lima", "Cairo", "Dublin", "Seoul",
          "Austin", "Milan"]
COUNTRIES = ["France", "Germany", "Japan", "Spain", "Norway", "Peru", "Egypt", "Ireland", "Brazil",
             "Canada", "Italy", "Kenya"]


@dataclass(frozen=True)
class TableSpec:
    names: tuple[tuple[str, ...], ...]  # synonyms for the table (plural)
    label: tuple[tuple[str, ...], tuple[str, ...]]  # (column synonyms, values)
    cat: tuple[tuple[str, ...], tuple[str, ...]]  # a categorical text column
    nums: tuple[tuple[tuple[str, ...], int, int, int], ...]  # (column synonyms, low, high, step)


def _people(n: int = 60) -> tuple[str, ...]:
    return tuple(f"{f} {l}" for l in PERSONS_LAST for f in PERSONS_FIRST)[:n * 4:4]


# domain -> (parent, child); the child refers to the parent through <parent singular>_id
DOMAINS: dict[str, tuple[TableSpec, TableSpec, tuple[str, ...]]] = {
    "company": (
        TableSpec((("departments",), ("divisions",), ("units",)),
                  (("name", "title"), ("Sales", "Research", "Legal", "Finance", "Support", "Design", "Logistics", "Marketing")),
                  (("city", "location", "site"), CITIES),
                  ((("budget", "funding"), 100000, 900000, 1000),)),
        TableSpec((("employees",), ("staff",), ("workers",)),
                  (("name", "full_name"), _people()),
                  (("role", "position", "job"), ("engineer", "manager", "analyst", "clerk", "driver")),
                  ((("salary", "pay", "wage"), 30000, 150000, 500), (("age",), 20, 65, 1))),
        ("department_id", "division_id", "unit_id")),
    "school": (
        TableSpec((("schools",), ("colleges",), ("academies",)),
                  (("name", "school_name"), ("North High", "Lakeside", "Hillcrest", "Riverside", "Oakwood", "Westfield", "Bayview", "Summit")),
                  (("city", "town"), CITIES),
                  ((("founded", "opening_year"), 1850, 2015, 1),)),
        TableSpec((("students",), ("pupils",), ("learners",)),
                  (("name", "student_name"), _people()),
                  (("major", "subject", "track"), ("math", "biology", "history", "art", "physics", "music")),
                  ((("score", "grade", "points"), 40, 100, 1), (("age",), 10, 30, 1))),
        ("school_id", "college_id", "academy_id")),
    "library": (
        TableSpec((("authors",), ("writers",), ("novelists",)),
                  (("name", "pen_name"), _people()),
                  (("country", "nationality"), COUNTRIES),
                  ((("birth_year", "born"), 1900, 1995, 1),)),
        TableSpec((("books",), ("novels",), ("titles",)),
                  (("title", "book_title"), ("Dawn", "Echoes", "Iron Sea", "Blue Hour", "Silent Fields", "Red Sky",
                                             "Glass Road", "Last Train", "Winter Song", "Open Door", "Deep Roots",
                                             "Far Shore", "Night Rain", "Paper Moon", "Cold Light", "Old Maps",
                                             "Wild Grass", "Salt Wind", "Stone Bridge", "High Tide")),
                  (("genre", "category"), ("mystery", "poetry", "fantasy", "drama", "history")),
                  ((("pages", "page_count"), 90, 900, 1), (("price", "cost"), 5, 60, 1))),
        ("author_id", "writer_id", "novelist_id")),
    "store": (
        TableSpec((("suppliers",), ("vendors",), ("makers",)),
                  (("name", "company"), ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay")),
                  (("city", "region"), CITIES),
                  ((("rating", "stars"), 1, 100, 1),)),
        TableSpec((("products",), ("items",), ("goods",)),
                  (("name", "product_name"), ("Lamp", "Chair", "Desk", "Mug", "Kettle", "Clock", "Fan", "Rug", "Vase",
                                              "Shelf", "Stool", "Mirror", "Pillow", "Basket", "Candle", "Blanket",
                                              "Bottle", "Plate", "Bowl", "Towel")),
                  (("color", "category", "kind"), ("red", "blue", "green", "black", "white")),
                  ((("price", "cost"), 3, 400, 1), (("stock", "quantity"), 0, 500, 1))),
        ("supplier_id", "vendor_id", "maker_id")),
    "hospital": (
        TableSpec((("doctors",), ("physicians",), ("surgeons",)),
                  (("name", "doctor_name"), _people()),
                  (("specialty", "field"), ("cardiology", "neurology", "oncology", "pediatrics", "surgery")),
                  ((("experience", "years_active"), 1, 40, 1),)),
        TableSpec((("patients",), ("cases",), ("visitors",)),
                  (("name", "patient_name"), _people()),
                  (("ward", "blood_type", "room_type"), ("A", "B", "C", "D", "E")),
                  ((("age",), 1, 95, 1), (("weight", "mass"), 30, 130, 1))),
        ("doctor_id", "physician_id", "surgeon_id")),
    "music": (
        TableSpec((("artists",), ("bands",), ("singers",)),
                  (("name", "stage_name"), ("Nova", "Echo Park", "The Reds", "Blue Owl", "Solace", "Iron Bloom", "Kite", "Mirage")),
                  (("country", "origin"), COUNTRIES),
                  ((("formed", "debut_year"), 1960, 2020, 1),)),
        TableSpec((("songs",), ("tracks",), ("singles",)),
                  (("title", "song_title"), ("Hello", "Run", "Gold", "Home", "Fire", "Rain", "Stay", "Fly", "Shine",
                                             "River", "Storm", "Echo", "Dream", "Alive", "Wild", "Free", "Night",
                                             "Ocean", "Magic", "Wave")),
                  (("genre", "style"), ("pop", "rock", "jazz", "folk", "soul")),
                  ((("duration", "length"), 120, 420, 1), (("plays", "streams"), 1000, 90000, 100))),
        ("artist_id", "band_id", "singer_id")),
    "sports": (
        TableSpec((("teams",), ("clubs",), ("squads",)),
                  (("name", "team_name"), ("Lions", "Eagles", "Sharks", "Wolves", "Bears", "Hawks", "Tigers", "Falcons")),
                  (("city", "home_city"), CITIES),
                  ((("founded", "year_founded"), 1880, 2010, 1),)),
        TableSpec((("players",), ("athletes",), ("members",)),
                  (("name", "player_name"), _people()),
                  (("position", "role"), ("keeper", "defender", "midfielder", "forward", "captain")),
                  ((("goals", "points"), 0, 60, 1), (("age",), 17, 39, 1))),
        ("team_id", "club_id", "squad_id")),
}

AGGS = {"average": "AVG", "maximum": "MAX", "minimum": "MIN", "total": "SUM"}


@dataclass
class TableInstance:
    name: str
    label: str
    cat: str
    nums: list[str]
    rows: list[dict]
    fk: str | None = None  # a child's column that refers to its parent
    key: str = "id"  # a parent's column that the child's ``fk`` refers to


def _pick_names(rng: random.Random, spec: TableSpec) -> tuple[str, str, str, list[str]]:
    while True:
        name = rng.choice(spec.names)[0]
        label = rng.choice(spec.label[0])
        cat = rng.choice(spec.cat[0])
        nums = [rng.choice(n[0]) for n in spec.nums]
        cols = [label, cat, *nums]
        if len(set(cols)) == len(cols) and "id" not in cols:
            return name, label, cat, nums


def _make_table(rng: random.Random, spec: TableSpec, n_rows: int) -> TableInstance:
    name, label, cat, nums = _pick_names(rng, spec)
    labels = rng.sample(list(spec.label[1]), min(n_rows, len(spec.label[1])))
    rows = []
    num_values = []
    for _, lo, hi, step in spec.nums:  # distinct values: no ties under ORDER BY ... LIMIT
        pool = range(lo, hi + 1, step)
        num_values.append(rng.sample(pool, min(len(labels), len(pool))))
    for i, lab in enumerate(labels):
        row = {"id": i + 1, label: lab, cat: rng.choice(spec.cat[1])}
        for col, values in zip(nums, num_values):
            row[col] = values[i]
        rows.append(row)
    return TableInstance(name, label, cat, nums, rows)


def generate_database(seed: int, index: int) -> tuple[str, str, TableInstance, TableInstance]:
    """The content of database ``index``: (db_id, domain, parent, child)."""
    rng = random.Random(f"synthetic:{seed}:{index}")
    domain = sorted(DOMAINS)[index % len(DOMAINS)] if index < len(DOMAINS) else rng.choice(sorted(DOMAINS))
    pspec, cspec, fk_names = DOMAINS[domain]
    parent = _make_table(rng, pspec, rng.randint(5, 8))
    child = _make_table(rng, cspec, rng.randint(10, 18))
    # the foreign key's name follows the parent's chosen name (departments -> department_id)
    fk = next((f for f, (pn,) in zip(fk_names, pspec.names) if pn == parent.name), fk_names[0])
    child.fk = fk
    # leave the last parent without children now and then, so "that have no ..." has answers
    parent_ids = [r["id"] for r in parent.rows]
    usable = parent_ids[:-1] if rng.random() < 0.5 else parent_ids
    for r in child.rows:
        r[fk] = rng.choice(usable)
    return f"{domain}_{index:03d}", domain, parent, child


def _columns(t: TableInstance) -> list[tuple[str, str]]:
    cols = [("id", "INTEGER"), (t.label, "TEXT"), (t.cat, "TEXT")] + [(n, "INTEGER") for n in t.nums]
    if t.fk:
        cols.append((t.fk, "INTEGER"))
    return cols


def write_database(path: Path, parent: TableInstance, child: TableInstance) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        for t, ref in ((parent, None), (child, parent)):
            cols = _columns(t)
            defs = [f"{c} {ty}" + (" PRIMARY KEY" if c == "id" else "") for c, ty in cols]
            if ref is not None:
                defs.append(f"FOREIGN KEY ({t.fk}) REFERENCES {ref.name}(id)")
            conn.execute(f"CREATE TABLE {t.name} ({', '.join(defs)})")
            names = [c for c, _ in cols]
            conn.executemany(f"INSERT INTO {t.name} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                             [[r[c] for c in names] for r in t.rows])
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp, path)  # atomic: a concurrent reader never sees half a database


def schema_of(db_id: str, parent: TableInstance, child: TableInstance) -> Schema:
    def table(t: TableInstance) -> Table:
        return Table(t.name, [Column(c, "number" if ty == "INTEGER" else "text") for c, ty in _columns(t)],
                     primary_keys=["id"])

    return Schema(db_id, [table(parent), table(child)], [ForeignKey(child.name, child.fk, parent.name, "id")])


def _q(v) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _between(rng: random.Random, values: list[int]) -> int:
    """A threshold strictly inside the column's range, so both sides of it have rows."""
    s = sorted(values)
    return s[rng.randint(1, len(s) - 2)] if len(s) > 2 else s[0]


def make_pair(rng: random.Random, parent: TableInstance, child: TableInstance,
              allowed: frozenset[str] | None = None) -> tuple[str, str, str]:
    """One (template name, question, SQL) drawn at random among the templates ``allowed`` (default:
    all); those that join the two tables only where ``child`` refers to ``parent`` (its ``fk``)."""
    allowed = TEMPLATES if allowed is None else allowed
    t = rng.choice([parent, child, child])  # the child table has more rows and columns
    num = rng.choice(t.nums)
    nums = [r[num] for r in t.rows]
    v = _between(rng, nums)
    x = rng.choice([r[t.cat] for r in t.rows])
    agg_word = rng.choice(sorted(AGGS))
    agg = AGGS[agg_word]
    T, lab, cat = t.name, t.label, t.cat
    P, C = parent, child
    pcat_x = rng.choice([r[P.cat] for r in P.rows])
    plab_x = rng.choice([r[P.label] for r in P.rows])
    cnum = rng.choice(C.nums)
    cv = _between(rng, [r[cnum] for r in C.rows])
    k = rng.randint(2, 4)
    join = f"FROM {C.name} AS T1 JOIN {P.name} AS T2 ON T1.{C.fk} = T2.{P.key}"
    templates = {
        "select": (f"List the {lab} of all {T}.", f"SELECT {lab} FROM {T}"),
        "filter_gt": (f"List the {lab} of {T} with {num} above {v}.", f"SELECT {lab} FROM {T} WHERE {num} > {v}"),
        "filter_lt": (f"List the {lab} of {T} with {num} below {v}.", f"SELECT {lab} FROM {T} WHERE {num} < {v}"),
        "filter_eq": (f"List the {lab} of {T} whose {cat} is {x}.", f"SELECT {lab} FROM {T} WHERE {cat} = {_q(x)}"),
        "filter_and": (f"List the {lab} of {T} whose {cat} is {x} and {num} is above {v}.",
                       f"SELECT {lab} FROM {T} WHERE {cat} = {_q(x)} AND {num} > {v}"),
        "count": (f"How many {T} are there?", f"SELECT COUNT(*) FROM {T}"),
        "count_gt": (f"How many {T} have {num} above {v}?", f"SELECT COUNT(*) FROM {T} WHERE {num} > {v}"),
        "count_eq": (f"How many {T} have {cat} {x}?", f"SELECT COUNT(*) FROM {T} WHERE {cat} = {_q(x)}"),
        "agg": (f"What is the {agg_word} {num} of all {T}?", f"SELECT {agg}({num}) FROM {T}"),
        "agg_eq": (f"What is the {agg_word} {num} of {T} whose {cat} is {x}?",
                   f"SELECT {agg}({num}) FROM {T} WHERE {cat} = {_q(x)}"),
        "group_count": (f"For each {cat}, how many {T} are there?", f"SELECT {cat}, COUNT(*) FROM {T} GROUP BY {cat}"),
        "group_agg": (f"For each {cat}, what is the {agg_word} {num} of {T}?",
                      f"SELECT {cat}, {agg}({num}) FROM {T} GROUP BY {cat}"),
        "having": (f"Which {cat} values have more than {k - 1} {T}?",
                   f"SELECT {cat} FROM {T} GROUP BY {cat} HAVING COUNT(*) > {k - 1}"),
        "argmax": (f"What is the {lab} of the {T} with the highest {num}?",
                   f"SELECT {lab} FROM {T} ORDER BY {num} DESC LIMIT 1"),
        "argmin": (f"What is the {lab} of the {T} with the lowest {num}?",
                   f"SELECT {lab} FROM {T} ORDER BY {num} ASC LIMIT 1"),
        "top_k": (f"List the {lab} of the {k} {T} with the highest {num}.",
                  f"SELECT {lab} FROM {T} ORDER BY {num} DESC LIMIT {k}"),
        "order": (f"List the {lab} of all {T} ordered by {num} from lowest to highest.",
                  f"SELECT {lab} FROM {T} ORDER BY {num} ASC"),
        "distinct": (f"List the distinct {cat} of {T}.", f"SELECT DISTINCT {cat} FROM {T}"),
        "above_avg": (f"List the {lab} of {T} whose {num} is above the average {num}.",
                      f"SELECT {lab} FROM {T} WHERE {num} > (SELECT AVG({num}) FROM {T})"),
        "join_eq": (f"List the {C.label} of {C.name} in {P.name} whose {P.cat} is {pcat_x}.",
                    f"SELECT T1.{C.label} {join} WHERE T2.{P.cat} = {_q(pcat_x)}"),
        "join_label": (f"List the {C.label} of {C.name} in the {P.name} with {P.label} {plab_x}.",
                       f"SELECT T1.{C.label} {join} WHERE T2.{P.label} = {_q(plab_x)}"),
        "join_pair": (f"List the {C.label} of each of the {C.name} and the {P.label} of its {P.name}.",
                      f"SELECT T1.{C.label}, T2.{P.label} {join}"),
        "join_group": (f"For each {P.label} of {P.name}, how many {C.name} are there?",
                       f"SELECT T2.{P.label}, COUNT(*) {join} GROUP BY T2.{P.label}"),
        "join_agg": (f"What is the {agg_word} {cnum} of {C.name} in {P.name} whose {P.cat} is {pcat_x}?",
                     f"SELECT {agg}(T1.{cnum}) {join} WHERE T2.{P.cat} = {_q(pcat_x)}"),
        "not_in": (f"List the {P.label} of {P.name} that have no {C.name}.",
                   f"SELECT {P.label} FROM {P.name} WHERE {P.key} NOT IN (SELECT {C.fk} FROM {C.name})"),
        "in": (f"List the {P.label} of {P.name} that have {C.name} with {cnum} above {cv}.",
               f"SELECT {P.label} FROM {P.name} WHERE {P.key} IN (SELECT {C.fk} FROM {C.name} WHERE {cnum} > {cv})"),
    }
    usable = sorted(n for n in templates if (C.fk is not None or n not in JOIN_TEMPLATES) and n in allowed)
    name = rng.choice(usable)
    return (name, *templates[name])


JOIN_TEMPLATES = frozenset({"join_eq", "join_label", "join_pair", "join_group", "join_agg", "not_in", "in"})
TEMPLATES = frozenset({"select", "filter_gt", "filter_lt", "filter_eq", "filter_and", "count", "count_gt", "count_eq",
                       "agg", "agg_eq", "group_count", "group_agg", "having", "argmax", "argmin", "top_k", "order",
                       "distinct", "above_avg"}) | JOIN_TEMPLATES
ROWS_CHECKED = 1000  # rows of a generated query's result looked at (it must have a value)


def generate_pairs(conn: sqlite3.Connection, draw: Callable[[], tuple[str, str, str]], n: int,
                   skip_errors: bool = False) -> list[tuple[str, str, str]]:
    """``n`` distinct (template, question, SQL) from ``draw`` whose SQL runs on the database of
    ``conn`` and returns a value. ``skip_errors``: a query that fails is passed over (on a
    database of the user's); otherwise it raises (on a generated database, a generator bug)."""
    out, seen = [], set()
    for _ in range(n * 20):
        if len(out) >= n:
            break
        name, question, sql = draw()
        if question in seen:
            continue
        try:
            rows = conn.execute(sql).fetchmany(ROWS_CHECKED)
        except sqlite3.Error:
            if not skip_errors:
                raise
            continue
        if not rows or all(v is None for r in rows for v in r):
            continue
        seen.add(question)
        out.append((name, question, sql))
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("VANTAGE_CACHE", Path.home() / ".cache" / "vantage"))


class SyntheticDataset:
    """Templated questions over generated SQLite databases in 7 domains; splits over different databases."""

    splits = ("train", "validation", "test")

    def __init__(self, n_databases: int = 40, examples_per_db: int = 60, seed: int = 0,
                 out_dir: str | None = None, validation_fraction: float = 0.15, test_fraction: float = 0.15):
        if n_databases < 3:
            raise DataError(f"synthetic: n_databases must be at least 3 (one per split), got {n_databases}")
        if examples_per_db < 1:
            raise DataError(f"synthetic: examples_per_db must be positive, got {examples_per_db}")
        self.n_databases, self.examples_per_db, self.seed = n_databases, examples_per_db, seed
        self.validation_fraction, self.test_fraction = validation_fraction, test_fraction
        key = hashlib.sha1(json.dumps([VERSION, n_databases, seed]).encode()).hexdigest()[:12]
        self.dir = Path(out_dir) if out_dir else default_cache_dir() / "synthetic" / key
        self._by_split: dict[str, list[Example]] | None = None

    def split_of_databases(self) -> dict[str, list[int]]:
        order = list(range(self.n_databases))
        random.Random(f"synthetic-split:{self.seed}").shuffle(order)
        n_val = max(1, round(self.validation_fraction * self.n_databases))
        n_test = max(1, round(self.test_fraction * self.n_databases))
        return {"validation": sorted(order[:n_val]), "test": sorted(order[n_val:n_val + n_test]),
                "train": sorted(order[n_val + n_test:])}

    def _generate(self) -> dict[str, list[Example]]:
        by_split: dict[str, list[Example]] = {}
        for split, indices in self.split_of_databases().items():
            examples = []
            for i in indices:
                db_id, domain, parent, child = generate_database(self.seed, i)
                path = self.dir / db_id / f"{db_id}.sqlite"
                if not path.is_file():
                    write_database(path, parent, child)
                schema = schema_of(db_id, parent, child)
                rng = random.Random(f"synthetic-pairs:{self.seed}:{i}")
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    pairs = generate_pairs(conn, lambda: make_pair(rng, parent, child), self.examples_per_db)
                finally:
                    conn.close()
                for j, (template, question, sql) in enumerate(pairs):
                    examples.append(Example(question, sql, db_id, schema, [str(path)], source="synthetic",
                                            extras={"domain": domain, "template": template},
                                            id=f"synthetic/{db_id}/{j}"))
            by_split[split] = examples
        return by_split

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"synthetic has no split {split!r}; splits: {', '.join(self.splits)}")
        if self._by_split is None:
            self._by_split = self._generate()
        return LoadReport(list(self._by_split[split]))
