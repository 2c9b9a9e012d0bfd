#!/usr/bin/env bash
#SBATCH --job-name=bs-sae-semantic
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Image-token SAE features against their caption's, vs chance (src.eval.sae_semantic); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/sae_semantic.sh [sae_semantic args]
  e.g. sbatch scripts/sae_semantic.sh --acts_dir data/activations/mini --model mini --layers 3,9,15 --out_dir results/sae
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.sae_semantic --help)" \
  src.eval.sae_semantic "$@"
