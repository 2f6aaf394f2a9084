#!/usr/bin/env bash
# Reproduce docs/results/spider_cpu.md from a clean clone with Spider in ../shared/data/spider
# (or $VANTAGE_SHARED_DATA/spider). About 3 h 30 min on 2 CPU cores: prepare 4 min, three
# seeds of 42 min training + 3 min decoding each, 7 decoding variants 20 min, ablation sweep
# 45 min. SEEDS="0" trains one seed; SWEEP=0 skips the sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=configs/spider_cpu.yaml
R="python benchmarks/spider_recipe.py"
$R prepare --config $CFG                        # MiniLM states + linking features -> runs/spider_cpu/cache.pkl
for s in ${SEEDS:-0 1 2}; do
  $R train --config $CFG --set train.seed=$s    # 42 min; best held-out checkpoint -> runs/spider_cpu/seed$s/
  $R evaluate --config $CFG --set train.seed=$s # beam 4, constraints, execution-guided -> runs/spider_cpu/eval_seed$s/
done
# decoding ablations on the seed-0 checkpoint
E="$R evaluate --config $CFG"
$E --out eval_greedy_free --set decode.beam=1 --set decode.constrained=false --set decode.execution_guided=false \
   --set decode.fallback=false --set decode.retry_beam=0
$E --out eval_greedy_constrained --set decode.beam=1 --set decode.execution_guided=false --set decode.fallback=false \
   --set decode.retry_beam=0
$E --out eval_beam4_constrained --set decode.execution_guided=false --set decode.fallback=false --set decode.retry_beam=0
$E --out eval_beam4_eg --set decode.fallback=false --set decode.retry_beam=0
$E --out eval_beam4_eg_retry --set decode.fallback=false
$E --out eval_no_fk_joins --set decode.fk_joins=false
$E --out eval_beam8 --set decode.beam=8
if [ "${SWEEP:-1}" = 1 ]; then
  $R sweep --sweep configs/spider_ablations/sweep.yaml   # 2-epoch variants: linking, encoders, router, seeds
fi
$R report --config $CFG                         # tables + docs/results/spider_cpu/*.png
