"""EX on the questions a rewritten split changed, beside the same questions as written.

Reads two `vantage evaluate` folders of one model on the same split (the unperturbed one and one
with ``--dataset-param perturb=...``), whose rows are in the same order, and prints the execution
accuracy of both on the rows whose question differs:

    python benchmarks/perturbed_gap.py runs/RUN/eval runs/RUN/eval_values
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_results(folder: Path) -> list[dict]:
    with open(folder / "results.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def changed_rows_ex(plain: list[dict], perturbed: list[dict]) -> tuple[int, float, float]:
    """(rows whose question changed, EX of those as written, EX of those rewritten), in percent."""
    if [r["gold"] for r in plain] != [r["gold"] for r in perturbed]:
        raise SystemExit("the two folders do not score the same examples in the same order")
    pairs = [(a, b) for a, b in zip(plain, perturbed) if a["question"] != b["question"]]
    if not pairs:
        return 0, float("nan"), float("nan")
    ex = [(a["scores"]["execution"]["exec"], b["scores"]["execution"]["exec"]) for a, b in pairs]
    return len(pairs), 100 * sum(x for x, _ in ex) / len(ex), 100 * sum(y for _, y in ex) / len(ex)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plain", type=Path, help="evaluate folder of the split as written")
    parser.add_argument("perturbed", type=Path, help="evaluate folder of the rewritten split")
    args = parser.parse_args()
    n, before, after = changed_rows_ex(read_results(args.plain), read_results(args.perturbed))
    print(f"{n} questions rewritten: EX {before:.1f} as written, {after:.1f} rewritten ({after - before:+.1f})")


if __name__ == "__main__":
    main()
