#!/usr/bin/env bash
# Seed D's "back into a VLM" step on the offline models: align EfficientNet-Lite0's kernel to
# CRAFT's (train_kernel_align), then train two connectors into SmolLM2 that differ only in their
# tower (the original vs the kernel-aligned one), caption the same held-out scenes with each and
# score them. Writes sample/kernel_connectors/{tower,original,kernel}; the main job then compares
# the pair (src.eval.compare_connectors). Usage: bash scripts/kernel_connectors.sh [STEPS]
set -euo pipefail
STEPS=${1:-150}
DATA=${DATA:-data}
OUT=sample/kernel_connectors
python -m src.extract.make_sample --out "$DATA/sample"
python -m src.train.train_kernel_align --root "$DATA/sample" \
  --train_shards synth_00,synth_01,synth_02 --eval_shards synth_03 --max_train 1024 --eval_n 200 \
  --teacher_size 96 --clean_weight 0.001 --penalty_weight 1.0 --lr 1e-4 --kernel_lr 1e-2 \
  --steps 400 --warmup 20 --batch_size 32 --fit_n 256 \
  --out_dir "$OUT/tower" --work_dir "$DATA/kernel_connectors/tower" --tables_dir "$OUT/tower/tables" \
  --skip_existing --no_progress
source "$(dirname "$0")/_connector_eval.sh"
connector_eval "$OUT/original" "$DATA/kernel_connectors/original" "$STEPS" --vision efficientnet-lite0
connector_eval "$OUT/kernel" "$DATA/kernel_connectors/kernel" "$STEPS" --vision "$OUT/tower"
