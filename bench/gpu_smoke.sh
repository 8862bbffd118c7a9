#!/usr/bin/env bash
# GPU smoke run, for when a GPU machine is lent: the tiny experiment, bench/distill.py and bench/discovery.py
# on CUDA in bf16, each timed; a summary of the wall times at the end. Run from the repository root:
#
#   bash bench/gpu_smoke.sh                                        # CUDA, bf16, everything
#   bash bench/gpu_smoke.sh --device cpu --dtype bf16 --only experiment   # the experiment line on a CPU machine
#
# Environment: PY (default .venv/bin/python), OUT (default runs/gpu_smoke), MODEL (the benches' teacher and
# student, default smollm2-135m; a built-in or a local HF directory), THREADS (default 4).
set -euo pipefail

PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu_smoke}
MODEL=${MODEL:-smollm2-135m}
THREADS=${THREADS:-4}
DEVICE=cuda
DTYPE=bf16
ONLY=all
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --dtype) DTYPE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;  # all | experiment | distill | discovery
    *) echo "gpu_smoke: unknown option $1 (--device cuda|cpu, --dtype bf16|fp16|fp32, --only all|experiment|distill|discovery)" >&2; exit 2 ;;
  esac
done

if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_smoke: torch.cuda.is_available() is False (torch $("$PY" -c 'import torch; print(torch.__version__)')):" \
       "no usable CUDA GPU or a CPU-only torch build. Install a CUDA torch, or pass --device cpu to check the commands." >&2
  exit 1
fi
mkdir -p "$OUT"
SUMMARY="$OUT/timings.txt"
: > "$SUMMARY"

timed() {  # timed LABEL COMMAND...: run it, print and record its wall time
  local label=$1; shift
  echo "=== $label: $*"
  local t0=$SECONDS
  "$@"
  echo "$label: $((SECONDS - t0)) s wall ($DEVICE, $DTYPE)" | tee -a "$SUMMARY"
}

want() { [ "$ONLY" = all ] || [ "$ONLY" = "$1" ]; }

if want experiment; then
  "$PY" - "$OUT/models" <<'PYEOF'
import sys
from pathlib import Path

from circuitdistill.models.tiny import gpt2_tokenizer, tiny_model

root, tok = Path(sys.argv[1]), gpt2_tokenizer()
for name, family, seed in (("teacher", "llama", 0), ("student", "qwen2", 1)):
    tiny_model(family, seed=seed).save_pretrained(root / name)
    tok.save_pretrained(root / name)
PYEOF
  timed "tiny experiment" "$PY" -m circuitdistill experiment --preset tiny --out "$OUT/experiment" --overwrite \
    --teacher-base "$OUT/models/teacher" --student-base "$OUT/models/student" --threads "$THREADS" \
    --device "$DEVICE" --dtype "$DTYPE"
fi

if want distill || want discovery; then
  "$PY" -m circuitdistill data entity-tracking --splits 96,64,16 --model "$MODEL" --out-dir "$OUT/data" --prefix et
fi
if want distill; then
  timed "bench/distill.py" "$PY" bench/distill.py --teacher "$MODEL" --student "$MODEL" --data "$OUT/data/et_train.jsonl" \
    --steps 6 --batch-size 16 --threads "$THREADS" --device "$DEVICE" --dtype "$DTYPE" --out "$OUT/distill"
fi
if want discovery; then
  timed "bench/discovery.py" "$PY" bench/discovery.py --model "$MODEL" --data "$OUT/data/et_validation.jsonl" \
    --max-items 32 --positions final --naive-heads 9 --threads "$THREADS" --device "$DEVICE" --dtype "$DTYPE" \
    --json "$OUT/discovery.json"
fi

echo "=== timings ($SUMMARY)"
cat "$SUMMARY"
