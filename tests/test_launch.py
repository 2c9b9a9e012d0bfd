"""The launcher without a cluster: tasks per missing shard, arguments checked by the stage's own
parser before anything is submitted, failures raised, requeued tasks resuming, the exact sbatch
file for a step (golden), and --local running the same tasks here."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from src import launch
from src.data.io import write_manifest
from src.extract import extract_knn, extract_vectors
from src.jobs import StageFailed, Task, step_tasks
from src.pipeline import plan
from src.train import train_connector, train_recon


def test_one_task_per_shard_still_missing(noise_root, tmp_path):
    out = tmp_path / "vector"
    argv = ["--root", str(noise_root), "--out_dir", str(out), "--skip_existing"]
    tasks = step_tasks("vectors", extract_vectors.main, argv)
    assert [(t.label, t.argv[-2:]) for t in tasks] == [
        ("s0", ["--shards", "s0"]),
        ("s1", ["--shards", "s1"]),
    ]
    write_manifest(out / "mini" / "s0", n_ok=9)
    assert [t.label for t in step_tasks("vectors", extract_vectors.main, argv)] == ["s1"]
    # without --skip_existing the stage recomputes everything, so every shard is submitted
    assert len(step_tasks("vectors", extract_vectors.main, argv[:-1])) == 2
    # one shard asked for: one plain job
    [task] = step_tasks("vectors", extract_vectors.main, [*argv, "--shard_index", "1"])
    assert task.label == "" and task.argv == [*argv, "--shard_index", "1"]
    write_manifest(out / "mini" / "s1", n_ok=4)
    assert step_tasks("vectors", extract_vectors.main, argv) == []


def test_whole_run_steps_are_skipped_when_complete(tmp_path):
    argv = ["--pre_pt", "v", "--post_pt", "v", "--out_dir", str(tmp_path / "knn")]
    assert len(step_tasks("geometry", extract_knn.main, [*argv, "--skip_existing"])) == 1
    write_manifest(tmp_path / "knn")
    assert step_tasks("geometry", extract_knn.main, [*argv, "--skip_existing"]) == []
    assert len(step_tasks("geometry", extract_knn.main, argv)) == 1


def test_report_step_is_skipped_while_its_tables_are_unchanged(tmp_path):
    import shutil

    from src.plot import report

    results = tmp_path / "results"
    shutil.copytree(Path(__file__).resolve().parents[1] / "sample" / "results", results)
    argv = ["--results", str(results), "--figures", str(tmp_path / "fig"), "--out",
            str(tmp_path / "out"), "--skip_existing"]  # fmt: skip
    assert len(step_tasks("figures", report.main, argv)) == 1  # no report yet
    assert report.main(argv) == 0
    assert step_tasks("figures", report.main, argv) == []
    (results / "recon" / "recon_mini.csv").write_text("shard,key\n")  # a table changed
    assert len(step_tasks("figures", report.main, argv)) == 1


def test_a_typo_fails_before_anything_is_submitted(tmp_path, capsys):
    rc = launch.main(
        [
            "--log_dir",
            str(tmp_path),
            "src.extract.extract_clip",
            "--root",
            "r",
            "--out_dir",
            "o",
            "--model_id",
            "x",
            "--max_imags",
            "3",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "src.extract.extract_clip" in err and "unrecognized arguments: --max_imags 3" in err
    assert not any(tmp_path.iterdir())  # no sbatch file, no pickle
    assert launch.main(["src.not_a_stage"]) == 2
    assert launch.main(["src.runtime"]) == 2  # a module, but not a stage
    assert "not a stage" in capsys.readouterr().err


def test_nonzero_exit_code_fails_the_job(tmp_path):
    missing = str(tmp_path / "missing")
    argv = ["--pre_pt", missing, "--post_pt", missing, "--out_dir", str(tmp_path / "o")]
    task = Task("geometry", extract_knn.main, argv)
    with pytest.raises(StageFailed, match="extract_knn exited with code 2"):
        task()


def test_requeued_tasks_resume():
    recon = step_tasks("recon", train_recon.main, ["--vec_dir", "v", "--embed_model", "m",
                                                   "--out_dir", "o"])[0]  # fmt: skip
    delayed = recon.checkpoint()
    assert delayed.function.argv == ["--vec_dir", "v", "--embed_model", "m", "--out_dir", "o",
                                     "--resume"]  # fmt: skip
    assert delayed.function.resumed().argv == delayed.function.argv  # added once only
    conn = step_tasks("connector", train_connector.main, ["--out_dir", "o", "--fresh"])[0]
    assert conn.checkpoint().function.argv == ["--out_dir", "o"]
    # what submitit pickles for the node: the stage's main by reference, the argv, the flags
    back = pickle.loads(pickle.dumps(delayed))
    assert back.function.main is train_recon.main and back.function.resume_add == ("--resume",)


def test_pipeline_plan_is_what_the_launcher_runs(tmp_path):
    args = [str(x) for x in ("--data", tmp_path / "d", "--results", tmp_path / "r")]
    from src import pipeline

    steps = launch.load_steps("pipeline", args)
    assert [s[0] for s in steps] == [
        s[0] for s in plan(pipeline.get_args_parser().parse_args(args))
    ]


GOLDEN = """#!/bin/bash

