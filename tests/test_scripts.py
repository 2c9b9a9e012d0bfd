"""sbatch wrappers run as plain bash: usage on bad calls, and the exact command they execute
(arguments passed through intact, the array task turned into --shard_index, nothing
cluster-specific in the files)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WRAPPERS = sorted(p.name for p in (REPO / "scripts").glob("*.sh") if "#SBATCH" in p.read_text())


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter: prints each argument on its own line."""
    exe = tmp_path / "python"
    exe.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    exe.chmod(0o755)
    return exe


def run(script: str, args: list[str], **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    full.update(env)
    return subprocess.run(
        ["bash", f"scripts/{script}", *args], cwd=REPO, env=full, capture_output=True, text=True
    )


@pytest.mark.parametrize("script", WRAPPERS)
def test_usage_when_called_without_arguments(script):
    res = run(script, [])
    assert res.returncode == 2
    assert res.stderr.startswith("usage:") and "sbatch" in res.stderr


@pytest.mark.parametrize("script", WRAPPERS)
def test_no_cluster_specifics_in_the_files(script):
    text = (REPO / "scripts" / script).read_text()
    assert "set -euo pipefail" in text
    assert not re.search(r"#SBATCH\s+(--account|-A|--partition|-p|--gres|--time|-t)\b", text)
    assert not re.search(r"/home/|/scratch/|/fsx/|conda activate", text)


def test_vec_golden_command(fake_python):
    res = run(
        "vec.sh",
        ["--root", "data/my images", "--models", "llava", "--skip_existing"],
        BRIDGESCOPE_PYTHON=str(fake_python),
        SLURM_ARRAY_TASK_ID="3",
        SLURM_JOB_ID="77",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "-m", "src.extract.extract_vectors", "--root", "data/my images", "--models", "llava",
        "--skip_existing", "--shard_index", "3",
    ]  # fmt: skip
    assert "job 77 task 3: src.extract.extract_vectors" in res.stderr


def test_non_array_stage_gets_no_shard_flag(fake_python):
    res = run(
        "emb.sh",
        ["--vec_dir", "v", "--embed_model", "m", "--out_dir", "o; rm -rf /"],
        BRIDGESCOPE_PYTHON=str(fake_python),
        SLURM_ARRAY_TASK_ID="1",
    )
    assert res.stdout.splitlines() == [
        "-m", "src.train.train_recon", "--vec_dir", "v", "--embed_model", "m", "--out_dir",
        "o; rm -rf /",
    ]  # fmt: skip


def test_accelerate_launch_for_several_processes(fake_python):
    res = run(
        "emb.sh",
        ["--vec_dir", "v"],
        BRIDGESCOPE_PYTHON=str(fake_python),
        BRIDGESCOPE_NUM_PROCESSES="4",
    )
    assert res.stdout.splitlines()[:6] == [
        "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4", "-m",
    ]  # fmt: skip


def test_setup_file_is_sourced(fake_python, tmp_path):
    setup = tmp_path / "env.sh"
    setup.write_text(f'BRIDGESCOPE_PYTHON="{fake_python}"\necho sourced >&2\n')
    res = run(
        "clip.sh",
        ["--root", "r", "--out_dir", "o", "--model_id", "x"],
        BRIDGESCOPE_SETUP=str(setup),
    )
    assert res.returncode == 0 and "sourced" in res.stderr
    assert res.stdout.splitlines()[1] == "src.extract.extract_clip"


def test_every_stage_has_a_wrapper():
    from src.launch import stage_modules

    # every stage has one; the plot stages are covered by the report's (plots.sh), which
    # draws every figure and the summary
    stages = [
        m for m, _ in stage_modules() if not m.startswith("src.plot.") or m.endswith("report")
    ]
    assert "src.train.train_connector" in stages and "src.eval.eval_recon" in stages
    wrapped = "\n".join((REPO / "scripts" / w).read_text() for w in WRAPPERS)
    missing = [s for s in stages if f"  {s} " + '"$@"' not in wrapped]
    assert not missing, f"stages without an sbatch wrapper in scripts/: {missing}"


@pytest.mark.parametrize("script", WRAPPERS)
def test_logs_go_to_the_shipped_logs_folder(script):
    """Slurm opens the log before the script runs and makes no folder: logs/ ships with the
    repository (jobs are submitted from its root), one file per array task."""
    text = (REPO / "scripts" / script).read_text()
    assert "#SBATCH --output=logs/%x_%A_%a.out" in text
    assert (REPO / "logs" / ".gitignore").exists()


@pytest.mark.parametrize("script", WRAPPERS)
def test_arguments_pass_through_intact(script, fake_python):
    """Golden command of every wrapper: its stage module, then the arguments exactly as given."""
    module = re.search(r'^\s+(src\.[\w.]+) "\$@"$', (REPO / "scripts" / script).read_text(), re.M)
    args = ["--out_dir", "a dir; rm -rf /", "--note", "$(whoami) 'q' \"qq\"", "--flag"]
    res = run(script, args, BRIDGESCOPE_PYTHON=str(fake_python), SLURM_JOB_ID="5")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["-m", module.group(1), *args]
