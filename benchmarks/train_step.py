"""Training tokens/s of the whole model on the tiny config, beside mlx-lm's Mixtral and Hugging
Face transformers' Mixtral on PyTorch (CPU) with the same dimensions, whichever are installed.

    python benchmarks/train_step.py [--steps 8] [--only vantage,vantage_bf16,vantage_mlx_ops,vantage_glibc_malloc,vantage_schema,mlx_lm,torch]
    python benchmarks/train_step.py --precision     # vantage in fp32 and in bf16, and their ratio

Each framework runs in its own subprocess (PyTorch and MLX load different BLAS libraries).
``vantage`` uses the native CPU kernels (vantage_core/kernels) when they are built, in float32
(``train.precision: fp32``); ``vantage_bf16`` is the same step in mixed precision
(``train.precision: bf16``: bf16 GEMM inputs, float32 sums; docs/cpu.md);
``vantage_mlx_ops`` is the same model with them off (``VANTAGE_NATIVE_KERNELS=0``);
``vantage_glibc_malloc`` with glibc's own malloc thresholds (``VANTAGE_MALLOC=default``, see
vantage_core/allocator.py).
One step: forward, backward and an AdamW update on a batch of 8 x 256 random tokens; Vantage's
is ``Trainer.train_step``, the step ``vantage train`` runs (its optimizer update compiled, no
gradient clipping, as the others).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from quantized import cpu_line

DIMS = dict(vocab=8192, d=256, layers=4, heads=4, experts=8, k=2, hidden=512, batch=8, seq=256)


def timed(step, steps: int) -> float:
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_vantage(steps: int, schema: bool, precision: str = "fp32") -> float:
    import numpy as np

    import vantage_core  # noqa: F401
    import mlx.core as mx

    from vantage_core.config import ModelConfig, PluginSpec, TrainConfig
    from vantage_core.model import build_model, loss
    from vantage_core.model.params import _VocabOnly
    from vantage_core.train.trainer import Trainer

    cfg = ModelConfig(vocab_size=DIMS["vocab"], d_model=DIMS["d"], n_layers=DIMS["layers"], n_heads=DIMS["heads"],
                      num_experts=DIMS["experts"], expert_hidden=DIMS["hidden"],
                      router=PluginSpec(name="topk", k=DIMS["k"]),
                      cross_attention_every=4 if schema else 0,
                      schema_encoder=PluginSpec(name="transformer", dim=128, n_layers=2, n_heads=4) if schema
                      else PluginSpec(name="none"))
    mx.random.seed(0)
    model = build_model(cfg, _VocabOnly(DIMS["vocab"]))
    trainer = Trainer(model, loss, TrainConfig(lr=1e-3, warmup_steps=0, grad_clip=0.0, compile=True,
                                               precision=precision))
    rng = np.random.default_rng(0)
    B, T = DIMS["batch"], DIMS["seq"]
    tokens = mx.array(rng.integers(0, DIMS["vocab"], (B, T + 1)).astype(np.int32))
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mx.ones((B, T))}
    if schema:
        batch["schema_ids"] = mx.array(rng.integers(1, DIMS["vocab"], (B, 128)).astype(np.int32))
        batch["schema_mask"] = mx.ones((B, 128), dtype=mx.bool_)
    return timed(lambda: trainer.train_step([batch]), steps)


def run_mlx_lm(steps: int) -> float:
    import numpy as np

    import vantage_core  # noqa: F401  (the same OpenBLAS for a fair comparison)
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.models import mixtral

    args = mixtral.ModelArgs(model_type="mixtral", vocab_size=DIMS["vocab"], hidden_size=DIMS["d"],
                             intermediate_size=DIMS["hidden"], num_hidden_layers=DIMS["layers"],
                             num_attention_heads=DIMS["heads"], num_experts_per_tok=DIMS["k"],
                             num_key_value_heads=DIMS["heads"], num_local_experts=DIMS["experts"])
    mx.random.seed(0)
    model = mixtral.Model(args)
    opt = optim.AdamW(1e-3)
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(0, DIMS["vocab"], (DIMS["batch"], DIMS["seq"] + 1)).astype(np.int32))

    def objective(model):
        return nn.losses.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:], reduction="mean")

    grad_fn = nn.value_and_grad(model, objective)

    def step():
        value, grads = grad_fn(model)
        opt.update(model, grads)
        mx.eval(value, model.parameters(), opt.state)

    return timed(step, steps)


def run_torch(steps: int) -> float:
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=DIMS["vocab"], hidden_size=DIMS["d"], intermediate_size=DIMS["hidden"],
                        num_hidden_layers=DIMS["layers"], num_attention_heads=DIMS["heads"],
                        num_key_value_heads=DIMS["heads"], num_local_experts=DIMS["experts"],
                        num_experts_per_tok=DIMS["k"], output_router_logits=True, router_aux_loss_coef=0.01,
                        tie_word_embeddings=True)
    model = MixtralForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, DIMS["vocab"], (DIMS["batch"], DIMS["seq"]))

    def step():
        out = model(input_ids=tokens, labels=tokens)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return timed(step, steps)


RUNNERS = {
    "vantage": ("vantage (topk+swiglu, no schema encoder)", lambda s: run_vantage(s, False)),
    "vantage_bf16": ("vantage, train.precision: bf16", lambda s: run_vantage(s, False, "bf16")),
    "vantage_mlx_ops": ("vantage, native kernels off (MLX's own ops)", lambda s: run_vantage(s, False)),
    "vantage_glibc_malloc": ("vantage, glibc's malloc thresholds", lambda s: run_vantage(s, False)),
    "vantage_schema": ("vantage + transformer schema encoder, 128 schema tokens", lambda s: run_vantage(s, True)),
    "mlx_lm": ("mlx-lm Mixtral", run_mlx_lm),
    "torch": ("HF transformers Mixtral, PyTorch CPU", run_torch),
}


ENV = {"vantage_mlx_ops": {"VANTAGE_NATIVE_KERNELS": "0"}, "vantage_glibc_malloc": {"VANTAGE_MALLOC": "default"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", default=",".join(RUNNERS))
    ap.add_argument("--precision", action="store_true", help="only vantage in fp32 and in bf16, and their ratio")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps({"seconds": RUNNERS[a.child][1](a.steps)}))
        return
    tokens = DIMS["batch"] * DIMS["seq"]
    print(cpu_line())
    print(f"tiny config {DIMS}, median step of {a.steps} after 2 warm-up steps")
    only = "vantage,vantage_bf16" if a.precision else a.only
    results = {}
    for key in only.split(","):
        env = dict(os.environ, **ENV.get(key, {}))
        proc = subprocess.run([sys.executable, __file__, "--child", key, "--steps", str(a.steps)],
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"  {RUNNERS[key][0]:58s} skipped: {last}")
            continue
        seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
        results[key] = tokens / seconds
        print(f"  {RUNNERS[key][0]:58s} {seconds * 1e3:8.1f} ms/step  {tokens / seconds:8.0f} tokens/s")
    if "vantage" in results:
        if "vantage_bf16" in results:
            print(f"bf16 / fp32 tokens/s: {results['vantage_bf16'] / results['vantage']:.2f}x")
        for other in ("vantage_mlx_ops", "vantage_glibc_malloc", "mlx_lm", "torch"):
            if other in results:
                print(f"vantage / {RUNNERS[other][0]}: {results['vantage'] / results[other]:.2f}x")


if __name__ == "__main__":
    main()
