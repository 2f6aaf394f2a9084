"""Rewrites of Spider questions that keep their gold SQL, for measuring robustness to phrasing.

``synonyms``: every mention of a table or column (a phrase of the hand-written table in
``spider_synonyms.yaml``, singular or plural, case-insensitive, whole words, outside quotes) is
replaced by one of its synonyms, chosen by a generator seeded with the question. ``values``: a
column's mention is dropped where the value that follows it in the question implies the column
("banks in the state of Utah" -> "banks in Utah"), by the few patterns of :data:`VALUE_PATTERNS`;
a question no pattern fits stays as it is.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import dataclass
from pathlib import Path

from vantage_core.api import DataError, Example, Schema
from vantage_plugins.datasets.files import read_yaml_data

PERTURBATIONS = ("none", "synonyms", "values")
SYNONYMS_FILE = Path(__file__).with_name("spider_synonyms.yaml")

IRREGULAR_PLURALS = {"person": "people", "man": "men", "woman": "women", "child": "children",
                     "foot": "feet", "staff": "staff", "information": "information", "series": "series"}
IRREGULAR_SINGULARS = {p: s for s, p in IRREGULAR_PLURALS.items()}

# Spans left alone: quoted values, and idioms that use a schema word in another sense.
PROTECTED = re.compile(
    r"\"[^\"]*\"|“[^”]*”|‘[^’]*’|(?<![\w])'[^']*'(?![\w])"
    r"|\b(?:ascending|descending|alphabetical|alphabetic|increasing|decreasing|reverse|chronological"
    r"|lexicographic|lexicographical|numerical|numeric|same)\s+order\b|\bin\s+order\b|\border(?:ed)?\s+by\b",
    re.IGNORECASE)


def plural_of(phrase: str) -> str:
    """The phrase with its last word in the plural ("bank branch" -> "bank branches")."""
    head, _, last = phrase.rpartition(" ")
    low = last.lower()
    if low in IRREGULAR_PLURALS:
        word = IRREGULAR_PLURALS[low]
    elif re.search(r"[^aeiou]y$", low):
        word = last[:-1] + "ies"
    elif re.search(r"(s|x|z|ch|sh)$", low):
        word = last + "es"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


def singular_of(phrase: str) -> str:
    """The phrase with its last word in the singular, by the same rules read backwards."""
    head, _, last = phrase.rpartition(" ")
    low = last.lower()
    if low in IRREGULAR_SINGULARS:
        word = IRREGULAR_SINGULARS[low]
    elif len(low) > 4 and low.endswith("ies"):
        word = last[:-3] + "y"
    elif re.search(r"(ss|x|z|ch|sh)es$", low):
        word = last[:-2]
    elif len(low) > 3 and low.endswith("s") and not low.endswith(("ss", "us", "is")):
        word = last[:-1]
    else:
        word = last
    return f"{head} {word}" if head else word


def number_forms(text: str) -> tuple[str, str]:
    """(singular, plural) of a table entry: ``"a|b"`` spells both, else the plural is made by rule."""
    if "|" in text:
        one, _, many = text.partition("|")
        return one.strip(), many.strip()
    return text.strip(), plural_of(text.strip())


@dataclass(frozen=True)
class Term:
    """A phrase that names a table or column, and what may replace it."""

    singular: str
    plural: str
    synonyms: tuple[tuple[str, str], ...]  # (singular, plural) of each


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _phrase_pattern(forms: list[str]) -> re.Pattern:
    """Any of ``forms`` as whole words (longest first, so "first name" wins over "name")."""
    alts = sorted({f.lower() for f in forms}, key=lambda f: (-len(f), f))
    body = "|".join(r"\s+".join(map(re.escape, f.split())) for f in alts)
    return re.compile(rf"(?<![\w'-])(?:{body})(?![\w-])", re.IGNORECASE)


def _spans(pattern: re.Pattern, text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


def _inside(span: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(a < span[1] and span[0] < b for a, b in spans)


def _in_proper_name(question: str, start: int, word: str) -> bool:
    """Whether a capitalized word continues a capitalized one ("New York City", "Utah State")."""
    return word[:1].isupper() and re.search(r"[A-Z][\w'.-]*\s+$", question[:start]) is not None


def _value_spans(question: str, values: tuple[str, ...]) -> list[tuple[int, int]]:
    """Where the question spells one of the values, as whole words."""
    spans = []
    for value in values:
        if len(value) >= 3:
            pattern = rf"(?<![\w]){re.escape(value)}(?![\w])"
            spans += [m.span() for m in re.finditer(pattern, question, re.IGNORECASE)]
    return spans


def _cased_like(text: str, original: str) -> str:
    return text[:1].upper() + text[1:] if original[:1].isupper() else text


def _with_article_fixed(before: str, replacement: str) -> str:
    """``before`` with a trailing "a"/"an" agreeing with the word that now follows it."""
    m = re.search(r"\b(a|an|A|An)(\s+)$", before)
    if not m:
        return before
    article = "an" if replacement[:1].lower() in "aeiou" else "a"
    article = article.capitalize() if m.group(1)[0].isupper() else article
    return before[:m.start()] + article + m.group(2)


class SynonymTable:
    """One database's phrases and their synonyms."""

    def __init__(self, terms: list[Term]):
        self.by_form: dict[str, tuple[Term, bool]] = {}
        for term in terms:
            self.by_form[term.singular.lower()] = (term, False)
            if term.plural.lower() != term.singular.lower():
                self.by_form.setdefault(term.plural.lower(), (term, True))
        self.pattern = _phrase_pattern(list(self.by_form))

    def rewrite(self, question: str, values: tuple[str, ...] = ()) -> str:
        """``question`` with each mention replaced by a synonym (seeded by the question), except
        inside quotes, proper names and the ``values`` the gold SQL compares with."""
        rng = random.Random(f"spider-synonyms:{question}")
        protected = _spans(PROTECTED, question) + _value_spans(question, values)
        out, last = "", 0
        for m in self.pattern.finditer(question):
            if _inside(m.span(), protected) or _in_proper_name(question, m.start(), m.group(0)):
                continue
            term, is_plural = self.by_form[" ".join(m.group(0).lower().split())]
            singular, plural = rng.choice(term.synonyms)
            replacement = _cased_like(plural if is_plural else singular, m.group(0))
            out = _with_article_fixed(out + question[last:m.start()], replacement) + replacement
            last = m.end()
        return out + question[last:]


