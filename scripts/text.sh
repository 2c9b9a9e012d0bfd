#!/usr/bin/env bash
#SBATCH --job-name=bs-text
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Caption embeddings from an LLM or sentence encoder (src.extract.extract_text); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
ARRAY_FLAG=--shard_index
bridgescope_run "usage: [SBATCH_*=...] sbatch [--array=0-N] scripts/text.sh --root IMAGES --out_dir DIR --model NAME [extract_text args]
  e.g. sbatch --array=0-3 --gres=gpu:1 scripts/text.sh --root data/images --out_dir data/text/llama --model huggyllama/llama-7b --layers 8 16 -1
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.extract_text --help)" \
  src.extract.extract_text "$@"
