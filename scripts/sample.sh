#!/usr/bin/env bash
#SBATCH --job-name=bs-sample
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# The sample images: offline photos and captioned synthetic scenes (src.extract.make_sample);
# run from the repository root. CPU only; the same arguments always give the same bytes.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/sample.sh [make_sample args]
  e.g. sbatch scripts/sample.sh --out data/sample --n_scenes 2000 --shards 4
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.make_sample --help)" \
  src.extract.make_sample "$@"