def _natural_words(schema: Schema, table_name: str) -> set[str] | None:
    """The singular words of a table's natural name and of its columns' (None: no such table)."""
    table = schema.table(table_name)
    if table is None:
        return None
    names = [table.natural_name or table.name] + [c.natural_name or c.name for c in table.columns]
    return {singular_of(w) for n in names for w in _words(n.replace("_", " "))}


def _term(phrase: str, synonyms: object, where: str) -> Term:
    if (not isinstance(synonyms, list) or not 1 <= len(synonyms) <= 3
            or not all(isinstance(s, str) and s.strip() for s in synonyms)):
        raise DataError(f"{where}: expected a list of 1 to 3 synonyms (text), got {synonyms!r}")
    singular, plural = number_forms(phrase)
    forms = tuple(number_forms(s) for s in synonyms)
    if any(f[0].lower() == singular.lower() for f in forms):
        raise DataError(f"{where}: a synonym repeats the phrase {singular!r}")
    return Term(singular, plural, forms)


def _table_terms(db: dict, schema: Schema, where: str) -> list[Term]:
    """The terms of one database's entry, each checked against the schema."""
    if not isinstance(db, dict):
        raise DataError(f"{where}: expected a mapping of table name -> {{phrase: [synonyms]}}")
    terms, owner = [], {}
    for table_name, phrases in db.items():
        here = f"{where}.{table_name}"
        words = _natural_words(schema, str(table_name))
        if words is None:
            raise DataError(f"{here}: no table {table_name!r} in database {schema.db_id}; tables: "
                            f"{', '.join(t.name for t in schema.tables)}")
        if not isinstance(phrases, dict):
            raise DataError(f"{here}: expected a mapping of phrase -> [synonyms]")
        for phrase, synonyms in phrases.items():
            term = _term(str(phrase), synonyms, f"{here}.{phrase}")
            key = term.singular.lower()
            if key in owner:
                raise DataError(f"{here}.{phrase}: the phrase is listed under {owner[key]} too; give it once per database")
            if not {singular_of(w) for w in _words(term.singular)} & words:
                raise DataError(f"{here}.{phrase}: no word of the phrase is in the natural names of table "
                                f"{table_name} or its columns")
            owner[key] = table_name
            terms.append(term)
    return terms


