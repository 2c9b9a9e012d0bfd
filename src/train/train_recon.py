"""Stage: train (or evaluate) a reconstructor E_post -> E_pre on one model's vectors.

Data streams chunk by chunk; the held-out split is a deterministic function of the image key
and --split_seed; normalisation statistics come from the training split only. accelerate places
the model and handles mixed precision, so the same command runs on CPU, one GPU or several
(accelerate launch). The fit itself is src.recon.fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from src.cli import add_fields, from_args
from src.data.identity import add_override_arg
from src.data.io import is_complete
from src.data.paths import shard_dirs
from src.recon.data import pair_sources, vectors_model
from src.recon.fit import FitConfig, fit_recon, held_out_mse
from src.recon.model import ReconOptions
from src.runtime import csv_list
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_recon",
        description="Train a reconstructor from E_post back to E_pre (or --eval_only).",
    )
    p.add_argument(
        "--vec_dir",
        type=Path,
        required=True,
        help="a model's vector folder (data/vector/<model>) or one shard of it",
    )
    p.add_argument("--shards", type=csv_list, help="only these shards of --vec_dir")
    p.add_argument(
        "--embed_model",
        help="model name (default: the one the vectors' manifests name; checked against them)",
    )
    add_override_arg(p, "use --embed_model even where it disagrees with the vectors' manifests")
    p.add_argument(
        "--out_dir",
        type=Path,
        required=True,
        help="weights, recon_config.json, norm_stats, checkpoint.pt, train_summary.json, "
        "manifest (e.g. data/recon/<model>)",
    )
    add_fields(p.add_argument_group("reconstructor"), ReconOptions)
    add_fields(p.add_argument_group("training"), FitConfig)
    p.add_argument("--eval_only", action="store_true", help="evaluate out_dir's best model")
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="do nothing when out_dir already holds a finished run (its manifest)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    sources = pair_sources(shard_dirs(args.vec_dir, args.shards))
    upstream = vectors_model(
        args.vec_dir, args.shards, args.embed_model, override=args.override_model
    )
    if args.eval_only:
        score = held_out_mse(sources, args.out_dir, upstream["model"], args.batch_size)
        print(json.dumps(score))
        return 0
    fit_recon(
        sources,
        from_args(ReconOptions, args),
        from_args(FitConfig, args),
        args.out_dir,
        embed_model=upstream["model"],
        record={
            "stage": "train_recon",
            "upstream": upstream,
            "vec_dir": args.vec_dir,
            "shards": args.shards,
            "args": vars(args),
        },
    )
    return 0


STAGE = Stage(
    name="train_recon",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.vec_dir],
    outputs=lambda a: [a.out_dir],
    # --eval_only writes nothing, so there is never a finished output to skip it for.
    done=lambda a: not a.eval_only and is_complete(a.out_dir),
    # A requeued (preempted) job continues from its per-epoch checkpoint.
    resume_add=("--resume",),
    description="E_post -> E_pre reconstructor",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
