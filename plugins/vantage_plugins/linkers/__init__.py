"""Built-in schema linkers (the ``schema_linker`` kind).

``lexical`` (:mod:`vantage_plugins.linkers.lexical`): exact/partial matches of question n-grams
with table and column names, and n-grams found among a column's values; ``none`` links nothing, for the ablation that keeps the model's inputs but
takes away what linking tells it. ``vantage_core/hookspecs.py`` (``register_schema_linkers``)
states the contract a linker meets.
"""

from __future__ import annotations

from vantage_core.api import hookimpl


class NoLinker:
    """No linking: every feature is zero (the model sees no match)."""

    uses_values = False

    def link(self, question_words, items, values=None):
        from vantage_core.api import Links

        n, q = len(items), len(question_words)
        return Links([0] * n, [0] * n, [0] * q, [0] * q, [0] * q)


@hookimpl
def register_schema_linkers(register):
    from vantage_plugins.linkers.lexical import LexicalLinker

    register("lexical", LexicalLinker)
    register("none", NoLinker)
