#!/usr/bin/env bash
#SBATCH --job-name=bs-embedding-maps
#SBATCH --output=logs/%x_%A_%a.out
#SBATCH --error=logs/%x_%A_%a.out
# t-SNE / UMAP maps, Procrustes and RSA of embedding spaces (src.plot.embedding_maps); run from the repository root.
set -euo pipefail
source "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}/scripts/_stage.sh"
bridgescope_run "usage: [SBATCH_*=...] sbatch scripts/embedding_maps.sh --space NAME=PATH [--space ...] --root IMAGES [embedding_maps args]
  e.g. sbatch scripts/embedding_maps.sh --space clip=data/clip_ref/clip --space minilm=data/clip_ref/minilm --root data/sample --method umap
  (submit from the repository root: logs go to its logs/ folder; see python -m src.plot.embedding_maps --help)" \
  src.plot.embedding_maps "$@"
