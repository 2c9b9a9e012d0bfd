#!/usr/bin/env bash
#SBATCH --job-name=bs-train-sae
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# TopK SAEs per LLM layer on the LLM's text activations (eai-sparsify) (src.train.train_sae); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/train_sae.sh [train_sae args]
  e.g. sbatch scripts/train_sae.sh --image_dir data/sample --shards synth_00 --model mini --layers 3,9,15 --out_dir data/sae --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.train.train_sae --help)" \
  src.train.train_sae "$@"
