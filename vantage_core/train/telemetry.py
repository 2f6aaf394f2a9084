"""Per-step telemetry: one record per step fanned out to the configured logger plugins, and a
progress bar.

A record is a flat mapping with ``step`` and ``kind`` (``train`` or ``eval``); training records
carry ``loss``, ``ce``, ``balance``, ``z``, ``lr``, ``tokens_per_s``, ``grad_norm`` and
``expert_load`` (per MoE layer, the share of routed tokens each expert received).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


def to_jsonable(value: Any) -> Any:
    """Arrays and numpy scalars to plain Python; non-finite floats to strings JSON can hold."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every record of a run's ``metrics.jsonl`` (a torn last line from a crash is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        from vantage_core.errors import VantageError

        raise VantageError(f"{path}: no such file; was the run's 'jsonl' logger turned off "
                           f"(train.loggers)?")
    records = []
    for _, line in _text_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):  # a bare number or list is no record
            records.append(record)
    return records


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of each line that is UTF-8; the others (a line torn by a crash
    mid-character, bytes written by something else) are skipped with one warning naming them."""
    lines, bad = [], []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                lines.append((lineno, raw.decode("utf-8")))
            except UnicodeDecodeError:
                bad.append(lineno)
    if bad:
        import sys

        shown = ", ".join(map(str, bad[:5])) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        print(f"warning: {path}: line {shown} not valid UTF-8, skipped", file=sys.stderr)
    return lines


def trim_metrics(run_dir: str | Path, after_step: int) -> None:
    """Drop records past ``after_step``: on resume they are written again by the same steps."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return
    kept = []
    for _, line in _text_lines(path):
        line = line.rstrip("\n")
        try:
            if json.loads(line).get("step", 0) <= after_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(l + "\n" for l in kept))


class Telemetry:
    """Sends records to the logger plugins (rank 0 only) and drives the progress bar."""

    def __init__(self, run_dir: str | Path, config: dict, logger_specs: list, registry: Any,
                 total_steps: int, start_step: int = 0, enabled: bool = True, progress: bool = True):
        from vantage_core.config import plugin_params

        self.enabled = enabled
        self.loggers = []
        if enabled:
            for spec in logger_specs:
                self.loggers.append(registry.build("logger", spec.name, str(run_dir), config,
                                                   **plugin_params(spec)))
        self.bar = None
        if enabled and progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step",
                            dynamic_ncols=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = to_jsonable(record)
        for logger in self.loggers:
            logger.log(record["step"], record)
        if self.bar is not None:
            if record.get("kind") == "train":
                self.bar.n = record["step"]
                self.bar.set_postfix(loss=f"{record['loss']:.3f}" if isinstance(record["loss"], float) else record["loss"],
                                     lr=f"{record['lr']:.1e}", tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
                self.bar.refresh()
            else:
                shown = {k: v for k, v in record.items() if k not in ("step", "kind") and isinstance(v, (int, float))}
                self.bar.write(f"step {record['step']} {record.get('kind')}: " +
                               ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []
        if self.bar is not None:
            self.bar.close()
            self.bar = None
