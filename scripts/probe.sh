#!/usr/bin/env bash
#SBATCH --job-name=bs-probe
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Zero-shot, linear probe and retrieval on local labelled images (src.eval.eval_probe); run
# from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/probe.sh --root IMAGES [eval_probe args]
  e.g. sbatch scripts/probe.sh --root data/sample --vision efficientnet-lite0,data/align/efficientnet-lite0_minilm --text data/align/efficientnet-lite0_minilm
  (submit from the repository root: logs go to its logs/ folder; see python -m src.eval.eval_probe --help)" \
  src.eval.eval_probe "$@"
