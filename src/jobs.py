"""What the launcher runs: a stage's main() as a (requeueable) task, and which tasks are missing.

A step is (title, stage main, argv), as `src.pipeline.plan` returns them. What the launcher needs
to know about a stage beyond its own parser lives in one registry, `STAGES`, keyed by the stage's
module: how to split it into one job-array task per shard, how to tell that a shard (or the
whole run) is already complete, and which flags make a requeued run resume. A stage missing
from the registry runs as one plain job every time (its own --skip_existing decides what to do).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from submitit.helpers import Checkpointable, DelayedSubmission

from src.data.images import select_shards
from src.data.io import is_complete
from src.data.make_sample import is_sample_complete
from src.data.paths import (
    list_vector_shards,
    recon_table,
    reference_shard_dir,
    scored_dir,
    shard_dirs,
    vector_shard_dir,
)
from src.models import MODEL_NAMES
from src.plotting.report import report_is_current

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


@dataclass(frozen=True)
class StageSpec:
    """What the launcher knows about one stage beyond its parser.

    shards(args) -> the shard names to run as a job array, one task each given
    `shard_flag NAME` (None: one job); shard_done(args, shard) / done(args) -> that shard's /
    the whole run's outputs are complete, so nothing is submitted; resume_add / resume_drop ->
    flags added / removed when a preempted or timed-out task is requeued.
    """

    shards: Callable[[argparse.Namespace], list[str]] | None = None
    shard_flag: str = "--shards"
    shard_done: Callable[[argparse.Namespace, str], bool] | None = None
    done: Callable[[argparse.Namespace], bool] | None = None
    resume_add: tuple[str, ...] = ()
    resume_drop: tuple[str, ...] = ()


def _image_shards(a: argparse.Namespace) -> list[str]:
    if a.shard_index is not None:  # the user asked for one shard: one job, no array
        return []
    try:
        return select_shards(a.root, a.shards)
    except (FileNotFoundError, ValueError) as e:
        raise ShardsNotReady(str(e)) from None


def _vectors_done(a: argparse.Namespace, shard: str) -> bool:
    models = list(MODEL_NAMES) if a.models == ["all"] else a.models
    return a.skip_existing and all(
        is_complete(vector_shard_dir(a.out_dir, m, shard)) for m in models
    )


def _shard_csvs_done(vec_dir: Path, shards: list[str] | None, out_dir: Path) -> bool:
    """eval_captions / eval_perturb skip a run whose folder is complete with every shard's csv."""
    try:
        dirs = shard_dirs(vec_dir, shards)
    except (ValueError, FileNotFoundError):
        return False
    return is_complete(out_dir) and all((out_dir / f"{d.name}.csv").exists() for d in dirs)


def _export_done(a: argparse.Namespace) -> bool:
    shards = list_vector_shards(a.vec_root / a.embed_model)
    shards = [s for s in shards if not a.shards or s in a.shards]
    return bool(shards) and all(
        is_complete(vector_shard_dir(a.out_base, a.embed_model, s)) for s in shards
    )


# Every done-check answers "would the stage itself find nothing to do?"; when unsure, False.
STAGES: dict[str, StageSpec] = {
    "src.data.make_sample": StageSpec(done=is_sample_complete),
    "src.extract.extract_vectors": StageSpec(shards=_image_shards, shard_done=_vectors_done),
    "src.extract.extract_clip": StageSpec(
        shards=_image_shards,
        shard_done=lambda a, s: a.skip_existing and is_complete(reference_shard_dir(a.out_dir, s)),
    ),
    "src.extract.extract_knn": StageSpec(done=lambda a: a.skip_existing and is_complete(a.out_dir)),
    "src.train.train_recon": StageSpec(
        done=lambda a: a.skip_existing and not a.eval_only and is_complete(a.out_dir),
        resume_add=("--resume",),
    ),
    # train_connector resumes from its checkpoint unless told --fresh
    "src.train.train_connector": StageSpec(resume_drop=("--fresh",)),
    "src.train.export_recon": StageSpec(done=lambda a: a.skip_existing and _export_done(a)),
    "src.eval.eval_recon": StageSpec(
        done=lambda a: a.skip_existing and recon_table(a.out_dir, a.embed_model, ".json").exists()
    ),
    "src.eval.eval_captions": StageSpec(
        done=lambda a: a.skip_existing and _shard_csvs_done(a.vec_dir, a.shards, a.out_dir)
    ),
    "src.eval.eval_perturb": StageSpec(
        done=lambda a: (
            a.skip_existing
            and _shard_csvs_done(a.vec_dir, a.shards, a.out_dir / a.model_name / a.mode)
        )
    ),
    "src.eval.score_captions": StageSpec(
        done=lambda a: a.skip_existing and is_complete(a.out_dir or scored_dir(a.caption_dir))
    ),
    "src.eval.score_perturb": StageSpec(done=lambda a: a.skip_existing and is_complete(a.out_dir)),
    "src.plot.report": StageSpec(
        done=lambda a: a.skip_existing and report_is_current(a.results, a.figures)
    ),
}


def stage_spec(main: StageMain) -> StageSpec:
    return STAGES.get(main.__module__, StageSpec())


def stage_main(module: str) -> StageMain:
    """A stage's main() from its module name, checking it is a stage (parser + main)."""
    mod = importlib.import_module(module)
    if not (
        callable(getattr(mod, "main", None)) and callable(getattr(mod, "get_args_parser", None))
    ):
        raise ValueError(f"{module} is not a stage (needs get_args_parser() and main(argv))")
    return mod.main


def parse_stage_args(main: StageMain, argv: list[str]) -> argparse.Namespace:
    """argv parsed by the stage's own parser; a ValueError with the parser's message if it
    rejects them, so a typo fails before anything is submitted."""
    parser = importlib.import_module(main.__module__).get_args_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise ValueError(msg[-1] if msg else f"{main.__module__}: bad arguments") from None


def step_tasks(title: str, main: StageMain, argv: list[str]) -> list[Task]:
    """The tasks of one step that still have work to do: one per incomplete shard for a
    sharded stage, else one task (none when the stage's outputs are complete).

    Raises ValueError for arguments the stage's parser rejects, ShardsNotReady when the shards
    cannot be listed yet."""
    args = parse_stage_args(main, argv)
    spec = stage_spec(main)
    resume = dict(resume_add=spec.resume_add, resume_drop=spec.resume_drop)
    shards = spec.shards(args) if spec.shards else []
    if shards:
        todo = [s for s in shards if not (spec.shard_done and spec.shard_done(args, s))]
        return [Task(title, main, [*argv, spec.shard_flag, s], s, **resume) for s in todo]
    if spec.done and spec.done(args):
        return []
    return [Task(title, main, argv, **resume)]
