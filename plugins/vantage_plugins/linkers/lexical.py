"""The ``lexical`` schema linker: name and cell-value matches of question n-grams.

The features the pre-BERT Spider systems (IRNet, RAT-SQL) found to carry most of the
generalisation to unseen databases: an exact or partial match between question n-grams and a
table or column name, and a question n-gram found among the values stored in a column.
"""

from __future__ import annotations

from vantage_core.api import NAME_EXACT, NAME_NONE, NAME_PARTIAL, ConfigError, Links, SchemaItem, normalize, stem

STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been what which who whom whose "
    "how many much show list give find return all each every that this those these there their its it "
    "do does did has have had me tell name names number id than more less most least per as not no".split())


def _find(seq: tuple[str, ...], words: list[str]) -> list[int]:
    """Start positions where ``seq`` occurs contiguously in ``words``."""
    n = len(seq)
    return [i for i in range(len(words) - n + 1) if tuple(words[i:i + n]) == seq] if n else []


def link(question_words: list[str], items: list[SchemaItem],
         values: dict[tuple[str, str], set[str]] | None = None, max_ngram: int = 4) -> Links:
    """Match the question's words (any tokenization into words) against the schema items.

    An item is an EXACT match when its whole name, or one of its synonyms (schema notes), occurs
    as consecutive question words, PARTIAL when one of their non-stopword words does; a column is
    a VALUE match when a question n-gram (up to ``max_ngram`` words, not all stopwords) equals one
    of its cell values (or a meaning the notes give one).
    """
    words = [stem(normalize(w)) for w in question_words]
    raw = [normalize(w) for w in question_words]
    present = set(words)
    n_words = len(words)
    links = Links([NAME_NONE] * len(items), [0] * len(items),
                  [NAME_NONE] * n_words, [NAME_NONE] * n_words, [0] * n_words)
    for idx, item in enumerate(items):
        word_tags = links.word_table if item.column is None else links.word_column
        names = (item.words, *item.synonyms)
        found = [(s, len(name)) for name in names for s in _find(name, words)]
        if found:
            links.item_name[idx] = NAME_EXACT
            for s, n in found:
                for j in range(s, s + n):
                    word_tags[j] = NAME_EXACT
            continue
        content = {w for name in names for w in name if w not in STOPWORDS and len(w) > 1}
        if any(w in present for w in content):
            links.item_name[idx] = NAME_PARTIAL
            for j, w in enumerate(words):
                if w in content:
                    word_tags[j] = max(word_tags[j], NAME_PARTIAL)
    if values:
        grams: dict[str, list[tuple[int, int]]] = {}
        for n in range(1, max_ngram + 1):
            for s in range(n_words - n + 1):
                span = [w for w in raw[s:s + n] if w]
                if not span or all(w in STOPWORDS or len(w) < 2 for w in span):
                    continue
                grams.setdefault(" ".join(span), []).append((s, s + n))
        for idx, item in enumerate(items):
            if item.column is None:
                continue
            vals = values.get((item.table.lower(), item.column.lower()))
            if not vals:
                continue
            for gram, spans in grams.items():
                if gram in vals:
                    links.item_value[idx] = 1
                    for s, e in spans:
                        for j in range(s, e):
                            links.word_value[j] = 1
    return links


class LexicalLinker:
    """Exact/partial name matches and cell-value matches of question n-grams (IRNet, RAT-SQL)."""

    def __init__(self, cell_values: bool = True, max_ngram: int = 4):
        if not isinstance(max_ngram, int) or max_ngram < 1:
            raise ConfigError(f"schema_linker 'lexical': max_ngram must be an integer >= 1, got {max_ngram!r}")
        self.uses_values = bool(cell_values)
        self.max_ngram = max_ngram

    def link(self, question_words, items, values=None):
        return link(question_words, items, values if self.uses_values else None, self.max_ngram)
