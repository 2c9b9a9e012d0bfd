#!/usr/bin/env bash
#SBATCH --job-name=bs-vec
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# E_pre / E_post extraction (src.extract.extract_vectors); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
ARRAY_FLAG=--shard_index
bridgescope_run "usage: [SBATCH_*=...] sbatch [--array=0-N] scripts/vec.sh --root IMAGES [extract_vectors args]
  e.g. sbatch --array=0-3 --gres=gpu:1 scripts/vec.sh --root data/images --models llava --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.extract_vectors --help)" \
  src.extract.extract_vectors "$@"
