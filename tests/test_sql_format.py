"""SQL formatted for people (``vantage_core.sql.format.formatted_sql``): keywords and known
functions upper case, one space between tokens and none in ``f(x)`` or ``T1.name``, names
unquoted only where they can only be names; and the formatted text means what the raw text means,
checked by running both on real SQLite databases (one made here, and Spider's with its gold
queries, real predictions and broken mutations) and comparing their rows or errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from vantage_core.sql.format import formatted_sql, sql_tokens


@pytest.mark.parametrize("raw, expected", [
    ("select count ( * ) from singer", "SELECT COUNT(*) FROM singer"),
    ("select singer.name , singer.age from singer where singer.age > 30 order by singer.age desc limit 1",
     "SELECT singer.name, singer.age FROM singer WHERE singer.age > 30 ORDER BY singer.age DESC LIMIT 1"),
    ("SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id  =  T2.singer_id",
     "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id"),
    ("select t1 . name from singer as t1", "SELECT t1.name FROM singer AS t1"),
    ("select avg ( age ) , max(age)-min( age ) from singer", "SELECT AVG(age), MAX(age) - MIN(age) FROM singer"),
    ("select * from t where x = - 1 and y in ( 1 , 2 )", "SELECT * FROM t WHERE x = -1 AND y IN (1, 2)"),
    ("select x from t where y not in ( select y from u ) intersect select x from v",
     "SELECT x FROM t WHERE y NOT IN (SELECT y FROM u) INTERSECT SELECT x FROM v"),
    ("select count ( distinct t.a ) from t group by t.b having count(*) > 1",
     "SELECT COUNT(DISTINCT t.a) FROM t GROUP BY t.b HAVING COUNT(*) > 1"),
    ("select cast ( x as text ) , f ( x ) from t", "SELECT CAST(x AS text), f(x) FROM t"),
    ("select t.* from t where exists ( select 1 )", "SELECT t.* FROM t WHERE EXISTS (SELECT 1)"),
    ("select x from t order by y nulls first", "SELECT x FROM t ORDER BY y NULLS FIRST"),
    # names: unquoted where they can only be names and need no quotes; kept quoted where needed
    ('select "singer"."name" from "singer" as "s"', "SELECT singer.name FROM singer AS s"),
    ("select `a`.`b` , [c] from `a` as [my alias]", 'SELECT a.b, [c] FROM a AS "my alias"'),
    ('select "my table"."from" from "my table"', 'SELECT "my table"."from" FROM "my table"'),
    # a standalone double-quoted word may be a string to SQLite: kept as written
    ('select name from singer where country = "France"', 'SELECT name FROM singer WHERE country = "France"'),
    # column names that are no keyword stay as written, beside a dot or not
    ("select count, t.select, date from t", "SELECT count, t.select, date FROM t"),
])
def test_formatted_sql_reads_as_people_write_sql(raw, expected):
    """Each raw text becomes the expected one, and formatting it again changes nothing."""
    assert formatted_sql(raw) == expected
    assert formatted_sql(expected) == expected


@pytest.mark.parametrize("raw, expected", [
    ("select 'select  count ( * )' , 'it''s' from t", "SELECT 'select  count ( * )', 'it''s' FROM t"),
    ("select x'00ff' , 1.5e3 , ?1 , :name from t", "SELECT x'00ff', 1.5e3, ?1, :name FROM t"),
    ("select a /* keep  this */ from t", "SELECT a /* keep  this */ FROM t"),
    ("select a -- to the end\nfrom t", "SELECT a -- to the end\nFROM t"),
    ("select - -1 , 2 - -3", "SELECT - -1, 2 - -3"),  # never "--": that starts a comment
    ("select 1abc", "SELECT 1abc"),  # SQLite's error on "1abc" stays an error, not "1 abc"
])
def test_literals_comments_and_odd_tokens_are_kept_as_written(raw, expected):
    assert formatted_sql(raw) == expected


@pytest.mark.parametrize("raw", ["select 'unclosed", "select a € b", "select [open", ""])
def test_text_that_is_not_sqlite_tokens_is_returned_as_given(raw):
    assert sql_tokens(raw) is None or raw == ""
    assert formatted_sql(raw) == raw


# ---- meaning: the raw and the formatted text give the same rows or the same error ----------

def outcome(con: sqlite3.Connection, sql: str) -> tuple:
    """('rows', rows) or ('error', message) of running ``sql``; ('slow',) past about 200,000
    SQLite steps (the comparison skips those)."""
    steps = iter(range(5))
    con.set_progress_handler(lambda: next(steps, None) is None, 10_000)
    try:
        return ("rows", con.execute(sql).fetchall())
    except sqlite3.Error as exc:
        return ("slow",) if "interrupt" in str(exc) else ("error", str(exc))
    except (sqlite3.Warning, ValueError, OverflowError) as exc:  # e.g. two statements at once
        return ("error", f"{type(exc).__name__}: {exc}")


def differences(con: sqlite3.Connection, queries: list[str]) -> tuple[list, int, int]:
    """The queries whose formatted text runs differently (or changes when formatted again), how
    many were compared (those that finished both ways) and how many the formatting changed."""
    wrong, compared, changed = [], 0, 0
    for sql in queries:
        text = formatted_sql(sql)
        raw, shown = outcome(con, sql), outcome(con, text)
        if ("slow",) in (raw, shown):
            continue
        compared += 1
        changed += text != sql
        if shown != raw or formatted_sql(text) != text:
            wrong.append((sql, text))
    return wrong, compared, changed


MADE_QUERIES = [
    'select "name" , "country" , "nowhere" from singer',  # columns, and a string (no such column)
    "select count ( * ) , sum ( singer.age ) from singer where singer.country = 'France'",
    'select singer . "select" , [the year] , `count` from singer order by "the year" desc',
    'select * from singer where country = "France" and name like \'%a%\' escape \'\\\'',
    "select name from singer where age between - 5 and 40 -- a comment\n order by name",
    "select x'00ff' , - -1 , 2 - -3 , 1.5e1 , 'a''b' , \"c\"\"d\"",
    'select T1 . name from singer as T1 join "match" as T2 on T1 . rowid = T2 . singer_rowid',
    "select name from singer where singer.rowid in ( select singer_rowid from [match] ) union select 'x'",
    "select count ( distinct country ) , group_concat ( name , ' | ' ) from singer",
    "select name /* not -- a line comment */ from singer where not age > 30",
    "select `the year` from singer where [the year] = ( select max ( `the year` ) from singer )",
    "select case when age > 30 then 'old' else 'young' end , cast ( age as text ) from singer",
    "select name from singer limit 1 offset 1",
    "select nosuchcolumn from singer",  # an error both ways
    "select 1abc",  # an error both ways
]


def test_formatted_sql_runs_like_the_raw_text_on_a_database_made_here(tmp_path):
    """Tricky names (a keyword column, spaces, a table called match), strings in double quotes,
    comments, blobs and signs: every query gives the same rows or error raw and formatted."""
    con = sqlite3.connect(tmp_path / "made.sqlite")
    con.executescript("""
        CREATE TABLE singer (name TEXT, country TEXT, age INTEGER, "select" TEXT, "the year" INTEGER, count INTEGER);
        INSERT INTO singer VALUES ('Ann', 'France', 31, 's1', 2001, 3), ('Bo', 'Chile', 25, 's2', 1999, 5),
                                  ('Cy', 'France', 40, 's3', 2010, 7), ('Dee''s', 'France', 19, NULL, NULL, NULL);
        CREATE TABLE "match" (singer_rowid INTEGER, score REAL);
        INSERT INTO "match" VALUES (1, 2.5), (3, 4.0);
    """)
    wrong, compared, changed = differences(con, MADE_QUERIES)
    assert not wrong, wrong
    assert compared == len(MADE_QUERIES) and changed == len(MADE_QUERIES)


def spider_queries(root: Path) -> dict[str, list[str]]:
    """db_id -> queries: every gold query of the training split, each also as a model writes it
    (lower case, a space between every two tokens), and the predictions of the evaluator's
    verdict files (a real system's, and mutations that include broken SQL)."""
    by_db: dict[str, list[str]] = {}
    for e in json.loads((root / "train_spider.json").read_text()):
        spaced = " ".join(t.text.lower() if t.kind == "word" else t.text for t in sql_tokens(e["query"]) or [])
        by_db.setdefault(e["db_id"], []).extend([e["query"], spaced])
    for name in ("train_others.jsonl", "train_mutations.jsonl"):
        for line in (root / "verdicts" / name).read_text().splitlines():
            row = json.loads(line)
            by_db.setdefault(row["db_id"], []).extend([row["gold"], row["pred"]])
    return {db: list(dict.fromkeys(q for q in queries if q)) for db, queries in by_db.items()}


@pytest.mark.data
@pytest.mark.slow
def test_formatted_sql_runs_like_the_raw_text_on_spider(shared_data):
    """Every Spider gold query, its model-style spacing and the verdict files' predictions give
    the same rows or the same error raw and formatted, on the real databases (read-only)."""
    root = shared_data / "spider"
    wrong, compared, changed = [], 0, 0
    for db, queries in sorted(spider_queries(root).items()):
        path = root / "database" / db / f"{db}.sqlite"
        if not path.is_file():
            continue
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        found = differences(con, queries)
        con.close()
        wrong += found[0]
        compared, changed = compared + found[1], changed + found[2]
    assert not wrong, wrong[:5]
    assert compared > 12_000 and changed > 9_000, (compared, changed)
