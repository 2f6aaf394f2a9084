#!/usr/bin/env bash
# Reproduce the figures of docs/results/spider_cpu.md from a clean clone with Spider in ../shared/data/spider
# (or $VANTAGE_SHARED_DATA/spider), with `vantage` commands only. On 2 CPU cores: three seeds
# of about 40 min training + 2 min decoding each, one seed without relation-aware attention as
# long, 6 decoding variants about 10 min, six more seeds and two dropout runs trained two at
# a time side by side (about 50 min a pair), the ensembles about 2 min each, the model ablations
# about 50 min. SEEDS="0" trains one seed; PAIRS=0 skips the side-by-side runs and the ensembles;
# SWEEP=0 skips the ablations; EMA=0 the moving-average seeds; DISTILL=0 the students distilled
# from them (about 34 min a pair of students side by side, after the moving-average pair);
# LINKDROP=0 the moving-average seeds trained with hidden name matches and their student.
set -euo pipefail
cd "$(dirname "$0")/.."
CFG=configs/spider.yaml
score() { vantage evaluate --checkpoint runs/$1 --dataset spider --split validation --out runs/$1/eval; }
for s in ${SEEDS:-0 1 2}; do
  vantage train --config $CFG --set run.seed=$s --set run.name=spider_seed$s --overwrite
  score spider_seed$s
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
# One of two runs sharing the machine: one core each (OpenBLAS on one thread), the hour as ceiling.
alongside() { # NAME SEED [--set k=v ...]
  local name=$1 seed=$2; shift 2
  OPENBLAS_NUM_THREADS=1 vantage train --config $CFG --set run.seed=$seed --set run.name=$name \
    --set train.minutes=60 "$@" --overwrite --no-progress > runs/$name.log 2>&1
}
if [ "${PAIRS:-1}" = 1 ]; then
  DO2="--set model.dropout=0.2 --set model.schema_encoder.dropout=0.2"
  DO3="--set model.dropout=0.3 --set model.schema_encoder.dropout=0.3"
  mkdir -p runs
  alongside spider_seed3 3 & a=$!; alongside spider_seed4 4 & b=$!; wait $a; wait $b
  alongside spider_seed5 5 & a=$!; alongside spider_seed6 6 & b=$!; wait $a; wait $b
  alongside spider_seed7 7 & a=$!; alongside spider_seed8 8 & b=$!; wait $a; wait $b
  alongside spider_do2_seed0 0 $DO2 & a=$!; alongside spider_do3_seed0 0 $DO3 & b=$!; wait $a; wait $b
  for run in spider_seed3 spider_seed4 spider_seed5 spider_seed6 spider_seed7 spider_seed8 spider_do2_seed0 spider_do3_seed0; do score $run; done
  # seeds decoded as one model: the three pairs trained together (one hour of the machine each,
  # no seed in common), then combinations of the seeds trained alone
  ensemble() { # OUT SEED...
    local out=$1; shift
    vantage evaluate $(for s in "$@"; do echo --checkpoint runs/spider_seed$s; done) --dataset spider \
      --split validation --out runs/$out/eval
  }
  ensemble spider_pair1 3 4; ensemble spider_pair2 5 6; ensemble spider_pair3 7 8
  ensemble spider_ensemble_seeds01 0 1; ensemble spider_ensemble_seeds02 0 2; ensemble spider_ensemble_seeds12 1 2; ensemble spider_ensemble_seeds012 0 1 2