def load_synonym_tables(schemas: dict[str, Schema], path: Path = SYNONYMS_FILE) -> dict[str, SynonymTable]:
    """``db_id -> SynonymTable`` from the YAML file, each phrase checked against its database's schema."""
    data = read_yaml_data(path, "the synonym table", dict, "a mapping of db_id -> tables")
    tables = {}
    for db_id, db in data.items():
        if db_id not in schemas:
            raise DataError(f"{path.name}: {db_id}: no such database in the release")
        tables[db_id] = SynonymTable(_table_terms(db, schemas[db_id], f"{path.name}: {db_id}"))
    return tables


PLACE_IN = ("city", "state", "county", "location", "headquarter", "headquarters", "address", "town")
PLACE_FROM = ("country", "nationality", "origin", "hometown", "birthplace")
PERSONAL_NAMES = ("name", "names", "first name", "first names", "last name", "last names", "full name", "full names")
PERSON_KINDS = ("job", "occupation", "profession", "role", "gender", "sex")
CATEGORY_KINDS = ("type", "kind", "category", "class", "status", "genre", "style", "decor")
QUOTES = "\"'“”‘’"
NOT_NOUNS = {"those", "these", "ones", "one", "all", "any", "each", "every", "them", "and", "or", "that",
             "which", "who", "someone", "anyone", "everyone", "something", "is", "are", "was", "were"}


@dataclass(frozen=True)
class ValueMention:
    """A column compared with a literal in the gold SQL: the column's phrases and the value."""

    phrases: tuple[str, ...]  # natural names of the column, singular and plural, with and without its table's name
    value: str

    @property
    def head(self) -> str:
        return self.phrases[0].split()[-1].lower()


def _column_phrases(schema: Schema, column: str) -> tuple[str, ...]:
    """How a question may name ``column``: its natural name in each table that has it, also without
    the table's name in front ("customer first name" -> "first name"), singular and plural."""
    phrases: list[str] = []
    for table in schema.tables:
        table_words = [singular_of(w) for w in _words(table.natural_name or table.name)]
        for col in table.columns:
            if col.name.lower() != column.lower():
                continue
            words = _words(col.natural_name or col.name.replace("_", " "))
            variants = [" ".join(words)]
            if len(words) > len(table_words) and [singular_of(w) for w in words[:len(table_words)]] == table_words:
                variants.append(" ".join(words[len(table_words):]))
            for v in variants:
                phrases += [v, plural_of(v)]
    return tuple(dict.fromkeys(p for p in phrases if p))


STRING_LITERAL = re.compile(r"'((?:[^']|'')*)'|\"([^\"]*)\"")
COMPARISON = re.compile(r"(?<![\w.])(?P<col>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)\s*(?:=|!=|<>)\s*"
                        r"(?:'(?P<single>(?:[^']|'')*)'|\"(?P<double>[^\"]*)\"|(?P<number>-?\d+(?:\.\d+)?)(?![\w.]))")


def sql_text_values(sql: str) -> tuple[str, ...]:
    """The string literals of a query, without LIKE's ``%`` signs."""
    return tuple((a or b).replace("''", "'").strip("%").strip() for a, b in STRING_LITERAL.findall(sql) if a or b)


def value_mentions(example: Example) -> list[ValueMention]:
    """The (column, value) pairs of the gold SQL's ``col = value`` and ``col != value`` comparisons."""
    found = []
    for m in COMPARISON.finditer(example.sql):
        value = (m["single"] or "").replace("''", "'") or m["double"] or m["number"] or ""
        phrases = _column_phrases(example.schema, m["col"].rpartition(".")[2])
        if value.strip() and phrases:
            found.append(ValueMention(phrases, value.strip()))
    return found


