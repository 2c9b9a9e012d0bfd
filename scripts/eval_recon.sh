#!/usr/bin/env bash
#SBATCH --job-name=bs-eval-recon
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# How much of E_pre the reconstructor recovers, against baselines (src.eval.eval_recon); run from
# the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/eval_recon.sh --embed_model MODEL [eval_recon args]
  e.g. sbatch scripts/eval_recon.sh --embed_model llava --model_dir data/recon/llava --out_dir results/recon --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.eval_recon --help)" \
  src.eval.eval_recon "$@"
