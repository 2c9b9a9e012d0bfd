"""Launcher: the sample study (or one stage) as Slurm jobs through submitit, or the same locally.

    python -m src.launch [options] pipeline [src.pipeline args]
    python -m src.launch [options] src.extract.extract_vectors [stage args]

Each step of `src.pipeline.plan` (or the one stage) is checked with the stage's own parser, then
submitted as a job array with one task per shard still missing (sharded stages) or as one job.
A step waits (afterok) only for the submitted steps that write what it reads, as the stages
declare their inputs and outputs (src/stage.py), so independent steps (the reference arrays
and the vector array) run side by side, and a failure stops only what depends on it. Complete
outputs (manifests) are not submitted again. Tasks that are preempted or time out are requeued
and resume from their checkpoints. `--local` runs the same tasks here, one after another.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from src.errors import UserError
from src.jobs import (
    ShardsNotReady,
    StageFailed,
    StageMain,
    Task,
    depends_on,
    parse_stage_args,
    stage_main,
    step_paths,
    step_tasks,
)

Steps = Sequence[tuple[str, StageMain, list[str]]]

PIPELINE = "pipeline"
STAGE_FOLDERS = ("extract", "train", "eval", "plot")


@dataclass
class Submitted:
    """One step's submission: its tasks, their submitit jobs (one per task), what it writes."""

    title: str
    tasks: list[Task]
    jobs: list = field(default_factory=list)  # submitit.Job, one per task
    outputs: list[Path] = field(default_factory=list)

    @property
    def job_id(self) -> str:
        """The Slurm job id (an array's id for an array)."""
        return self.jobs[0].job_id.split("_")[0]


def stage_modules() -> list[tuple[str, str]]:
    """(module, first docstring line) of every stage, found by reading the stage folders' source
    (no import: listing them costs nothing and pulls in no model or plotting code)."""
    found = []
    for folder in STAGE_FOLDERS:
        for path in sorted((Path(__file__).parent / folder).glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            declares = any(
                isinstance(n, ast.Assign)
                and any(getattr(t, "id", "") == "STAGE" for t in n.targets)
                for n in tree.body
            )
            if declares:
                doc = (ast.get_docstring(tree) or "").removeprefix("Stage: ").replace("\n", " ")
                doc = doc if len(doc) <= 64 else doc[:61].rsplit(" ", 1)[0] + " ..."
                found.append((f"src.{folder}.{path.stem}", doc))
    return found


def get_args_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {m:<34} {d}" for m, d in stage_modules())
    p = argparse.ArgumentParser(
        prog="python -m src.launch",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"targets:\n  {PIPELINE:<34} the whole sample study (src.pipeline)\n{listing}",
        description="Submit the sample study (`pipeline`) or one stage (its module, e.g. "
        "src.extract.extract_vectors) to Slurm through submitit: a job array over the shards "
        "still missing, chained with afterok dependencies; or run the same plan with --local. "
        "Everything after the target goes to it. sbatch's own SBATCH_* variables (e.g. "
        "SBATCH_PARTITION, SBATCH_ACCOUNT, SBATCH_TIMELIMIT, SBATCH_GRES) override the flags.",
    )
    p.add_argument("target", help="'pipeline' or a stage module")
    p.add_argument("target_args", nargs=argparse.REMAINDER, help="arguments for the target")
    p.add_argument("--local", action="store_true", help="run here, one task after another")
    p.add_argument("--dry_run", action="store_true", help="print the plan and the sbatch files")
    p.add_argument(
        "--log_dir",
        type=Path,
        default=Path("logs"),
        help="job logs and pickles: <log_dir>/%%A_%%a_0_log.out (default logs)",
    )
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--time", type=int, default=120, help="minutes per job (default 120)")
    p.add_argument("--gpus_per_node", type=int, default=0)
    p.add_argument("--cpus_per_task", type=int)
    p.add_argument("--mem_gb", type=float, help="memory per job in GB")
    p.add_argument(
        "--setup",
        default=os.environ.get("BRIDGESCOPE_SETUP"),
        help="file each job sources first (module loads, env activation); "
        "default $BRIDGESCOPE_SETUP",
    )
    p.add_argument(
        "--python",
        default=os.environ.get("BRIDGESCOPE_PYTHON", sys.executable),
        help="interpreter on the nodes (default $BRIDGESCOPE_PYTHON, else this one)",
    )
    p.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --sbatch mail-type=FAIL (repeatable)",
    )
    p.add_argument("--array_parallelism", type=int, default=256, help="tasks running at once")
    p.add_argument("--max_requeues", type=int, default=3, help="requeues after timeouts")
    p.add_argument("--wait", action="store_true", help="wait for every job and report")
    p.add_argument("--wait_timeout", type=float, help="give up waiting after this many seconds")
    return p


def load_steps(target: str, target_args: list[str]) -> list[tuple[str, StageMain, list[str]]]:
    """The steps to run: the sample study's plan, or the one stage."""
    if target == PIPELINE:
        from src import pipeline

        return [tuple(s) for s in pipeline.plan(pipeline.get_args_parser().parse_args(target_args))]
    main = stage_main(target)
    return [(target.rsplit(".", 1)[-1], main, list(target_args))]


