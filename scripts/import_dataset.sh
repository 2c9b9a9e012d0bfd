#!/usr/bin/env bash
#SBATCH --job-name=bs-import
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# Import an image-caption dataset into the image shard layout (src.extract.import_dataset); run
# from the repository root. CPU only; one job streams the whole dataset (resume with
# --skip_existing after a time limit or preemption: finished shards are kept).
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/import_dataset.sh --dataset ID_OR_PATH --out DIR [import_dataset args]
  e.g. sbatch --cpus-per-task=8 scripts/import_dataset.sh --dataset lmms-lab/flickr30k --split test --caption_column caption --out data/flickr30k --skip_existing
  (submit from the repository root: logs go to its logs/ folder; see python -m src.extract.import_dataset --help)" \
  src.extract.import_dataset "$@"
