"""Stage: a dual encoder from two frozen towers (seed E, phase 1): an MLP adapter on each into a
shared space, trained with MRL InfoNCE (both directions, each radius counted once, learnable
logit scale), checkpoint picked on a validation split, retrieval reported on a held-out test split.

Default: EfficientNet-Lite0 (pooled, 1280) + MiniLM (384) -> 512 on the sample data, written to
data/align/<name>; its tables go to results/align/<name>. The fit is src.models.align_fit.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from src.cli import add_fields, command_line, from_args
from src.data.io import MANIFEST_NAME
from src.data.paths import align_dir, contrastive_results_dir
from src.models.align_fit import AlignData, AlignTrain, build_pairs, train_adapters, write_outputs
from src.models.dual_encoder import AlignArch, DualEncoderConfig
from src.runtime import add_runtime_args, resolve_device, resolve_dtype
from src.stage import Stage

ALIGN_ROOT = Path("data/align")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_align",
        description="Contrastive MRL adapters on two frozen towers -> a dual encoder folder.",
    )
    p.add_argument("--name", default="efficientnet-lite0_minilm", help="the dual encoder's name")
    p.add_argument("--out_dir", type=Path, help=f"default {ALIGN_ROOT}/<name>")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="tables go to <results>/align/<name>")  # fmt: skip
    add_fields(p.add_argument_group("data"), AlignData)
    add_fields(p.add_argument_group("model"), AlignArch)
    add_fields(p.add_argument_group("training"), AlignTrain)
    p.add_argument("--skip_existing", action="store_true", help="do nothing when finished")
    add_runtime_args(p)
    return p


def _out(a: argparse.Namespace) -> Path:
    return a.out_dir or align_dir(ALIGN_ROOT, a.name)


def _tables(a: argparse.Namespace) -> Path:
    return contrastive_results_dir(a.results, a.name)


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    arch, cfg = from_args(AlignArch, args), from_args(AlignTrain, args)
    arch.check()
    device = resolve_device(args.device)
    out = _out(args)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # incomplete until written again
    splits, record = build_pairs(
        from_args(AlignData, args), arch, cfg, out, device, resolve_dtype(args.dtype, device)
    )
    print(f"[train_align] {arch.vision} + {arch.text} -> {arch.d_align}: "
          f"{record['split']}, {len(record['skipped'])} skipped")  # fmt: skip
    dims = {"d_vision": record["dims"]["vision"], "d_text": record["dims"]["text"]}
    fit = train_adapters(DualEncoderConfig(**asdict(arch), **dims), splits["train"],
                         splits["val"], cfg, work_dir=out, device=args.device,
                         progress=not args.no_progress)  # fmt: skip
    if not fit.finished:
        print(f"  stopped after epoch {fit.history[-1]['epoch']} of {cfg.epochs}; run again")
        return 0
    full = write_outputs(
        fit, splits["test"], cfg, record, out_dir=out, tables=_tables(args),
        command=command_line(get_args_parser(), args),
        manifest={"stage": "train_align", "args": vars(args)},
        seconds=time.perf_counter() - t0,
    )  # fmt: skip
    shown = ", ".join(f"{d[:5]} {m} {v:.3f}" for (d, m), v in full.items())
    print(f"  best epoch {fit.best_epoch}; test (d={arch.d_align}): {shown}")
    print(f"  saved to {out} ({time.perf_counter() - t0:.1f}s)")
    return 0


STAGE = Stage(
    name="train_align",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root, *(p for p in (a.vision_cache, a.text_cache) if p)],
    outputs=lambda a: [_out(a), _tables(a) / "retrieval.csv"],
    resume_drop=("--fresh",),
    description="contrastive MRL dual encoder (seed E)",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
