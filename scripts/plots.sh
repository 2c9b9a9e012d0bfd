#!/usr/bin/env bash
#SBATCH --job-name=bs-plots
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Every figure, the summary table and the HTML report from the result tables (src.plot.report);
# run from the repository root. CPU only.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/plots.sh [report args]
  e.g. sbatch scripts/plots.sh --results results --figures figures --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.plot.report --help)" \
  src.plot.report "$@"
