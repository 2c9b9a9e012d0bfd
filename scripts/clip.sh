#!/usr/bin/env bash
#SBATCH --job-name=bs-clip
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Reference embeddings (src.extract.extract_clip); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
ARRAY_FLAG=--shard_index
bridgescope_run "usage: [SBATCH_*=...] sbatch [--array=0-N] scripts/clip.sh --root IMAGES --out_dir DIR --model_id ID [extract_clip args]
  e.g. sbatch --array=0-3 scripts/clip.sh --root data/images --out_dir data/clip_ref/clip --model_id openai/clip-vit-large-patch14
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.extract_clip --help)" \
  src.extract.extract_clip "$@"
