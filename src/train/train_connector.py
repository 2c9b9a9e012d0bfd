"""Stage: train a LLaVA-style MLP connector between a frozen vision tower and a frozen LM.

Default: the `mini` connector (EfficientNet-Lite0 16 tokens -> MLP -> SmolLM2-135M-Instruct) on
the sample data, written to data/connector/<name>. The committed weights in src/models/weights
are only ever written when --out_dir names them. The frozen tower's features are cached once as
vector chunks; training then touches only the connector and the LM. Held-out synthetic scenes
measure how often the greedy caption names the first object's colour and shape, against the
majority-class baseline. The fit itself is src.models.connector_fit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from src.cli import add_fields, command_line, from_args
from src.data.io import is_complete
from src.data.paths import connector_dir, connector_work_dir
from src.models.connector import CONFIG_NAME, ConnectorArch
from src.models.connector_fit import (
    ConnectorRecipe,
    TrainConfig,
    fit_connector,
    report_lines,
)
from src.runtime import add_runtime_args, resolve_device, resolve_dtype
from src.stage import Stage

CONNECTOR_ROOT = Path("data/connector")
WORK_ROOT = Path("data/train_connector")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_connector",
        description="Train an MLP connector (frozen vision tower, frozen LM, caption loss).",
    )
    p.add_argument(
        "--name",
        default="mini",
        help=f"the connector's name: its default folders are {CONNECTOR_ROOT}/<name> and "
        f"{WORK_ROOT}/<name>",
    )
    p.add_argument(
        "--out_dir",
        type=Path,
        help=f"where connector.safetensors + config.json go (default {CONNECTOR_ROOT}/<name>; "
        "the committed mini weights are only replaced by naming src/models/weights/mini here)",
    )
    p.add_argument(
        "--work_dir",
        type=Path,
        help=f"feature cache, checkpoint and evaluation outputs (default {WORK_ROOT}/<name>)",
    )
    add_fields(p.add_argument_group("data and run"), ConnectorRecipe)
    add_fields(p.add_argument_group("connector"), ConnectorArch)
    add_fields(p.add_argument_group("training"), TrainConfig)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="do nothing when work_dir holds a finished run and out_dir its connector",
    )
    add_runtime_args(p)
    return p


def _out_dir(a: argparse.Namespace) -> Path:
    return a.out_dir or connector_dir(CONNECTOR_ROOT, a.name)


def _work_dir(a: argparse.Namespace) -> Path:
    return a.work_dir or connector_work_dir(WORK_ROOT, a.name)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    training = fit_connector(
        from_args(ConnectorArch, args),
        from_args(ConnectorRecipe, args),
        from_args(TrainConfig, args),
        out_dir=_out_dir(args),
        work_dir=_work_dir(args),
        device=device,
        dtype=resolve_dtype(args.dtype, device),
        command=command_line(get_args_parser(), args),
        record={"stage": "train_connector", "args": vars(args)},
    )
    print("\n".join(report_lines(training, _out_dir(args))))
    return 0


STAGE = Stage(
    name="train_connector",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root],
    outputs=lambda a: [_out_dir(a), _work_dir(a)],
    # The connector folder has no manifest (config.json is its last file): the work folder's
    # manifest is written after it.
    done=lambda a: is_complete(_work_dir(a)) and (_out_dir(a) / CONFIG_NAME).exists(),
    # A requeued (preempted) job resumes from its checkpoint, so it must not start afresh.
    resume_drop=("--fresh",),
    description="MLP connector, caption loss",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
