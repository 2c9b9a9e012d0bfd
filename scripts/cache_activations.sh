#!/usr/bin/env bash
#SBATCH --job-name=bs-cache-activations
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# The LLM's residual stream per layer for image, text and caption-control tokens (src.extract.cache_activations); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/cache_activations.sh [cache_activations args]
  e.g. sbatch scripts/cache_activations.sh --image_dir data/sample --model mini --layers 3,9,15,21,27 --out_dir data/activations --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.cache_activations --help)" \
  src.extract.cache_activations "$@"
