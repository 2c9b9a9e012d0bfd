#!/usr/bin/env bash
#SBATCH --job-name=bs-connector
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Connector training with the caption loss (src.train.train_connector); run from the repository
# root. A requeued or resubmitted job resumes from <work_dir>/checkpoint.pt (unless --fresh).
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/connector.sh --root IMAGES --out_dir DIR --work_dir DIR [train_connector args]
  e.g. sbatch --gres=gpu:1 --requeue scripts/connector.sh --root data/sample --eval_shards synth_03 --steps 600 --out_dir data/connector --work_dir data/connector_work
  (submit from the repository root: logs go to its logs/ folder; see python -m src.train.train_connector --help)" \
  src.train.train_connector "$@"
