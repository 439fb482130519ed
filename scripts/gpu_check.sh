#!/usr/bin/env bash
# Full-size check of medisee-7b on ONE CUDA GPU, random weights, no network:
#   bash scripts/gpu_check.sh [options of benchmarks/gpu_check.py, e.g. --batch 8]
# Builds LLaVA-Med-7B-shaped Mistral + CLIP-336 + MedSAM ViT-B in bf16, times one training
# step at per-device batch 15 (halved on out-of-memory, noted in the result) with LoRA and
# gradient checkpointing, and batch-1 inference (SAM encoder, prefill, decode tokens/s,
# decoders). Writes benchmarks/results/gpu_check.json.
# Needs a CUDA build of torch in the environment ($PYTHON, default .venv/bin/python); the
# CPU install of scripts/install.sh cannot run it (use `--tiny --device cpu` there).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check.sh: torch sees no CUDA device (torch $("$python" -c 'import torch; print(torch.__version__)'))" >&2
  exit 1
fi
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$python" benchmarks/gpu_check.py --device cuda --out benchmarks/results/gpu_check.json "$@"
"$python" -m medisee memory --preset medisee-7b --gpus 1 --batch 15
