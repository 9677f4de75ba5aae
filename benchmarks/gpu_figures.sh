#!/usr/bin/env bash
# Every GPU figure the open CodeSwap issues ask for, in one go (about 5-10 minutes on one
# H100), each script's output kept in $OUT (default: ./gpu-figures) as .log and .json.
#   metric suite pairs/s at 256 and 512, suite vs one metric at a time   (metrics_speed.py)
#   stage 1 at 512, batch 16, bf16: ours vs a CodeFormer-style VQGAN     (stage1_speed.py)
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
python3 benchmarks/stage1_speed.py --json "$OUT/stage1_bf16.json" 2>&1 | tee "$OUT/stage1_bf16.log"
python3 benchmarks/stage1_speed.py --precision fp32 --json "$OUT/stage1_tf32.json" 2>&1 | tee "$OUT/stage1_tf32.log"
python3 benchmarks/stage2_speed.py --variants full,wo_c --json "$OUT/stage2.json" 2>&1 | tee "$OUT/stage2.log"
