#!/usr/bin/env bash
#SBATCH --job-name=bs-captions
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Captions from stored and reconstructed E_post (src.eval.eval_captions); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/captions.sh --vec_dir data/vector/MODEL --image_dir IMAGES --embed_model MODEL --out_dir DIR [eval_captions args]
  e.g. sbatch --gres=gpu:1 scripts/captions.sh --vec_dir data/vector/llava --image_dir data/images --embed_model llava --model_path data/recon/llava --compare_post_vs_recon --out_dir results/captions/llava --amp
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.eval_captions --help)" \
  src.eval.eval_captions "$@"
