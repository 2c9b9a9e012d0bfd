#!/usr/bin/env bash
#SBATCH --job-name=bs-align-scores
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Alignment suite, scores (src.eval.align_scores); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/align_scores.sh --vision NAME:KIND:PATH --text NAME:PATH --root IMAGES --out_dir DIR [align_scores args]
  e.g. sbatch scripts/align_scores.sh --vision clip:ref:data/clip_ref/clip --text llama:data/text/llama --root data/images --out_dir results/align/scores
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.align_scores --help)" \
  src.eval.align_scores "$@"
