"""``sql_actions``: the vocabulary of a pointer model's keyword actions.

With ``data.target: actions`` the decoder writes SQL as actions (``vantage_core.data.sql_actions``):
keywords, operators and literals come from this vocabulary, tables and columns are pointers, and
values are spans of the question. The vocabulary is learned from the training split's actions:
every keyword and operator, and the literals the question does not spell (``'Y'``, ``1990``)
seen at least ``min_literal_count`` times; rarer literals become ``<lit>``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterable

from vantage_core.api import BOS, EOS, META_FILE, PAD, SPECIALS, UNK_LIT, ConfigError, DataError


def _is_literal(token: str) -> bool:
    return token.startswith("'") or token[:1].isdigit()


class ActionVocabulary:
    """Keyword actions <-> ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, then the other specials and
    the learned tokens in sorted order."""

    name = "sql_actions"

    def __init__(self, min_literal_count: int = 2, itos: list[str] | None = None):
        if not isinstance(min_literal_count, int) or min_literal_count < 1:
            raise ConfigError(f"tokenizer 'sql_actions': min_literal_count must be an integer >= 1, "
                              f"got {min_literal_count!r}")
        self.min_literal_count = min_literal_count
        self.itos: list[str] = list(itos) if itos else []
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def train(self, texts: Iterable[str], out_dir: str | os.PathLike | None = None,
              vocab_size: int | None = None) -> "ActionVocabulary":
        """Learn from a stream of keyword-action tokens (one token per text)."""
        counts = Counter(texts)
        learned = sorted(t for t, c in counts.items() if t not in SPECIALS
                         and (not _is_literal(t) or c >= self.min_literal_count))
        self.itos = SPECIALS + learned
        self.stoi = {t: i for i, t in enumerate(self.itos)}
        if out_dir is not None:
            self.save(out_dir)
        return self

    @property
    def vocab_size(self) -> int:
        if not self.itos:
            raise DataError("the sql_actions vocabulary is not trained yet")
        return len(self.itos)

    pad_id = property(lambda self: self.stoi[PAD])
    bos_id = property(lambda self: self.stoi[BOS])
    eos_id = property(lambda self: self.stoi[EOS])

    def encode(self, text: str) -> list[int]:
        """The id of one keyword action (``<lit>`` for an unknown literal)."""
        return [self.stoi.get(text, self.stoi[UNK_LIT])]

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.itos[i] for i in ids if 0 <= i < len(self.itos) and self.itos[i] not in (PAD, BOS, EOS))

    def id_to_piece(self, i: int) -> str:
        return self.itos[i]

    def marker_id(self, marker: str) -> int:
        raise DataError(f"the sql_actions vocabulary has no prompt marker {marker!r}: it belongs to "
                        f"data.target: actions, which has no text prompt")

    def save(self, out_dir: str | os.PathLike) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"name": self.name, "params": {"min_literal_count": self.min_literal_count}, "itos": self.itos}
        (out / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ActionVocabulary":
        path = Path(directory) / META_FILE
        meta = json.loads(path.read_text())
        if not isinstance(meta.get("itos"), list) or meta["itos"][:len(SPECIALS)] != SPECIALS:
            raise DataError(f"{path}: not a sql_actions vocabulary (no 'itos' list starting with {SPECIALS})")
        return cls(**meta.get("params", {}), itos=meta["itos"])

    def fingerprint(self) -> str:
        return hashlib.sha1("\n".join(self.itos).encode()).hexdigest()[:16]