def _col(mention: ValueMention) -> str:
    return "(?:" + "|".join(r"\s+".join(map(re.escape, p.split())) for p in
                            sorted(mention.phrases, key=len, reverse=True)) + ")"


def _val(mention: ValueMention) -> str:
    return r"(?P<v>[\"'“‘]?" + re.escape(mention.value) + r"[\"'”’]?)(?![\w])"


def _sub(pattern: str, replace, question: str) -> str:
    return re.sub(pattern, replace, question, count=1, flags=re.IGNORECASE)


def _named(question: str, m: ValueMention) -> str | None:
    """"the bank with the name morningside" -> "the bank named morningside"; "the customer named Art
    and last name Turcotte" -> "the customer named Art Turcotte" (a person's or a thing's own name only)."""
    own = tuple(p for p in m.phrases if p in PERSONAL_NAMES)
    if not own:
        return None
    col, val = _col(ValueMention(own, m.value)), _val(m)
    new = _sub(rf"\bnamed (?P<first>\S+) and (?:the |a )?{col} (?:is |of |as )?{val}",
               lambda x: f"named {x['first']} {x['v']}", question)
    if new != question:
        return new
    return _sub(rf"\b(?:with|having|whose|has|have) (?:the |a )?{col} (?:is |of |as )?{val}",
                lambda x: f"named {x['v']}", question)


def _place(question: str, m: ValueMention) -> str | None:
    """"companies whose headquarters are not in USA" -> "companies not in USA"; "programs whose origin
    is Beijing" -> "programs from Beijing"; "companies with headquarters in Austin" -> "companies in
    Austin"; "manufacturers that have headquarters in Tokyo" -> "manufacturers that are in Tokyo";
    "artists that do not have the country X" -> "artists that are not from X"; "banks of Utah state" ->
    "banks of Utah"."""
    if m.head not in PLACE_IN + PLACE_FROM:
        return None
    prep = "from" if m.head in PLACE_FROM else "in"
    col, val = _col(m), _val(m)
    for pattern, replace in (
            (rf"\bwhose {col} (?:is|are|was|were) (?P<neg>not )?(?:located |based )?(?:in |at |from )?{val}",
             lambda x: f"{x['neg'] or ''}{prep} {x['v']}"),
            (rf"\b(?:with|having) (?:the |a |an |its |their )?{col} (?:located |based )?(?:in|at|of|as) {val}",
             lambda x: f"{prep} {x['v']}"),
            (rf"\b(?P<verb>has|have) (?:the |a |an |its |their )?{col} (?:located |based )?(?:in|at) "
             rf"(?P<either>either )?{val}",
             lambda x: f"{_be(x['verb'])} {prep} {x['either'] or ''}{x['v']}"),
            (rf"\b(?P<verb>do|does) not have the {col} {val}",
             lambda x: f"{_be(x['verb'])} not {prep} {x['v']}"),
            (rf"(?:\bthe )?{val} {col}\b", lambda x: x["v"])):
        new = _sub(pattern, replace, question)
        if new != question:
            return new
    return None


def _of_the(question: str, m: ValueMention) -> str | None:
    """"banks in the state of Utah" -> "banks in Utah"; "albums in year 2012" -> "albums in 2012"."""
    if m.head not in PLACE_IN + PLACE_FROM + ("year",):
        return None
    pattern = rf"\b(?P<p>in|from|of|at|during) (?:the )?{_col(m)} (?:of )?{_val(m)}"
    return _sub(pattern, lambda x: f"{x['p']} {x['v']}", question)


def _by_id(question: str, m: ValueMention) -> str | None:
    """"the document with id 2" -> "the document 2"."""
    if m.head != "id":
        return None
    pattern = rf"\s+with (?:the |an? )?{_col(m)} (?:of |= |equal to )?{_val(m)}"
    return _sub(pattern, lambda x: f" {x['v']}", question)