def job_name(title: str) -> str:
    return "bs-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", title).strip("-")


def sbatch_parameters(args: argparse.Namespace, title: str, after: Sequence[str]) -> dict:
    """submitit's Slurm parameters for one step (the same dict submits and prints)."""
    params: dict = {"job_name": job_name(title), "time": args.time}
    for key in ("partition", "account", "qos", "constraint", "cpus_per_task"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.gpus_per_node:
        params["gpus_per_node"] = args.gpus_per_node
    extra = {}
    if args.mem_gb is not None:
        extra["mem"] = f"{round(args.mem_gb * 1024)}M"
    for kv in args.sbatch:
        key, sep, value = kv.partition("=")
        if not sep or not key:
            raise UserError(f"--sbatch expects KEY=VALUE, got {kv!r}")
        extra[key.lstrip("-")] = value
    if extra:
        params["additional_parameters"] = extra
    if args.setup:
        params["setup"] = [f"source {shlex.quote(str(args.setup))}"]
    if after:
        params["dependency"] = "afterok:" + ":".join(after)
    params["array_parallelism"] = args.array_parallelism
    return params


def sbatch_text(args: argparse.Namespace, title: str, n_tasks: int, after: Sequence[str]) -> str:
    """The sbatch file submitit writes for a step, without submitting it."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor itself calls

    command = " ".join([shlex.quote(args.python), "-u -m submitit.core._submit",
                        shlex.quote(str(log_folder(args)))])  # fmt: skip
    params = sbatch_parameters(args, title, after)
    return _make_sbatch_string(
        command=command,
        folder=log_folder(args),
        map_count=n_tasks if n_tasks > 1 else None,
        **params,
    )


def log_folder(args: argparse.Namespace) -> Path:
    """One folder for every job's files (<job>_<task>_log.out, <array>_<i>_0_log.out, pickles):
    it exists before sbatch runs, so Slurm can always open the log (it makes no folders)."""
    return args.log_dir.absolute()


def make_executor(args: argparse.Namespace):
    import submitit

    return submitit.SlurmExecutor(
        folder=log_folder(args), max_num_timeout=args.max_requeues, python=shlex.quote(args.python)
    )


def wait_for(subs: list[Submitted], timeout: float | None = None, poll_s: float = 2.0) -> None:
    """Block until every job has ended (completed, failed or cancelled), polling sacct.

    Once a job has failed, the jobs of later steps (which wait for it with afterok) are
    cancelled: without Slurm's kill_invalid_depend they would stay pending forever."""
    jobs = [j for s in subs for j in s.jobs]
    t0 = time.monotonic()
    failed_step = len(subs)
    while jobs:
        jobs[0].watcher.update()  # one sacct call for every registered job
        jobs = [j for j in jobs if not j.done()]
        for i, s in enumerate(subs[:failed_step]):
            if any(j.done() and job_state(j) != "COMPLETED" for j in s.jobs):
                failed_step = i
                for later in subs[i + 1 :]:
                    for j in later.jobs:
                        if not j.done():
                            j.cancel(check=False)
                break
        if not jobs:
            return
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{len(jobs)} job(s) still running after {timeout:.0f}s")
        time.sleep(poll_s)


def job_state(job) -> str:
    """sacct's state, but COMPLETED only when the task left a result (the stage succeeded)."""
    state = job.watcher.get_state(job.job_id, mode="cache").split()[0]
    if job.paths.result_pickle.exists():
        outcome = "error" if job.exception() is not None else "success"
        return "COMPLETED" if outcome == "success" else "FAILED"
    return state


def failure(job) -> list[str]:
    """Why a job failed: the stage's own `error:` lines from its log, and the exception."""
    errors = [x for x in (job.stderr() or "").splitlines() if x.startswith("error:")]
    if job.paths.result_pickle.exists() and job.exception() is not None:
        trace = [x for x in str(job.exception()).splitlines() if x.strip()]
        errors += [x for x in trace if "StageFailed" in x or "Error" in x][-1:]
    return errors[-3:]


def report(subs: list[Submitted]) -> int:
    """Print each job's final state; the error of each failed one. 1 if any did not complete."""
    bad = 0
    for s in subs:
        for task, job in zip(s.tasks, s.jobs, strict=True):
            state = job_state(job)
            print(f"  {job.job_id:>12}  {state:<10} {task.name}")
            if state != "COMPLETED":
                bad += 1
                for line in failure(job):
                    print("      " + line)
                print(f"      log: {job.paths.stdout}")
    return 1 if bad else 0


def dependencies(subs: list[Submitted]) -> list[str]:
    """Job ids a step must wait for (afterok): those of `subs` (the steps it reads from) still
    running. One that has ended is left out (Slurm forgets ended jobs after a while); if it
    failed, the step is not submitted."""
    after = []
    for s in subs:
        if all(j.done() for j in s.jobs):
            if report_failures([s]):
                raise StageFailed(f"'{s.title}' (job {s.job_id}) failed; nothing more submitted")
        else:
            after.append(s.job_id)
    return after


def upstream(subs: list[Submitted], inputs: list[Path]) -> list[Submitted]:
    """The submitted steps that write something a step reads."""
    return [s for s in subs if depends_on(inputs, s.outputs)]


def submit(steps: Steps, args: argparse.Namespace) -> list[Submitted]:
    """Submit every step with missing work, each after the submitted steps it reads from.

    A step whose shards cannot be listed yet (its input comes from an earlier step) waits for
    those steps' jobs, then lists them. UserError for arguments a stage rejects."""
    steps = list(steps)
    for _, main, argv in steps:  # fail fast: every step's argv through its own parser
        parse_stage_args(main, argv)
    subs: list[Submitted] = []
    for title, main, argv in steps:
        inputs, outputs = step_paths(main, argv)
        before = upstream(subs, inputs)
        try:
            tasks = step_tasks(title, main, argv)
        except ShardsNotReady as e:
            if not before:
                raise UserError(f"step '{title}': {e}") from None
            print(f"== {title}: waiting for the jobs it reads from to list its shards ({e})")
            wait_for(before, args.wait_timeout)
            if report_failures(before):
                raise StageFailed(f"step '{title}' not submitted: a job it needs failed") from None
            tasks = step_tasks(title, main, argv)
        if not tasks:
            print(f"== {title}: complete, nothing to submit")
            continue
        after = dependencies(before)
        executor = make_executor(args)
        executor.update_parameters(**sbatch_parameters(args, title, after))
        with executor.batch():
            jobs = [executor.submit(t) for t in tasks]
        sub = Submitted(title, tasks, jobs, outputs)
        subs.append(sub)
        labels = ", ".join(t.label for t in tasks)
        what = f"array of {len(tasks)}: {labels}" if len(tasks) > 1 else (labels or "1 job")
        dep = f", after {','.join(after)}" if after else ""
        print(f"== {title}: job {sub.job_id} ({what}{dep})")
        logs = [str(jobs[0].paths.stdout)] + ([str(jobs[-1].paths.stdout)] if len(jobs) > 1 else [])
        print("   logs: " + " ... ".join(logs))
    return subs


def report_failures(subs: list[Submitted]) -> bool:
    return any(job_state(j) != "COMPLETED" for s in subs for j in s.jobs)


def run_local(steps: Steps) -> int:
    """The same tasks, run here one after another; stops at the first failure."""
    for _, main, argv in steps:
        parse_stage_args(main, argv)
    t_all = time.perf_counter()
    for title, main, argv in steps:
        try:
            tasks = step_tasks(title, main, argv)
        except ShardsNotReady as e:
            raise UserError(f"step '{title}': {e}") from None
        if not tasks:
            print(f"== {title}: complete, nothing to run", flush=True)
        for task in tasks:
            print(f"== {task.name} (local)", flush=True)
            t0 = time.perf_counter()
            try:
                task()
            except StageFailed as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            print(f"   done in {time.perf_counter() - t0:.0f}s", flush=True)
    print(f"== all done in {time.perf_counter() - t_all:.0f}s")
    return 0


def dry_run(steps: Steps, args: argparse.Namespace) -> int:
    """Print what would be submitted: each step's tasks, the steps it waits for, its sbatch
    file (with <title> standing for a job id not known yet)."""
    planned: list[Submitted] = []  # steps that would be submitted, without jobs
    for title, main, argv in steps:
        inputs, outputs = step_paths(main, argv)
        after = [f"<{s.title}>" for s in upstream(planned, inputs)]
        waits = f"; after {', '.join(after)}" if after else "; depends on nothing"
        try:
            tasks = step_tasks(title, main, argv)
        except ShardsNotReady as e:
            print(f"== {title}: shards listed once the steps it reads from have run ({e}){waits}")
            planned.append(Submitted(title, [], [], outputs))
            continue
        if not tasks:
            print(f"== {title}: complete, nothing to submit")
            continue
        print(f"== {title}: {len(tasks)} task(s){waits}")
        for t in tasks:
            print("   " + shlex.join(["python", "-m", t.main.__module__, *t.argv]))
        print(sbatch_text(args, title, len(tasks), after))
        planned.append(Submitted(title, tasks, [], outputs))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    target_args = args.target_args[1:] if args.target_args[:1] == ["--"] else args.target_args
    try:
        steps = load_steps(args.target, target_args)
        if args.dry_run:
            return dry_run(steps, args)
        if args.local:
            return run_local(steps)
        subs = submit(steps, args)
    except (UserError, StageFailed) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not subs:
        print("nothing to submit: every step is complete")
        return 0
    if not args.wait:
        print(f"submitted {sum(len(s.jobs) for s in subs)} task(s); follow with squeue --me")
        return 0
    try:
        wait_for(subs, args.wait_timeout)
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return report(subs)


if __name__ == "__main__":
    sys.exit(main())
