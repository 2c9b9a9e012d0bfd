#!/usr/bin/env bash
#SBATCH --job-name=bs-align-speed
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Speed of encoders, LLMs and projectors per batch size (src.eval.align_speed); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/align_speed.sh [--out_dir DIR] [--encoders ...] [--llms ...] [--batch_sizes ...] [align_speed args]
  e.g. sbatch --gres=gpu:1 scripts/align_speed.sh --encoders openai/clip-vit-base-patch32 google/siglip-base-patch16-224 --llms Qwen/Qwen2.5-7B --batch_sizes 1 4 8 16 32
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.align_speed --help)" \
  src.eval.align_speed "$@"
