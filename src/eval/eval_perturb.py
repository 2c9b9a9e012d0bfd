"""Stage: captions from perturbed E_post (mask, lowrank, noise, orthogonal) at several levels,
each image's perturbation seeded by its key; a tidy CSV per shard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from src.data.identity import add_identity_args, vector_identity
from src.data.io import atomic_write, is_complete, write_manifest
from src.data.paths import caption_table, perturb_captions_dir, shard_dirs
from src.errors import UserError
from src.models import load_for_stage
from src.models.base import DEFAULT_PROMPT
from src.models.captioning import caption_shard, stored
from src.models.perturb import MODES, perturb
from src.runtime import add_runtime_args, csv_list
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_perturb",
        description="Captions from perturbed E_post. Levels: the share changed (mask: tokens "
        "zeroed; noise: noise/signal power; orthogonal: rotation angle share), except lowrank: "
        "the share of components kept (1 = identity). Writes <out_dir>/<model>/<mode>/<shard>.csv.",
    )
    p.add_argument("--vec_dir", type=Path, required=True, help="data/vector/<model> or a shard")
    p.add_argument("--image_dir", type=Path, required=True, help="the image root")
    add_identity_args(p, model_flag="--model_name")
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--level", type=float, nargs="+", required=True)
    p.add_argument("--out_dir", type=Path, default=Path("data/perturb_out"))
    p.add_argument("--shards", type=csv_list)
    p.add_argument("--limit", type=int, help="images per shard")
    p.add_argument("--seed", type=int, default=0, help="with the image key, seeds the change")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--amp", action="store_true")
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def level_name(level: float) -> str:
    return f"{level:g}"


def out_dir(args: argparse.Namespace) -> Path:
    """<out_dir>/<model>/<mode>: the model named by the flag, else by the vectors' manifests."""
    model = args.model or vector_identity(args.vec_dir, args.shards)["model"]
    return perturb_captions_dir(args.out_dir, model, args.mode)


def done(args: argparse.Namespace) -> bool:
    folder = out_dir(args)
    dirs = shard_dirs(args.vec_dir, args.shards)
    return is_complete(folder) and all(caption_table(folder, d.name).exists() for d in dirs)


def perturbed_at(level: float, args: argparse.Namespace):
    """A caption variant: every image's E_post perturbed at `level`, seeded by its key."""

    def variant(keys: list[str], posts: list[torch.Tensor], inputs: dict):
        return [
            perturb(p, args.mode, level, k, args.seed) for k, p in zip(keys, posts, strict=True)
        ]

    return variant


def tidy(wide: pd.DataFrame, args: argparse.Namespace) -> pd.DataFrame:
    """One row per (image, level): the perturbed caption beside the original one."""
    long = wide.melt(
        id_vars=["shard", "key", "reference", "caption_original"],
        value_vars=[f"caption_{level_name(lv)}" for lv in args.level],
        var_name="level", value_name="caption",
    )  # fmt: skip
    long["level"] = long["level"].str.removeprefix("caption_").astype(float)
    long.insert(2, "mode", args.mode)
    return long


def run(args: argparse.Namespace) -> int:
    if any(not 0.0 <= lv <= 1.0 for lv in args.level):
        raise UserError(f"--level values must be in [0, 1], got {args.level}")
    dirs = shard_dirs(args.vec_dir, args.shards)
    adapter, ident = load_for_stage(args)
    args.model = ident["model"]
    folder = out_dir(args)
    variants = {"original": stored} | {level_name(lv): perturbed_at(lv, args) for lv in args.level}
    for d in dirs:
        out = caption_table(folder, d.name)
        if args.skip_existing and out.exists():
            continue
        rows = caption_shard(
            adapter,
            d,
            args.image_dir,
            variants,
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            limit=args.limit,
            amp=args.amp,
            progress=not args.no_progress,
        )
        long = tidy(pd.DataFrame(rows), args)
        atomic_write(out, lambda tmp, df=long: df.to_csv(tmp, index=False))
        changed = (long.caption != long.caption_original).groupby(long.level).mean()
        summary = ", ".join(f"{lv:g}: {c:.0%}" for lv, c in changed.items())
        print(f"  {d.name}: {len(rows)} images; captions changed at level {summary}")
    write_manifest(folder, stage="eval_perturb", upstream=ident, model=adapter.describe(),
                   mode=args.mode, levels=args.level, args=vars(args))  # fmt: skip
    return 0


STAGE = Stage(
    name="eval_perturb",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.vec_dir, a.image_dir],
    outputs=lambda a: [a.out_dir],
    done=done,
    on_skip=lambda a: print(f"  {out_dir(a)}: every shard done, nothing to do"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
