#!/usr/bin/env bash
#SBATCH --job-name=bs-score-perturb
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Scores of perturbed captions (src.eval.score_perturb); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/score_perturb.sh --perturb_dir DIR --out_dir DIR [score_perturb args]
  e.g. sbatch --gres=gpu:1 scripts/score_perturb.sh --perturb_dir data/perturb_out --out_dir data/perturb_out_scored --clip_model openai/clip-vit-large-patch14 --image_dir data/images --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.score_perturb --help)" \
  src.eval.score_perturb "$@"
