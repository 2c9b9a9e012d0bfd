#!/usr/bin/env bash
#SBATCH --job-name=bs-align-e2e
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Alignment suite, e2e (src.eval.align_e2e); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/align_e2e.sh --vision NAME:KIND:PATH --text NAME:PATH --root IMAGES --out_dir DIR [align_e2e args]
  e.g. sbatch scripts/align_e2e.sh --vision clip:ref:data/clip_ref/clip --text llama:data/text/llama --root data/images --out_dir results/align/e2e
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.align_e2e --help)" \
  src.eval.align_e2e "$@"
