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
for v in "original:efficientnet-lite0" "kernel:$OUT/tower"; do
  n=${v%%:*}; C=$OUT/$n; W=$DATA/kernel_connectors/$n
  python -m src.train.train_connector --root "$DATA/sample" \
    --train_shards photos,synth_00,synth_01,synth_02 --eval_shards synth_03 --eval_n 200 \
    --steps "$STEPS" --batch_size 16 --lr 1e-3 --seed 0 --vision "${v#*:}" \
    --out_dir "$C" --work_dir "$W" --skip_existing --no_progress
  python -m src.extract.extract_vectors --root "$DATA/sample" --shards synth_03 --max_images 200 \
    --models mini --model_id "mini=$C" --out_dir "$W/vec" --skip_existing --no_progress
  python -m src.eval.eval_captions --vec_dir "$W/vec/mini" --image_dir "$DATA/sample" \
    --shards synth_03 --out_dir "$W/cap" --max_new_tokens 24 --skip_existing --no_progress
  # the reference caption as a caption column too: score_captions then gives its NLL under
  # this VLM (compare_connectors' nll_reference_caption)
  python -c "import pandas as pd, sys; from src.metrics.text import split_references as s
for f in sys.argv[1:]:
    d = pd.read_csv(f); d['caption_reference'] = d.reference.map(lambda r: (s(r) or [''])[0])
    d.to_csv(f, index=False)" "$W"/cap/synth_03.csv
  python -m src.eval.score_captions --caption_dir "$W/cap" --nll_vec_dir "$W/vec/mini" \
    --skip_existing
  mkdir -p "$C/eval"
  rm -rf "$C/eval/scored" && cp -r "$W/cap/scored" "$C/eval/scored"
  cp "$W/eval_captions.csv" "$C/eval/heldout_captions.csv"
done
