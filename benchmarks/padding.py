"""How much of a config's training batches is padding: over one epoch of the batches
``vantage train`` draws (same seed, batch size and ``train.bucket_batches``), the share of the
decoder's positions that are real tokens and, with ``data.target: actions``, of the schema
encoder's (question pieces and schema items). The rest is what ``train.pack_padding`` skips in the
decoder's and the relation mixer's position-wise layers (vantage_core/model/packing.py).

    python benchmarks/padding.py [--config configs/spider.yaml] [--set train.bucket_batches=0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import vantage_core  # noqa: F401  (BLAS first)
from vantage_core.config import load_config
from vantage_core.data.batching import TrainBatches
from vantage_core.plugins import registry
from vantage_core.train.distributed import init_world
from vantage_core.train.run import training_data

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "spider.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(args.config, [*args.overrides, "data.validation=[]"])
    reg = registry()
    with tempfile.TemporaryDirectory() as tmp:
        data = training_data(cfg, reg, init_world(), Path(tmp), lambda *_: None)
        batches = TrainBatches(data.train, cfg.train.batch_size, seed=cfg.run.seed,
                               bucket_batches=cfg.train.bucket_batches).epoch_batches(0)
        real = {"decoder": 0, "encoder": 0}
        padded = {"decoder": 0, "encoder": 0}
        for rows in batches:
            b = data.collate(rows)
            real["decoder"] += int(b["padding_mask"].sum())
            padded["decoder"] += b["padding_mask"].size
            if "item_mask" in b:
                mask = np.concatenate([b["q_mask"], b["item_mask"]], axis=1)
                real["encoder"] += int(mask.sum())
                padded["encoder"] += mask.size
    print(f"{Path(args.config).name}: {len(batches)} batches of {cfg.train.batch_size} "
          f"(train.bucket_batches={cfg.train.bucket_batches})")
    for part in ("decoder", "encoder"):
        if padded[part]:
            print(f"{part}: {real[part]:,} real of {padded[part]:,} positions ({real[part] / padded[part]:.1%}); "
                  f"{padded[part] / len(data.train):.1f} positions per example, padding included")


if __name__ == "__main__":
    main()
