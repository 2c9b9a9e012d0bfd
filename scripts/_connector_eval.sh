#!/usr/bin/env bash
# One connector of a comparison (sourced by kernel_connectors.sh and prefix_connector.sh): train
# it into SmolLM2 on the shards `mini` trains on, caption the same 200 held-out scenes, score
# them, and keep the tables compare_connectors reads in <C>/eval.
# Usage: connector_eval NAME_DIR WORK_DIR STEPS [train_connector flags: --vision ...]
connector_eval() {
  local C=$1 W=$2 STEPS=$3
  shift 3
  python -m src.train.train_connector --root "$DATA/sample" \
    --train_shards photos,synth_00,synth_01,synth_02 --eval_shards synth_03 --eval_n 200 \
    --steps "$STEPS" --batch_size 16 --lr 1e-3 --seed 0 "$@" \
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
}
