#!/usr/bin/env bash
#SBATCH --job-name=bs-knn
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Geometry: kNN overlap, spectra, CKA (src.extract.extract_knn); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/cal.sh --pre_pt data/vector/MODEL --post_pt data/vector/MODEL --out_dir DIR [extract_knn args]
  e.g. sbatch --gres=gpu:1 scripts/cal.sh --pre_pt data/vector/llava --post_pt data/vector/llava --ref clip:data/clip_ref/clip --out_dir results/knn/llava
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.extract_knn --help)" \
  src.extract.extract_knn "$@"
