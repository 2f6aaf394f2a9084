"""SQL as people read it: ``select count ( * ) from singer`` -> ``SELECT COUNT(*) FROM singer``.

:func:`formatted_sql` changes only what SQLite ignores: the case of keywords and of known
functions (upper), the spaces between tokens (one, none inside ``f(x)``, ``T1.name`` and
before ``,``), and the quotes of a name that needs none where the text can only mean a name
(beside a ``.``, after ``FROM``, ``JOIN`` or ``AS``). String literals, numbers, blobs,
parameters and comments are kept as written, and so is every double-quoted word that SQLite
might read as a string. Text it cannot split into SQLite's tokens is returned as given.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from vantage_core.sql.names import needs_quotes, quoted

# Words written in upper case wherever they stand (SQLite's keywords that a query uses).
KEYWORDS = frozenset("""
all and as asc between by case cast collate cross desc distinct else end escape except exists filter from full
glob group having in inner intersect is isnull join left like limit match natural not notnull null nulls offset
on or order outer over partition recursive regexp right select then union using values when where window with
""".split())
# Function names written in upper case before their "(" (SQLite reads any case).
FUNCTIONS = frozenset("""
abs avg char coalesce count date datetime group_concat hex ifnull iif instr julianday length lower ltrim max min
nullif printf random replace round rtrim sign strftime substr substring sum time total trim typeof unicode upper
""".split())
NAME_AFTER = frozenset({"from", "join", "as"})  # a quoted word after these is a name, never a string

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<line_comment>--[^\n]*)
  | (?P<block_comment>/\*[\s\S]*?(?:\*/|\Z))
  | (?P<blob>[xX]'[^']*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<dquote>"(?:[^"]|"")*")
  | (?P<bquote>`(?:[^`]|``)*`)
  | (?P<bracket>\[[^\]]*\])
  | (?P<number>(?:0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)[\w$]*)
  | (?P<word>[^\W\d][\w$]*)
  | (?P<param>\?\d*|[:@$][\w$]+)
  | (?P<op>\|\||<<|>>|<=|>=|==|!=|<>|->>|->|[-+*/%<>=~&|(),;.])
""", re.VERBOSE)
QUOTED_NAME = frozenset({"dquote", "bquote", "bracket"})
NAME_LIKE = QUOTED_NAME | {"word"}


class Token(NamedTuple):
    kind: str
    text: str


def sql_tokens(sql: str) -> list[Token] | None:
    """SQLite's tokens of ``sql`` (spaces dropped, comments kept); None where some text is not a
    token SQLite knows (an unclosed quote, a stray character)."""
    tokens, pos = [], 0
    while pos < len(sql):
        match = _TOKEN.match(sql, pos)
        if match is None:
            return None
        pos = match.end()
        if match.lastgroup != "space":
            tokens.append(Token(match.lastgroup, match.group()))
    return tokens


def formatted_sql(sql: str) -> str:
    """``sql`` written for people, with the same meaning (see the module's docstring)."""
    tokens = sql_tokens(sql)
    if not tokens:
        return sql.strip() if tokens is not None else sql
    texts = [written(tokens, i) for i in range(len(tokens))]
    out = [texts[0]]
    for i in range(1, len(tokens)):
        out.append(separator(tokens, texts, i))
        out.append(texts[i])
    return "".join(out)


def written(tokens: list[Token], i: int) -> str:
    """How token ``i`` is written: a keyword or known function in upper case, a name unquoted
    where it can only be a name and needs no quotes; anything else as it stands."""
    kind, text = tokens[i]
    before = tokens[i - 1] if i > 0 else None
    after = tokens[i + 1] if i + 1 < len(tokens) else None
    beside_dot = (before is not None and before.text == ".") or (after is not None and after.text == ".")
    if kind == "word" and not beside_dot:
        lower = text.lower()
        if lower in KEYWORDS or (lower in FUNCTIONS and after is not None and after.text == "("):
            return text.upper()
        if lower in ("first", "last") and before is not None and before.text.lower() == "nulls":
            return text.upper()
    if kind in QUOTED_NAME and (beside_dot or (before is not None and before.text.lower() in NAME_AFTER)):
        name = unquoted(kind, text)
        if not needs_quotes(name):
            return name
        return quoted(name)  # a name in every engine's quotes ("a b", not [a b] or `a b`)
    return text


def unquoted(kind: str, text: str) -> str:
    """The name a quoted token spells."""
    if kind == "bracket":
        return text[1:-1]
    mark = text[0]
    return text[1:-1].replace(mark * 2, mark)


def separator(tokens: list[Token], texts: list[str], i: int) -> str:
    """What goes between tokens ``i - 1`` and ``i``: a newline after a line comment, nothing
    where :func:`glued` says so (unless joining would start a comment: ``- -1``), else a space."""
    if tokens[i - 1].kind == "line_comment":
        return "\n"
    left, right = texts[i - 1], texts[i]
    starts_comment = (left.endswith("-") and right.startswith("-")) or (left.endswith("/") and right.startswith("*"))
    return "" if glued(tokens, i) and not starts_comment else " "


def glued(tokens: list[Token], i: int) -> bool:
    """Whether tokens ``i - 1`` and ``i`` are written together: inside ``f(x)`` and ``(a)``,
    before ``,``, ``;`` and ``)``, around the ``.`` of ``T1.name`` and after a sign (``-1``)."""
    prev, cur = tokens[i - 1], tokens[i]
    if prev.kind.endswith("comment") or cur.kind.endswith("comment"):
        return False
    if cur.text in (")", ",", ";") or prev.text == "(":
        return True
    if cur.text == ".":
        return prev.kind in NAME_LIKE
    if prev.text == ".":
        return (cur.kind in NAME_LIKE or cur.text == "*") and i >= 2 and tokens[i - 2].kind in NAME_LIKE
    if cur.text == "(":
        return is_function_name(prev)
    return prev.text in ("-", "+", "~") and is_sign(tokens, i - 1) and cur.kind in ("number", "word", "param")


def is_function_name(token: Token) -> bool:
    """Whether a word before ``(`` names a function (``count``, ``f``), not a keyword (``IN``)."""
    return token.kind == "word" and (token.text.lower() not in KEYWORDS or token.text.lower() == "cast")


def is_sign(tokens: list[Token], i: int) -> bool:
    """Whether the ``-``, ``+`` or ``~`` at ``i`` is a sign (``= -1``) rather than an operator
    (``a - 1``): it starts the text or follows an operator, ``(``, ``,`` or a keyword."""
    if i == 0:
        return True
    before = tokens[i - 1]
    if before.kind == "op":
        return before.text != ")"
    return before.kind == "word" and before.text.lower() in KEYWORDS
