#!/usr/bin/env bash
# Reproduce docs/results/spider_cpu.md from a clean clone with Spider in ../shared/data/spider
# (or $VANTAGE_SHARED_DATA/spider), with `vantage` commands only. On 2 CPU cores: three seeds
# of about 40 min training + 2 min decoding each, one seed without relation-aware attention as
# long, 6 decoding variants about 10 min, the model ablations about 50 min. SEEDS="0" trains one
# seed; SWEEP=0 skips the ablations.
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=configs/spider.yaml
for s in ${SEEDS:-0 1 2}; do
  vantage train --config $CFG --set run.seed=$s --set run.name=spider_seed$s --overwrite
  vantage evaluate --checkpoint runs/spider_seed$s --dataset spider --split validation --out runs/spider_seed$s/eval
done
# the relation-aware encoder off, at the seeds' step count (no minute ceiling)
vantage train --config $CFG --set model.schema_encoder.relations=false --set train.minutes=null \
  --set run.name=spider_norel_seed0 --overwrite
vantage evaluate --checkpoint runs/spider_norel_seed0 --dataset spider --split validation --out runs/spider_norel_seed0/eval
# decoding ablations on the seed-0 checkpoint
E="vantage evaluate --checkpoint runs/spider_seed0 --dataset spider --split validation"
NO_EG="--set inference.execution_guided=false --set inference.fallback=false --set inference.retry_beam=0"
$E --out runs/spider_seed0/eval_greedy_free --set inference.decoding=greedy --set inference.constraint=null $NO_EG
$E --out runs/spider_seed0/eval_greedy_rules --set inference.decoding=greedy $NO_EG
$E --out runs/spider_seed0/eval_beam4_rules $NO_EG
$E --out runs/spider_seed0/eval_beam4_rules_eg --set inference.fallback=false --set inference.retry_beam=0
$E --out runs/spider_seed0/eval_no_fk_joins --set "inference.constraint={name: sql_actions, fk_joins: false}"
$E --out runs/spider_seed0/eval_beam8 --set inference.beam_size=8
VANTAGE_NATIVE_KERNELS=0 $E --out runs/spider_seed0/eval_native_kernels_off   # MLX's own ops
if [ "${SWEEP:-1}" = 1 ]; then
  vantage sweep configs/sweeps/spider_ablations.yaml --out runs/sweeps/spider_ablations
  for run in runs/sweeps/spider_ablations/*/; do
    [ -f "$run/summary.json" ] && vantage evaluate --checkpoint "$run" --dataset spider --split validation --out "$run/eval"
  done
fi
python benchmarks/spider_report.py   # tables and figures -> docs/results/spider_cpu.md
