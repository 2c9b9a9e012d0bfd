"""The launcher against a real single-node Slurm (scripts/local_slurm.sh starts it, once per test
session): a job array over sample shards, a job that waits for it (afterok), a failing task that
is reported without hanging, a re-launch that submits only the missing shard, and a training job
that is preempted, requeued and resumes from its checkpoint.

Skipped, with the reason, where no Slurm answers and none can be started (not root, no apt-get).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from src import launch
from src.extract import extract_knn, extract_vectors, make_sample
from src.train import train_recon
from tests.test_recon import write_linear_vectors

REPO = Path(__file__).resolve().parents[1]
HARNESS = REPO / "scripts" / "local_slurm.sh"
TIMEOUT_S = 300  # no test here may wait longer than this for its jobs


def slurm_answers() -> bool:
    return (
        shutil.which("sbatch") is not None
        and subprocess.run(["bash", str(HARNESS), "status"], capture_output=True).returncode == 0
    )


@pytest.fixture(scope="session")
def slurm() -> None:
    """A Slurm that takes jobs: the one already running, else one started here."""
    if slurm_answers():
        return
    if os.geteuid() != 0:
        pytest.skip("no Slurm answers, and starting one needs root (scripts/local_slurm.sh)")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no Slurm answers, and no apt-get to install one (scripts/local_slurm.sh)")
    res = subprocess.run(
        ["bash", str(HARNESS), "start"], capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"scripts/local_slurm.sh start failed:\n{res.stderr[-3000:]}"


@pytest.fixture(scope="module")
def work(tmp_path_factory, random_connector_dir, slurm) -> dict:
    """A tiny sample (photos, synth_00, synth_01) and the steps vectors -> geometry on it."""
    tmp = tmp_path_factory.mktemp("slurm")
    images = tmp / "sample"
    assert make_sample.main(["--out", str(images), "--n_scenes", "6", "--shards", "2",
                             "--size", "64", "--n_per_type", "0"]) == 0  # fmt: skip
    return {"tmp": tmp, "images": images, "connector": random_connector_dir}


def vector_steps(work: dict, out: Path) -> list:
    """Vectors (a job array over the 3 shards, 2 images each), then geometry on all of them."""
    vec = [
        "--root", str(work["images"]), "--out_dir", str(out), "--max_images", "2",
        "--model_id", f"mini={work['connector']}", "--num_workers", "0", "--skip_existing",
        "--no_progress",
    ]  # fmt: skip
    knn = [
        "--pre_pt", str(out / "mini"), "--post_pt", str(out / "mini"),
        "--out_dir", str(out.parent / f"knn_{out.name}"), "--k", "2", "--bootstrap", "20",
        "--permutations", "10", "--pairs", "50", "--device", "cpu", "--skip_existing",
        "--no_progress",
    ]  # fmt: skip
    return [("vectors", extract_vectors.main, vec), ("geometry", extract_knn.main, knn)]


def launcher_args(tmp: Path, *extra: str):
    return launch.get_args_parser().parse_args(
        ["--log_dir", str(tmp / "logs"), "--time", "10", *extra, "pipeline"]
    )


def sacct_times(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-o", "JobID,Start,End", *(f"-j{j}" for j in job_ids)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {r.split("|")[0]: tuple(r.split("|")[1:]) for r in out.splitlines() if r}


@pytest.fixture(scope="module")
def first_launch(work, monkeypatch_module) -> dict:
    """One launch of vectors -> geometry, run to the end."""
    out = work["tmp"] / "vector"
    steps = vector_steps(work, out)
    args = launcher_args(work["tmp"])
    subs = launch.submit(steps, args)
    t0 = time.monotonic()
    launch.wait_for(subs, timeout=TIMEOUT_S)
    return {"subs": subs, "out": out, "steps": steps, "args": args, "s": time.monotonic() - t0}


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Jobs run in the submitting process's folder: the repository root, where `src` imports."""
    mp = pytest.MonkeyPatch()
    mp.chdir(REPO)
    yield mp
    mp.undo()


