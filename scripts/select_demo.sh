#!/usr/bin/env bash
# Choose the demo's matching rule and alignment objective on the VALIDATION split (the test split is never
# evaluated: --set read_test=false). Written down before running:
#   - every row: demo preset, seed 0, 40 steps of batch 16 over all 2000 training items, validation accuracy on
#     all 300 validation items at steps 0, 10, 20, 30, 40;
#   - rule: `circuit` (CKA, lambda 0.1) under own/share (the default), own/rank, identity and the literal
#     student-baseline rule; objective: circuit (CKA), circuit-procrustes and circuit-iit under own/share, with
#     circuit-ce as the reference;
#   - winner = highest final validation accuracy; the current default (own/share, CKA) stays unless another
#     candidate beats it by at least 0.03 (about one standard error at 300 items).
# Usage: scripts/select_demo.sh OUT   (stages are shared, so the teacher and caches are built once)
set -euo pipefail
OUT=${1:?usage: select_demo.sh OUT}
CD=${CIRCUITDISTILL:-circuitdistill}
common=(--preset demo --out "$OUT" --budgets 2000 --seeds 0 --set read_test=false --set steps=40
        --set eval_interval=10 --set eval_items=300)
run() {  # NAME METHODS [--set ...]
  local name=$1 methods=$2; shift 2
  $CD study "${common[@]}" --methods "$methods" "$@"
  mkdir -p "$OUT/selection"
  cp "$OUT/study.md" "$OUT/selection/$name.md"
  cp "$OUT/study.json" "$OUT/selection/$name.json"
}
run own-share circuit-ce,circuit,circuit-procrustes,circuit-iit
run own-rank circuit --set match_normalise='"rank"'
run identity circuit --set match_by='"identity"'
run student-literal circuit --set match_baseline='"student"'
