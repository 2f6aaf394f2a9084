"""``vantage params CONFIG...``: parameter counts and training memory of a model config."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("configs", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one field, e.g. --set model.num_experts=16 (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def params(configs: tuple[str, ...], overrides: tuple[str, ...], as_json: bool) -> None:
    """Total and active parameters, and memory of weights plus AdamW state (fp32 and bf16),
    computed without allocating the model."""
    from vantage_core.config import load_config
    from vantage_core.errors import ConfigError
    from vantage_core.model.params import count_parameters, human

    rows = []
    for path in configs:
        # Only the model section matters here: plugins of other sections need not be installed.
        cfg = load_config(path, list(overrides), registry=False)
        vocab = cfg.model.vocab_size or cfg.data.tokenizer.params.get("vocab_size")
        if not vocab:
            raise ConfigError(f"{path}: model.vocab_size: unknown; set it or data.tokenizer.vocab_size")
        c = count_parameters(cfg.model, vocab_size=vocab)
        rows.append({"config": path, "vocab_size": vocab, "total": c.total, "active": c.active,
                     "trainable": c.trainable, "routed": c.routed,
                     "weights_fp32": c.weights_bytes("fp32"), "train_fp32": c.training_bytes("fp32"),
                     "weights_bf16": c.weights_bytes("bf16"), "train_bf16": c.training_bytes("bf16")})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ["config", "total", "active", "trainable", "weights fp32", "+AdamW fp32",
               "weights bf16", "+AdamW bf16"]
    table = [[r["config"], human(r["total"]), human(r["active"]), human(r["trainable"]),
              human(r["weights_fp32"], "B"), human(r["train_fp32"], "B"),
              human(r["weights_bf16"], "B"), human(r["train_bf16"], "B")] for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    for t in table:
        click.echo("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    click.echo("(+AdamW: weights plus two moments of the trainable parameters, all in that dtype; "
               "activations and gradients excluded)")
