#!/usr/bin/env bash
#SBATCH --job-name=bs-score-captions
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Scores of captions from E_post and from reconstructed E_pre (src.eval.score_captions); run from
# the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/score_captions.sh --caption_dir DIR [score_captions args]
  e.g. sbatch --gres=gpu:1 scripts/score_captions.sh --caption_dir results/captions/llava --clip_model openai/clip-vit-large-patch14 --image_dir data/images --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.score_captions --help)" \
  src.eval.score_captions "$@"
