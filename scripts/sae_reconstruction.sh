#!/usr/bin/env bash
#SBATCH --job-name=bs-sae-reconstruction
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# FVU, L0, dead features and delta-NLL of SAEs per layer and token set (src.eval.sae_reconstruction); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/sae_reconstruction.sh [sae_reconstruction args]
  e.g. sbatch scripts/sae_reconstruction.sh --acts_dir data/activations/mini --image_dir data/sample --model mini --layers 3,9,15 --out_dir results/sae
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.sae_reconstruction --help)" \
  src.eval.sae_reconstruction "$@"
