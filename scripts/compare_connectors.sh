#!/usr/bin/env bash
#SBATCH --job-name=bs-compare-connectors
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Held-out caption metrics of connectors on different towers, paired against a baseline
# (src.eval.compare_connectors); run from the repository root. CPU only, seconds.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/compare_connectors.sh --connector NAME=DIR [--connector ...] --baseline NAME --out_dir DIR
  e.g. sbatch scripts/compare_connectors.sh --connector original=sample/kernel_connectors/original --connector kernel=sample/kernel_connectors/kernel --baseline original --out_dir results/kernel_align
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.compare_connectors --help)" \
  src.eval.compare_connectors "$@"
