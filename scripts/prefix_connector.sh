#!/usr/bin/env bash
# Seed E phase 2 on the offline models: a dual encoder (EfficientNet-Lite0 + MiniLM adapters,
# train_align) trained without the held-out shard, then a connector from its image side (one
# joint-space vector per image) to 8 SmolLM2 prefix tokens, trained, captioned and scored exactly
# as sample/kernel_connectors/original (data, steps, seed; scripts/kernel_connectors.sh), which
# maps the tower's 16 tokens. Writes sample/prefix_connector/{dual,prefix8}; the main job compares
# the two (src.eval.compare_connectors). Usage: bash scripts/prefix_connector.sh [STEPS]
set -euo pipefail
STEPS=${1:-150}
DATA=${DATA:-data}
OUT=sample/prefix_connector
python -m src.extract.make_sample --out "$DATA/sample"
# the weights are not committed (.gitignore): a folder without them is rebuilt from scratch
[ -f "$OUT/dual/dual_encoder.safetensors" ] || rm -rf "$OUT/dual" "$OUT/prefix8"
[ -f "$OUT/prefix8/connector.safetensors" ] || rm -rf "$OUT/prefix8"
CACHE=()  # the main job's pooled EfficientNet-Lite0 vectors, where they exist
[ -d "$DATA/clip_ref/efficientnet-lite0" ] && CACHE=(--vision_cache "$DATA/clip_ref/efficientnet-lite0")
python -m src.train.train_align --root "$DATA/sample" --shards photos,synth_00,synth_01,synth_02 \
  --name dual --vision efficientnet-lite0 --text minilm --epochs 30 --out_dir "$OUT/dual" \
  --results "$DATA/prefix_connector/results" "${CACHE[@]}" --skip_existing --no_progress
rm -rf "$OUT/dual/cache" "$OUT/dual/checkpoint.pt"  # features and resume state: not the model
source "$(dirname "$0")/_connector_eval.sh"
connector_eval "$OUT/prefix8" "$DATA/prefix_connector/prefix8" "$STEPS" \
  --vision "$OUT/dual" --prefix_tokens 8