fi
if [ "${SWEEP:-1}" = 1 ]; then
  vantage sweep configs/sweeps/spider_ablations.yaml --out runs/sweeps/spider_ablations
  for run in runs/sweeps/spider_ablations/*/; do
    [ -f "$run/summary.json" ] && vantage evaluate --checkpoint "$run" --dataset spider --split validation --out "$run/eval"
  done
fi
if [ "${EMA:-1}" = 1 ]; then
  # the moving average of the weights (train.ema_decay), two seeds side by side; each scored on the
  # held-out split, its two rewritten variants and the outside-Spider set (docs/eval_sets.md)
  alongside spider_ema_seed0 0 --set train.ema_decay=0.999 --set train.minutes=null & a=$!
  alongside spider_ema_seed1 1 --set train.ema_decay=0.999 --set train.minutes=null & b=$!; wait $a; wait $b
  for run in spider_ema_seed0 spider_ema_seed1; do
    score $run
    for p in synonyms values; do
      vantage evaluate --checkpoint runs/$run --dataset spider --split validation --dataset-param perturb=$p \
        --out runs/$run/eval_$p
    done
    vantage evaluate --checkpoint runs/$run --dataset outside --split test --out runs/$run/eval_outside
  done
fi
if [ "${DISTILL:-1}" = 1 ]; then
  # one model from two: each student learns from the moving-average pair's mean distribution
  # (train.distill, weight 0.5, T 1, top 16), students two at a time side by side
  teach=(--set "train.distill.teachers=[runs/spider_ema_seed0, runs/spider_ema_seed1]" --set train.minutes=null)
  alongside spider_distill_seed2 2 "${teach[@]}" & a=$!
  alongside spider_distill_seed3 3 "${teach[@]}" & b=$!; wait $a; wait $b
  alongside spider_distill_seed4 4 "${teach[@]}"
  for run in spider_distill_seed2 spider_distill_seed3 spider_distill_seed4; do
    score $run
    vantage evaluate --checkpoint runs/$run --dataset spider --split validation --dataset-param perturb=synonyms \
      --out runs/$run/eval_synonyms
    vantage evaluate --checkpoint runs/$run --dataset outside --split test --out runs/$run/eval_outside
  done
fi
if [ "${LINKDROP:-1}" = 1 ]; then
  # the moving-average recipe with each item's name matches hidden from 30% of the training
  # examples (data.link_dropout), seeds 0 and 1 side by side; then seed 2 beside one student
  # distilled from those two with the same option; each scored as the moving-average seeds are,
  # and on the outside set with and without its schema notes
  ema_ld() { alongside "$1" "$2" --set train.ema_decay=0.999 --set data.link_dropout="$3" --set train.minutes=null; }  # NAME SEED P
  ema_ld spider_ema_ld3_seed0 0 0.3 & a=$!; ema_ld spider_ema_ld3_seed1 1 0.3 & b=$!; wait $a; wait $b
  ema_ld spider_ema_ld3_seed2 2 0.3 & a=$!
  alongside spider_distill_ld3_seed2 2 --set data.link_dropout=0.3 --set train.minutes=null \
    --set "train.distill.teachers=[runs/spider_ema_ld3_seed0, runs/spider_ema_ld3_seed1]" & b=$!; wait $a; wait $b
  # hiding more: 0.5, seeds 0 and 1 side by side
  ema_ld spider_ema_ld5_seed0 0 0.5 & a=$!; ema_ld spider_ema_ld5_seed1 1 0.5 & b=$!; wait $a; wait $b
  for run in spider_ema_ld3_seed0 spider_ema_ld3_seed1 spider_ema_ld3_seed2 spider_distill_ld3_seed2 spider_ema_ld5_seed0 \
    spider_ema_ld5_seed1; do
    score $run
    for p in synonyms values; do
      vantage evaluate --checkpoint runs/$run --dataset spider --split validation --dataset-param perturb=$p \
        --out runs/$run/eval_$p
    done
    vantage evaluate --checkpoint runs/$run --dataset outside --split test --dataset-param notes=false --out runs/$run/eval_outside
    vantage evaluate --checkpoint runs/$run --dataset outside --split test --dataset-param notes=true --out runs/$run/eval_outside_notes
  done
fi
# tables and figures: each run, each system's mean ± std, the paired runs, the ensembles, the
# further evaluations and the error breakdown (docs/results/spider_cpu.md gives their figures)
report() { # OUT TITLE RUN... (the runs that were evaluated)
  local out=$1 title=$2; shift 2
  local found=(); for run in "$@"; do if [ -f "$run/eval/summary.json" ]; then found+=("$run"); fi; done
  vantage report "${found[@]}" -o "$out" --overwrite --title "$title"
}
report docs/results/spider_cpu_report "Spider on this 2-core CPU" runs/spider_seed[0-9]* runs/spider_norel_seed[0-9]* \
  runs/spider_do[0-9]_seed[0-9]* runs/spider_pair[0-9]* runs/spider_ensemble_*
if [ "${SWEEP:-1}" = 1 ]; then report docs/results/spider_ablations_report "Spider model ablations" runs/sweeps/spider_ablations/*/; fi
if [ "${DISTILL:-1}" = 1 ]; then report docs/results/spider_distill_report "Spider, one model distilled from two" runs/spider_distill_seed[0-9]*; fi
if [ "${EMA:-1}" = 1 ]; then report docs/results/spider_robustness_report "Spider with a moving average of the weights" runs/spider_ema_seed[0-9]*; fi
if [ "${LINKDROP:-1}" = 1 ]; then
  report docs/results/spider_linkdrop_report "Spider, name matches hidden in training" runs/spider_ema_ld3_seed[0-9]* runs/spider_distill_ld3_seed[0-9]* runs/spider_ema_ld5_seed[0-9]*
fi
