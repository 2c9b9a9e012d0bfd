#!/usr/bin/env bash
#SBATCH --job-name=bs-recon
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Reconstructor training E_post -> E_pre (src.train.train_recon); run from the repository root.
# Several GPUs: BRIDGESCOPE_NUM_PROCESSES=4 sbatch --gres=gpu:4 scripts/emb.sh ... runs it under
# accelerate launch (data-parallel).
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/emb.sh --vec_dir data/vector/MODEL --embed_model MODEL --out_dir DIR [train_recon args]
  e.g. sbatch --gres=gpu:1 scripts/emb.sh --vec_dir data/vector/llava --embed_model llava --out_dir data/recon/llava --normalize --amp --resume
  (submit from the repository root: logs go to its logs/ folder; see python -m src.train.train_recon --help)" \
  src.train.train_recon "$@"
