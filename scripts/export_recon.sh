#!/usr/bin/env bash
#SBATCH --job-name=bs-export-recon
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Reconstructed E_pre shards (src.train.export_recon); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/export_recon.sh --embed_model MODEL [export_recon args]
  e.g. sbatch --gres=gpu:1 scripts/export_recon.sh --embed_model llava --out_base data/vector_recon --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.train.export_recon --help)" \
  src.train.export_recon "$@"
