#!/usr/bin/env bash
#SBATCH --job-name=bs-attention-maps
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Patch-text similarity maps in a joint image-text space (src.plot.attention_maps); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/attention_maps.sh --image FILE [FILE ...] --model_id ID [--text TEXT ...] [attention_maps args]
  e.g. sbatch --gres=gpu:1 scripts/attention_maps.sh --image path/to/image.png --text 'What is shown?' --model_id openai/clip-vit-base-patch32
  (submit from the repository root: logs go to its logs/ folder; see python -m src.plot.attention_maps --help)" \
  src.plot.attention_maps "$@"
