#!/usr/bin/env bash
# Every GPU figure the open CodeSwap issues ask for, in one go (about 15 minutes on one
# H100), each script's output kept in $OUT (default: ./gpu-figures) as .log and .json.
#   metric suite pairs/s at 256 and 512, suite vs one metric at a time   (metrics_speed.py)
#   stage 1 at 512, batch 16: paper, fast and codeformer side by side,   (stage1_speed.py)
#     once per engineering level: plain (TF32, unfused attention and Adam), TF32, bf16,
#     and engineered (bf16 + torch.compile + activation checkpointing of 2 levels)
#   stage 2 at 512, batch 16, bf16: images/s, memory, fusion FLOPs       (stage2_speed.py)
# Needs PyTorch with CUDA, torchvision, timm and torch-fidelity; nothing is downloaded.
# The short stage 1 -> 2 -> 3 training (codeswap_short_training.py) also needs dlib and the
# FaceNet graph (this project's own dependencies), so it is a separate command.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-figures}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"
python3 benchmarks/metrics_speed.py --device cuda --pairs 1000 --sizes 256 512 2>&1 | tee "$OUT/metrics_speed.log"
S1=(python3 benchmarks/stage1_speed.py --device cuda --resolution 512 --batch-size 16 --steps 20 --warmup 5
    --configs paper,fast,codeformer)
"${S1[@]}" --precision fp32 --attention plain --no-fused-adam --json "$OUT/stage1_plain.json" 2>&1 | tee "$OUT/stage1_plain.log"
"${S1[@]}" --precision fp32 --json "$OUT/stage1_tf32.json" 2>&1 | tee "$OUT/stage1_tf32.log"
"${S1[@]}" --precision bf16 --json "$OUT/stage1_bf16.json" 2>&1 | tee "$OUT/stage1_bf16.log"
"${S1[@]}" --precision bf16 --compile --checkpoint-levels 2 --json "$OUT/stage1_engineered.json" 2>&1 \
    | tee "$OUT/stage1_engineered.log"
python3 benchmarks/stage2_speed.py --variants full,wo_c --json "$OUT/stage2.json" 2>&1 | tee "$OUT/stage2.log"
