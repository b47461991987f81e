#!/usr/bin/env bash
# The bench on one GPU, in a few minutes: bf16 (and fp32 for reference), batch sizes that fill the card.
# Run from the repository root: bash bench/gpu.sh [python]. Writes bench/results/*.json (one per run, the GPU's name
# among the machine fields) and bench/results/gpu.log. On CUDA, attn_impl="auto" runs padded sdpa; `unpadded` is
# timed in attention_kernels' tables on CPU only. To publish: commit the JSON files, then `python bench/report.py`.
set -euo pipefail
PY=${1:-.venv/bin/python}
mkdir -p bench/results
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  # end-to-end classification: both recipes with batches x8 (classic 128, dynamic 256)
  "$PY" bench/inference.py --device cuda --batch-scale 8 --sst2 872 --imdb 256 --reps 3
  # fine-tuning steps, batch 256, in file order and length-grouped as minibert.finetune makes them
  "$PY" bench/train.py --device cuda --batch 256 --steps 5 --reps 3 --order file
  "$PY" bench/train.py --device cuda --batch 256 --steps 5 --reps 3 --order grouped
  # matmul peak and the fraction a full-length bert-base forward reaches, batch 64 x 512
  "$PY" bench/roofline.py --device cuda --batch 64 --seq 512 --reps 10
} 2>&1 | tee bench/results/gpu.log
