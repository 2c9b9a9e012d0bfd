"""Stage: kernel alignment of a vision tower (KUEA, seed D): fine-tune a student tower so that
its batch kernel matches a frozen teacher's, with a clean loss that keeps it near the original.

Default (offline): EfficientNet-Lite0 student, CRAFT VGG16-BN teacher, on the sample data; by
id, a CLIP student and a DINOv2 teacher as in the paper. The student kernel's parameters are
fitted by least squares on a sample, then trained (and recorded: initial, fitted, final). The
output folder (tower.safetensors + tower.json + manifest) is a vision tower wherever one is
named (train_connector --vision <folder>, eval_probe --vision <folder>). The library is
src.models.kernel_align; the kernels are src.metrics.kernels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.cli import add_fields, command_line, from_args
from src.data.io import is_complete
from src.models.kernel_align import (
    AlignRecipe,
    AlignTrainConfig,
    KernelConfig,
    align_tower,
    write_outputs,
)
from src.stage import Stage

# The seed's flag names, kept as aliases of ours (its "clip" is the student, "dino" the teacher).
SEED_ALIASES = {"--kernel_clip": "kernel_student", "--kernel_dino": "kernel_teacher",
                "--band_clip": "band_student", "--band_dino": "band_teacher"}  # fmt: skip


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_kernel_align",
        description="Align a student vision tower's batch kernel to a teacher's (KUEA).",
    )
    p.add_argument(
        "--out_dir",
        type=Path,
        required=True,
        help="the aligned tower folder (tower.safetensors, tower.json, manifest)",
    )
    p.add_argument(
        "--work_dir",
        type=Path,
        required=True,
        help="feature cache and checkpoint.pt (a killed run resumes from it)",
    )
    p.add_argument("--tables_dir", type=Path,
                   help="history, fit, params, heldout tables (default: --work_dir)")  # fmt: skip
    add_fields(p.add_argument_group("data"), AlignRecipe)
    add_fields(p.add_argument_group("kernels and loss"), KernelConfig)
    add_fields(p.add_argument_group("training"), AlignTrainConfig)
    for flag, dest in SEED_ALIASES.items():
        p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=f"alias of --{dest}")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (accelerate places it)")
    p.add_argument("--stop_after", type=int, help="end after N steps (continue by re-running)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--skip_existing", action="store_true",
                   help="do nothing when out_dir holds a finished tower")  # fmt: skip
    return p


def run(args: argparse.Namespace) -> int:
    recipe = from_args(AlignRecipe, args)
    kcfg, cfg = from_args(KernelConfig, args), from_args(AlignTrainConfig, args)
    result, model, trainable = align_tower(
        recipe, kcfg, cfg, work_dir=args.work_dir, device=args.device, fresh=args.fresh,
        stop_after=args.stop_after,
    )  # fmt: skip
    if not result.finished:
        print(f"stopped at step {result.history[-1]['step'] if result.history else 0} of "
              f"{cfg.steps}; run again (without --fresh) to continue")  # fmt: skip
        return 0
    write_outputs(
        result, model, trainable, recipe, kcfg, cfg, out_dir=args.out_dir,
        tables_dir=args.tables_dir or args.work_dir,
        command=command_line(get_args_parser(), args), args=vars(args),
    )  # fmt: skip
    for stage, values in result.params.items():
        print(f"  kernel {stage}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    for r in result.heldout.itertuples():
        print(f"  held-out {r.tower} {r.metric}: {r.value:.4f} [{r.ci_low:.4f}, {r.ci_high:.4f}]")
    print(f"aligned tower saved to {args.out_dir} ({result.seconds})")
    return 0


STAGE = Stage(
    name="train_kernel_align",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root],
    outputs=lambda a: [a.out_dir],
    done=lambda a: is_complete(a.out_dir),
    resume_drop=("--fresh",),
    description="kernel-aligned vision tower (KUEA)",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