# Parameters
#SBATCH --account=proj-42
#SBATCH --array=0-3%2
#SBATCH --cpus-per-task=8
#SBATCH --dependency=afterok:101:102
#SBATCH --error=/logs/%A_%a_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=bs-E_pre-E_post
#SBATCH --mail-type=FAIL
#SBATCH --mem=16384M
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=/logs/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@90
#SBATCH --time=240
#SBATCH --wckey=submitit

# setup
source '/home/me/my env.sh'

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /logs/%A_%a_%t_log.out --error /logs/%A_%a_%t_log.err \
/opt/py/bin/python -u -m submitit.core._submit /logs
""".replace("\\\n", "")


def test_golden_sbatch_file_for_an_array_step():
    args = launch.get_args_parser().parse_args(
        ["--log_dir", "/logs", "--partition", "gpu", "--account", "proj-42", "--time", "240",
         "--gpus_per_node", "1", "--cpus_per_task", "8", "--mem_gb", "16",
         "--setup", "/home/me/my env.sh", "--python", "/opt/py/bin/python",
         "--sbatch", "mail-type=FAIL", "--array_parallelism", "2", "pipeline"]
    )  # fmt: skip
    assert launch.sbatch_text(args, "E_pre / E_post", 4, ["101", "102"]) == GOLDEN


def test_golden_sbatch_file_for_a_single_job():
    args = launch.get_args_parser().parse_args(["--log_dir", "/logs", "pipeline"])
    text = launch.sbatch_text(args, "geometry mini", 1, [])
    assert "#SBATCH --array" not in text and "--dependency" not in text
    assert "#SBATCH --output=/logs/%j_0_log.out" in text
    assert "#SBATCH --job-name=bs-geometry-mini" in text and "#SBATCH --time=120" in text


def test_local_mode_runs_each_missing_shard(noise_root, tmp_path, capsys):
    out = tmp_path / "ref"
    argv = ["--local", "src.extract.extract_clip", "--root", str(noise_root), "--out_dir",
            str(out), "--model_id", "minilm", "--num_workers", "0", "--skip_existing",
            "--no_progress"]  # fmt: skip
    assert launch.main(argv) == 0
    printed = capsys.readouterr().out
    assert "== extract_clip [s0] (local)" in printed and "== extract_clip [s1] (local)" in printed
    assert (out / "s0" / "manifest.json").exists() and (out / "s1" / "manifest.json").exists()
    assert launch.main(argv) == 0
    assert "complete, nothing to run" in capsys.readouterr().out


def test_local_mode_stops_at_the_first_failure(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    argv = ["--local", "src.extract.extract_knn", "--pre_pt", missing, "--post_pt", missing,
            "--out_dir", str(tmp_path / "knn")]  # fmt: skip
    assert launch.main(argv) == 1
    assert "extract_knn exited with code 2" in capsys.readouterr().err
    argv = ["--local", "src.extract.extract_clip", "--root", missing, "--out_dir", missing,
            "--model_id", "minilm"]  # fmt: skip
    assert launch.main(argv) == 2
    assert "not a folder" in capsys.readouterr().err


def test_dry_run_prints_tasks_and_sbatch_files(noise_root, tmp_path, capsys):
    argv = ["--dry_run", "--log_dir", str(tmp_path / "logs"), "src.extract.extract_clip",
            "--root", str(noise_root), "--out_dir", str(tmp_path / "ref"),
            "--model_id", "minilm"]  # fmt: skip
    assert launch.main(argv) == 0
    printed = capsys.readouterr().out
    assert "== extract_clip: 2 task(s)" in printed and "#SBATCH --array=0-1%2" in printed
    assert not (tmp_path / "ref").exists() and not (tmp_path / "logs").exists()
