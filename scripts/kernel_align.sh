#!/usr/bin/env bash
#SBATCH --job-name=bs-kernel-align
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Kernel alignment of a vision tower (src.train.train_kernel_align); run from the repository
# root. A requeued or resubmitted job resumes from <work_dir>/checkpoint.pt (unless --fresh).
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/kernel_align.sh --root IMAGES --out_dir DIR --work_dir DIR [train_kernel_align args]
  e.g. sbatch --gres=gpu:1 --requeue scripts/kernel_align.sh --root data/images --student openai/clip-vit-large-patch14 --teacher facebook/dinov2-large --steps 40000 --warmup 2800 --batch_size 64 --lr 1e-5 --out_dir data/kernel_tower --work_dir data/kernel_work
  (submit from the repository root: logs go to its logs/ folder; see python -m src.train.train_kernel_align --help)" \
  src.train.train_kernel_align "$@"
