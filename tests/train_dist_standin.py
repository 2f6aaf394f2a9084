"""Run by ``mlx.launch -n 2 --backend ring`` in test_train_distributed: each rank trains the
stand-in model on its shard of the same global batches; rank 0 saves the weights."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_standin import TinyLM, batch, loss_fn, shard, to_arrays  # noqa: E402

import numpy as np  # noqa: E402
import vantage_core  # noqa: F401,E402
import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from vantage_core.config import TrainConfig  # noqa: E402
from vantage_core.train.distributed import init_world  # noqa: E402
from vantage_core.train.trainer import Trainer  # noqa: E402


def main(out: str, steps: int = 5):
    world = init_world()
    mx.random.seed(0)
    model = TinyLM()
    mx.eval(model.parameters())
    trainer = Trainer(model, loss_fn, TrainConfig(steps=steps, lr=3e-2, warmup_steps=2), world=world)
    losses = [trainer.train_step([to_arrays(shard(batch(i), world.rank, world.size))])["loss"]
              for i in range(steps)]
    if world.is_main:
        np.savez(out, losses=np.array(losses), size=world.size,
                 **{k: np.array(v) for k, v in tree_flatten(model.parameters())})


if __name__ == "__main__":
    main(sys.argv[1])
