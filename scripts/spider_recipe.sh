#!/usr/bin/env bash
# Reproduce docs/results/spider_cpu.md from a clean clone with Spider in ../shared/data/spider
# (or $VANTAGE_SHARED_DATA/spider). About 100 minutes on 2 CPU cores: prepare 4, train 42,
# decoding variants 10, ablation sweep 45 (skip it with SWEEP=0).
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=configs/spider_cpu.yaml
R="python benchmarks/spider_recipe.py"
$R prepare --config $CFG                      # MiniLM states + linking features -> runs/spider_cpu/cache.pkl
$R train --config $CFG                        # 45 min; best held-out checkpoint -> runs/spider_cpu/seed0/
$R evaluate --config $CFG                     # beam 4, constraints, execution-guided -> runs/spider_cpu/eval_seed0/
# decoding ablations on the same checkpoint
$R evaluate --config $CFG --out eval_greedy_free --set decode.beam=1 --set decode.constrained=false \
  --set decode.execution_guided=false --set decode.fallback=false
$R evaluate --config $CFG --out eval_greedy_constrained --set decode.beam=1 \
  --set decode.execution_guided=false --set decode.fallback=false
$R evaluate --config $CFG --out eval_beam4_constrained --set decode.execution_guided=false --set decode.fallback=false
$R evaluate --config $CFG --out eval_beam4_eg_nofallback --set decode.fallback=false
$R evaluate --config $CFG --out eval_no_fk_joins --set decode.fk_joins=false
if [ "${SWEEP:-1}" = 1 ]; then
  $R sweep --sweep configs/spider_ablations/sweep.yaml   # 4-minute variants: linking, encoders, router, seeds
fi
$R report --config $CFG                       # tables + docs/results/spider_cpu/*.png
