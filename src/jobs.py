"""What the launcher runs: a stage's main() as a (requeueable) task, and which tasks are missing.

A step is (title, stage main, argv), as `src.pipeline.plan` returns them. Everything the
launcher knows about a stage beyond argv comes from the stage's own declaration (`STAGE`, see
src/stage.py): its shards, its done rule, its resume flags, its inputs and outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
from collections.abc import Callable
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from src.errors import InputMissing, UserError
from src.stage import Stage, load_stage, overlaps

StageMain = Callable[[list[str]], int]


class StageFailed(RuntimeError):
    """A stage's main() returned a non-zero exit code (the job must fail: afterok stops)."""


class ShardsNotReady(RuntimeError):
    """A step's shards cannot be listed yet: its input is made by an earlier step."""


class Task(Checkpointable):
    """One job: `main(argv)`. Picklable (main is a module-level function), so submitit can run
    it on a node. On preemption or timeout submitit calls checkpoint(), which requeues the task
    with the stage's resume flags added (and its start-afresh flags removed)."""

    def __init__(
        self,
        title: str,
        main: StageMain,
        argv: list[str],
        label: str = "",
        resume_add: tuple[str, ...] = (),
        resume_drop: tuple[str, ...] = (),
    ) -> None:
        self.title, self.main, self.argv, self.label = title, main, list(argv), label
        self.resume_add, self.resume_drop = tuple(resume_add), tuple(resume_drop)

    def __call__(self) -> int:
        rc = self.main(list(self.argv))
        if rc != 0:
            raise StageFailed(
                f"{self.name}: {self.main.__module__} exited with code {rc} (argv: {self.argv})"
            )
        return 0

    @property
    def name(self) -> str:
        return f"{self.title} [{self.label}]" if self.label else self.title

    def resumed(self) -> Task:
        """The same task, set to continue from the stage's own checkpoint."""
        argv = [a for a in self.argv if a not in self.resume_drop]
        argv += [a for a in self.resume_add if a not in argv]
        return Task(self.title, self.main, argv, self.label, self.resume_add, self.resume_drop)

    def checkpoint(self, *args: object, **kwargs: object) -> DelayedSubmission:
        return DelayedSubmission(self.resumed())

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.main.__module__}, {self.argv!r})"


def stage_of(main: StageMain) -> Stage:
    """The declaration of the stage whose main() this is."""
    return load_stage(main.__module__)


def stage_main(module: str) -> StageMain:
    """A stage's main() from its module name, checking it is a stage (it declares STAGE)."""
    load_stage(module)
    return importlib.import_module(module).main


def parse_stage_args(main: StageMain, argv: list[str]) -> argparse.Namespace:
    """argv parsed by the stage's own parser; a UserError with the parser's message if it
    rejects them, so a typo fails before anything is submitted."""
    parser = stage_of(main).parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise UserError(msg[-1] if msg else f"{main.__module__}: bad arguments") from None


def step_tasks(title: str, main: StageMain, argv: list[str]) -> list[Task]:
    """The tasks of one step that still have work to do: one per incomplete shard for a
    sharded stage, else one task (none when the stage's done rule holds).

    Raises UserError for arguments the stage's parser rejects, ShardsNotReady when the shards
    cannot be listed yet (an earlier step makes the input they are listed from)."""
    args = parse_stage_args(main, argv)
    stage = stage_of(main)
    resume = dict(resume_add=stage.resume_add, resume_drop=stage.resume_drop)
    try:
        shards = stage.shards(args) if stage.shards else []
    except InputMissing as e:
        raise ShardsNotReady(str(e)) from None
    if shards:
        todo = [s for s in shards if not stage.is_done(stage.for_shard(args, s))]
        return [Task(title, main, [*argv, stage.shard_flag, s], s, **resume) for s in todo]
    if stage.is_done(args):
        return []
    return [Task(title, main, argv, **resume)]


def step_paths(main: StageMain, argv: list[str]) -> tuple[list[Path], list[Path]]:
    """(inputs, outputs) a step declares: the launcher orders steps by them."""
    stage, args = stage_of(main), parse_stage_args(main, argv)
    return [Path(p) for p in stage.inputs(args)], [Path(p) for p in stage.outputs(args)]


def depends_on(inputs: list[Path], outputs: list[Path]) -> bool:
    """Does a step reading `inputs` need a step writing `outputs` to finish first?"""
    return any(overlaps(i, o) for i in inputs for o in outputs)