def _aged(question: str, m: ValueMention) -> str | None:
    """"editors of age 24" -> "editors aged 24"."""
    if m.head != "age":
        return None
    pattern = rf"\b(?:of|with|at) (?:the |an )?{_col(m)} (?:of )?(?P<either>either )?{_val(m)}"
    return _sub(pattern, lambda x: f"aged {x['either'] or ''}{x['v']}", question)


def _who_is(question: str, m: ValueMention) -> str | None:
    """"the oldest person whose job is student" -> "the oldest person who is a student"."""
    if m.head not in PERSON_KINDS:
        return None
    pattern = rf"\bwhose {_col(m)} is (?:an? )?{_val(m)}"

    def who(x: re.Match) -> str:
        if m.head in ("gender", "sex"):
            return f"who is {x['v']}"
        return f"who is {'an' if x['v'].strip(QUOTES)[:1].lower() in 'aeiou' else 'a'} {x['v']}"

    return _sub(pattern, who, question)


def _be(verb: str) -> str:
    """"is" for a verb agreeing with a singular subject (has, does, doesn't), else "are"."""
    return "is" if verb.strip().lower().startswith(("has", "does")) else "are"


def _as_modifier(question: str, m: ValueMention) -> str | None:
    """"an institution with type "Private"" -> "a "Private" institution"; "the institutions that have
    the type "Private"" -> "the institutions that are "Private"" (categories only)."""
    if m.head not in CATEGORY_KINDS or re.search(r"\d", m.value):
        return None
    col, val = _col(m), _val(m)
    new = _sub(rf"\b(?P<neg>(?:do|does) not |(?:don't|doesn't) )?(?P<verb>has|have) the {col} {val}",
               lambda x: f"{_be(x['neg'] or x['verb'])} {'not ' if x['neg'] else ''}{x['v']}", question)
    if new != question:
        return new
    pattern = (rf"\b(?:(?P<art>an?) )?(?P<noun>[A-Za-z]+) (?:with|whose|that has|that have|which has|which have) "
               rf"(?:the |a |an )?{col} (?:is |of |as )?{val}")

    def swap(x: re.Match) -> str:
        if x["noun"].lower() in NOT_NOUNS:
            return x.group(0)
        art = ("an " if x["v"].strip(QUOTES)[:1].lower() in "aeiou" else "a ") if x["art"] else ""
        return f"{art}{x['v']} {x['noun']}"

    return _sub(pattern, swap, question)


VALUE_PATTERNS = (_named, _place, _of_the, _by_id, _aged, _who_is, _as_modifier)


def drop_implied_columns(example: Example) -> str:
    """The question with each column mention dropped where the value after it implies the column;
    the first pattern that changes the text wins, per compared value."""
    question = example.question
    for mention in value_mentions(example):
        for pattern in VALUE_PATTERNS:
            new = pattern(question, mention)
            if new is not None and new != question:
                question = new
                break
    return question


def perturbed(examples: list[Example], mode: str, schemas: dict[str, Schema]) -> tuple[list[Example], str]:
    """The examples rewritten by ``mode`` (gold SQL unchanged; ``extras["perturbed"]`` says whether the
    question changed, ``extras["original_question"]`` keeps it), and a line saying how many changed."""
    tables = load_synonym_tables(schemas) if mode == "synonyms" else {}
    out, uncovered = [], set()
    for ex in examples:
        if mode == "values":
            question = drop_implied_columns(ex)
        elif ex.db_id in tables:
            question = tables[ex.db_id].rewrite(ex.question, sql_text_values(ex.sql))
        else:
            question = ex.question
            uncovered.add(ex.db_id)
        extras = {**ex.extras, "perturbed": question != ex.question, "original_question": ex.question}
        out.append(dataclasses.replace(ex, question=question, extras=extras))
    changed = sum(ex.extras["perturbed"] for ex in out)
    note = f"perturb {mode} rewrote {changed} of {len(out)} questions"
    if uncovered:
        note += f" (no synonyms in {SYNONYMS_FILE.name} for {', '.join(sorted(uncovered))})"
    return out, note
