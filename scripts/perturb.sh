#!/usr/bin/env bash
#SBATCH --job-name=bs-perturb
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Captions from perturbed E_post (src.eval.eval_perturb); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/perturb.sh --vec_dir data/vector/MODEL --image_dir IMAGES --model_name MODEL --mode MODE --level L [L ...] [eval_perturb args]
  e.g. sbatch --gres=gpu:1 scripts/perturb.sh --vec_dir data/vector/llava --image_dir data/images --model_name llava --mode lowrank --level 0.01 0.1 1 --amp
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.eval_perturb --help)" \
  src.eval.eval_perturb "$@"
