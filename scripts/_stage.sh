# Shared body of the sbatch wrappers (sourced, not run). Nothing cluster-specific lives here:
# partition, account, time, GPUs and memory come from sbatch flags or SBATCH_* variables, e.g.
#   SBATCH_PARTITION=gpu SBATCH_ACCOUNT=myproj SBATCH_TIMELIMIT=04:00:00 SBATCH_GRES=gpu:1 \
#     sbatch --array=0-3 scripts/vec.sh --root data/images --models llava
# Environment:
#   BRIDGESCOPE_PYTHON  interpreter to run (default: .venv/bin/python if present, else python3)
#   BRIDGESCOPE_SETUP   optional file to source first (module loads, conda activation, ...)
#   BRIDGESCOPE_NUM_PROCESSES  N > 1 runs the stage under `accelerate launch` with N processes
# Under a job array, a wrapper that sets ARRAY_FLAG (e.g. --shard_index) passes the task id with
# it, so task i processes the i-th shard (sorted).

bridgescope_run() {  # bridgescope_run USAGE MODULE [STAGE ARGS...]
  local usage=$1 module=$2
  shift 2
  if [ "$#" -eq 0 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    printf '%s\n' "$usage" >&2
    [ "$#" -eq 0 ] && return 2
    return 0
  fi
  cd "${SLURM_SUBMIT_DIR:-.}"
  if [ -n "${BRIDGESCOPE_SETUP:-}" ]; then
    # shellcheck disable=SC1090
    source "$BRIDGESCOPE_SETUP"
  fi
  local py=${BRIDGESCOPE_PYTHON:-}
  if [ -z "$py" ]; then
    if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
  fi
  local extra=()
  if [ -n "${SLURM_ARRAY_TASK_ID:-}" ] && [ -n "${ARRAY_FLAG:-}" ]; then
    extra=("$ARRAY_FLAG" "$SLURM_ARRAY_TASK_ID")
  fi
  echo "[$(date -u +%FT%TZ)] $(hostname) job ${SLURM_JOB_ID:-local} task ${SLURM_ARRAY_TASK_ID:--}: $module" >&2
  if [ "${BRIDGESCOPE_NUM_PROCESSES:-1}" -gt 1 ]; then
    "$py" -m accelerate.commands.launch --multi_gpu --num_processes "$BRIDGESCOPE_NUM_PROCESSES" \
      -m "$module" "$@" "${extra[@]}"
  else
    "$py" -m "$module" "$@" "${extra[@]}"
  fi
}