def test_array_over_shards_then_dependent_job(first_launch, capsys):
    vec_sub, knn_sub = first_launch["subs"]
    assert [t.label for t in vec_sub.tasks] == ["photos", "synth_00", "synth_01"]
    assert [j.job_id for j in vec_sub.jobs] == [f"{vec_sub.job_id}_{i}" for i in range(3)]
    assert launch.report(first_launch["subs"]) == 0
    for shard in ("photos", "synth_00", "synth_01"):
        manifest = json.loads((first_launch["out"] / "mini" / shard / "manifest.json").read_text())
        assert manifest["n_ok"] == 2
    # the array's sbatch file and one log per task, named <array>_<task>
    sbatch = (first_launch["args"].log_dir / f"{vec_sub.job_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-2%3" in sbatch
    for i in range(3):
        log = first_launch["args"].log_dir / f"{vec_sub.job_id}_{i}_0_log.out"
        assert "2 ok" in log.read_text()
    # geometry was submitted after the array and started only once every task had ended
    knn_sbatch = (first_launch["args"].log_dir / f"{knn_sub.job_id}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterok:{vec_sub.job_id}" in knn_sbatch
    times = sacct_times([vec_sub.job_id, knn_sub.job_id])
    assert times[knn_sub.job_id][0] >= max(times[j.job_id][1] for j in vec_sub.jobs)
    assert (first_launch["out"].parent / "knn_vector" / "manifest.json").exists()


def test_relaunch_submits_only_the_missing_shard(first_launch):
    shutil.rmtree(first_launch["out"] / "mini" / "synth_00")
    subs = launch.submit(first_launch["steps"], first_launch["args"])
    assert [(s.title, [t.label for t in s.tasks]) for s in subs] == [("vectors", ["synth_00"])]
    assert subs[0].tasks[0].argv[-2:] == ["--shards", "synth_00"]
    launch.wait_for(subs, timeout=TIMEOUT_S)
    assert launch.report(subs) == 0
    assert (first_launch["out"] / "mini" / "synth_00" / "manifest.json").exists()
    assert launch.submit(first_launch["steps"], first_launch["args"]) == []


def test_failing_task_is_reported_and_dependents_do_not_hang(work, monkeypatch_module, capsys):
    out = work["tmp"] / "vector_bad"
    # synth_01's folder holds (unfinished) output of another model: that task must fail
    (out / "mini" / "synth_01").mkdir(parents=True)
    (out / "mini" / "synth_01" / ".owner.json").write_text('{"model_id": "someone/else"}')
    subs = launch.submit(vector_steps(work, out), launcher_args(work["tmp"]))
    t0 = time.monotonic()
    launch.wait_for(subs, timeout=TIMEOUT_S)  # returns: nothing is left pending
    assert time.monotonic() - t0 < TIMEOUT_S
    vec_sub, knn_sub = subs
    states = [launch.job_state(j) for j in vec_sub.jobs]
    assert states == ["COMPLETED", "COMPLETED", "FAILED"]
    with pytest.raises(Exception, match="extract_vectors exited with code 2"):
        vec_sub.jobs[2].result()
    assert launch.job_state(knn_sub.jobs[0]).startswith("CANCELLED")
    capsys.readouterr()
    assert launch.report(subs) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "exited with code 2" in printed
    assert "holds output for model_id='someone/else'" in printed  # the stage's own message
    assert str(vec_sub.jobs[2].paths.stdout) in printed
    # nothing more is submitted after a failed job has ended
    with pytest.raises(launch.StageFailed, match="failed; nothing more submitted"):
        launch.dependencies(subs)


def test_preempted_training_is_requeued_and_resumes(work, monkeypatch_module):
    vec = work["tmp"] / "lin_vectors"
    torch.manual_seed(1)
    write_linear_vectors(vec, "lin", torch.linalg.qr(torch.randn(12, 12))[0], n=400)
    out = work["tmp"] / "recon_lin"
    epochs = 30
    argv = [
        "--vec_dir", str(vec / "lin"), "--embed_model", "lin", "--out_dir", str(out),
        "--normalize", "--batch_size", "16", "--hidden_size", "32", "--num_layers", "2",
        "--epochs", str(epochs), "--device", "cpu", "--skip_existing", "--no_progress",
    ]  # fmt: skip
    args = launcher_args(work["tmp"], "--time", "30")  # 30 min: a signal now is a preemption
    subs = launch.submit([("recon", train_recon.main, argv)], args)
    job = subs[0].jobs[0]
    deadline = time.monotonic() + TIMEOUT_S
    while not (out / "checkpoint.pt").exists():  # the first epoch is checkpointed
        assert time.monotonic() < deadline and not job.done(force_check=True), job.stdout()
        time.sleep(0.2)
    # What Slurm does ahead of a preemption or the time limit (--signal=USR2@90)
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True)
    launch.wait_for(subs, timeout=TIMEOUT_S)
    log = job.stdout() or ""
    assert launch.job_state(job) == "COMPLETED", log
    err = job.stderr() or ""
    assert "Caught signal SIGUSR2" in err and "this job is preempted" in err, err
    assert "DUE TO JOB REQUEUE" in err, err
    resumed = [line for line in log.splitlines() if "resumed from" in line]
    assert resumed, log
    assert 0 < int(resumed[0].rsplit(" ", 1)[-1]) < epochs
    summary = json.loads((out / "train_summary.json").read_text())
    assert [h["epoch"] for h in summary["history"]] == list(range(1, epochs + 1))
