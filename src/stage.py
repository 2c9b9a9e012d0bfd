"""What a stage is, declared once: its parser, inputs, outputs, shards, done rule and resume flags.

Every stage module holds one `STAGE = Stage(...)` beside its `get_args_parser()` and a
`main(argv) -> int` that calls `STAGE.main(argv)`. The stage's own `--skip_existing`, the
pipeline and the Slurm launcher all read that declaration, so a stage's outputs and its "done"
rule are written in one place:

    inputs(args)   upstream folders or files the stage reads (their manifests carry identity);
                   the launcher makes a step wait (afterok) for the steps that write them
    outputs(args)  the folders or files it writes, built by src/data/paths.py, listed without
                   touching the disk (no shard listing), so a plan can be made before any data
    done(args)     True when a run would find nothing to do (default: every output complete:
                   a folder with its manifest, a file that exists)
    shards(args)   for a job array: the shard names, one task each given `shard_flag NAME`;
                   done(args) must then honour that flag, so a finished shard is not submitted
    resume_add / resume_drop   flags added / removed when a preempted task is requeued

User errors (`src.errors.UserError`) raised anywhere in a run end as one `error: ...` line and
exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from src.data.io import is_complete
from src.errors import InputMissing, UserError

Args = argparse.Namespace
PathsFn = Callable[[Args], list[Path]]


def _no_paths(_: Args) -> list[Path]:
    return []


def outputs_complete(paths: list[Path]) -> bool:
    """Every output exists whole: a folder holds its manifest (written last), a file exists."""
    return bool(paths) and all(
        is_complete(p) if (p.is_dir() or not p.suffix) else p.exists() for p in map(Path, paths)
    )


@dataclass(frozen=True)
class Stage:
    """One stage's declaration (see the module docstring for each field)."""

    name: str
    module: str
    parser: Callable[[], argparse.ArgumentParser]
    run: Callable[[Args], int | None]
    outputs: PathsFn
    inputs: PathsFn = _no_paths
    done: Callable[[Args], bool] | None = None
    shards: Callable[[Args], list[str]] | None = None
    shard_flag: str = "--shards"
    resume_add: tuple[str, ...] = ()
    resume_drop: tuple[str, ...] = ()
    on_skip: Callable[[Args], None] | None = None  # what to print when nothing is left to do
    # False: the done rule holds whatever the flags (a stage whose outputs are a pure function
    # of its arguments, such as the sample data); True: only with --skip_existing.
    skip_flag: bool = True
    description: str = ""

    def is_done(self, args: Args) -> bool:
        """Would a run find nothing to do? Only with --skip_existing (where the stage has it:
        without it the stage recomputes). Missing inputs mean "not done"; other user errors
        (an output made by another model, say) propagate."""
        if self.skip_flag and not getattr(args, "skip_existing", False):
            return False
        try:
            return self.done(args) if self.done else outputs_complete(self.outputs(args))
        except InputMissing:
            return False

    def for_shard(self, args: Args, shard: str) -> Args:
        """The namespace of the job-array task that runs one shard."""
        one = copy.copy(args)
        dest = self.shard_flag.lstrip("-")
        setattr(one, dest, [shard] if isinstance(getattr(args, dest, None), list | None) else shard)
        if hasattr(one, "shard_index"):
            one.shard_index = None
        return one

    def parse(self, argv: list[str] | None) -> Args:
        return self.parser().parse_args(argv)

    def main(self, argv: list[str] | None = None) -> int:
        """Parse, skip finished work, run; a UserError becomes one `error:` line, exit 2."""
        args = self.parse(argv)
        try:
            if self.is_done(args):
                if self.on_skip:
                    self.on_skip(args)
                else:
                    shown = ", ".join(map(str, self.outputs(args)))
                    print(f"[{self.name}] complete, nothing to do: {shown}")
                return 0
            return int(self.run(args) or 0)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 2


def overlaps(a: Path, b: Path) -> bool:
    """Does one path contain the other (or are they equal)? Compared as absolute paths."""
    a, b = Path(a).absolute(), Path(b).absolute()
    return a == b or a in b.parents or b in a.parents


def load_stage(module: str) -> Stage:
    """The declaration of a stage module (`src.extract.extract_vectors`), with a clear error."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        msg = f"no stage module {module!r} ({e}); see python -m src.launch --help"
        raise UserError(msg) from None
    stage = getattr(mod, "STAGE", None)
    if not isinstance(stage, Stage):
        raise UserError(f"{module} is not a stage (it declares no STAGE)")
    return stage
