#!/usr/bin/env bash
#SBATCH --job-name=bs-align
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Contrastive MRL dual encoder on two frozen towers (src.train.train_align); run from the
# repository root. A requeued or resubmitted job resumes from <out_dir>/checkpoint.pt.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/align.sh --root IMAGES [train_align args]
  e.g. sbatch --gres=gpu:1 --requeue scripts/align.sh --root data/sample --vision efficientnet-lite0 --text minilm --epochs 40
  (submit from the repository root: logs go to its logs/ folder; see python -m src.train.train_align --help)" \
  src.train.train_align "$@"
