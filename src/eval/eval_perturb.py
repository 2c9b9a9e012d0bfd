"""Stage: captions from perturbed E_post (mask, lowrank, noise, orthogonal) at several levels,
each image's perturbation seeded by its key; a tidy CSV per shard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from src.data.io import atomic_write, is_complete, write_manifest
from src.data.paths import shard_dirs
from src.models import MODEL_NAMES, load_adapter
from src.models.base import DEFAULT_PROMPT
from src.models.captioning import caption_shard, stored
from src.models.perturb import MODES, perturb
from src.runtime import add_runtime_args, csv_list, resolve_device, resolve_dtype


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_perturb",
        description="Captions from perturbed E_post. Levels: the share changed (mask: tokens "
        "zeroed; noise: noise/signal power; orthogonal: rotation angle share), except lowrank: "
        "the share of components kept (1 = identity). Writes <out_dir>/<model>/<mode>/<shard>.csv.",
    )
    p.add_argument("--vec_dir", type=Path, required=True, help="data/vector/<model> or a shard")
    p.add_argument("--image_dir", type=Path, required=True, help="the image root")
    p.add_argument("--model_name", required=True, choices=MODEL_NAMES)
    p.add_argument("--vlm_id", help="hub id or path of the VLM (default: the adapter's)")
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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        if any(not 0.0 <= lv <= 1.0 for lv in args.level):
            raise ValueError(f"--level values must be in [0, 1], got {args.level}")
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        dirs = shard_dirs(args.vec_dir, args.shards)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out_dir = args.out_dir / args.model_name / args.mode
    if (
        args.skip_existing
        and is_complete(out_dir)
        and all((out_dir / f"{d.name}.csv").exists() for d in dirs)
    ):
        print(f"  {out_dir}: every shard done, nothing to do")
        return 0
    adapter = load_adapter(args.model_name, args.vlm_id, device=device, dtype=dtype)

    def at(level: float):
        def variant(keys: list[str], posts: list[torch.Tensor], inputs: dict):
            return [
                perturb(p, args.mode, level, k, args.seed) for k, p in zip(keys, posts, strict=True)
            ]

        return variant

    variants = {"original": stored} | {level_name(lv): at(lv) for lv in args.level}
    for d in dirs:
        out = out_dir / f"{d.name}.csv"
        if args.skip_existing and out.exists():
            print(f"  {d.name}: {out} exists, skipped")
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
        wide = pd.DataFrame(rows)
        tidy = wide.melt(
            id_vars=["shard", "key", "reference", "caption_original"],
            value_vars=[f"caption_{level_name(lv)}" for lv in args.level],
            var_name="level", value_name="caption",
        )  # fmt: skip
        tidy["level"] = tidy["level"].str.removeprefix("caption_").astype(float)
        tidy.insert(2, "mode", args.mode)
        atomic_write(out, lambda tmp, df=tidy: df.to_csv(tmp, index=False))
        changed = tidy.assign(same=tidy.caption == tidy.caption_original).groupby("level").same
        summary = ", ".join(f"{lv:g}: {1 - s:.0%}" for lv, s in changed.mean().items())
        print(f"  {d.name}: {len(wide)} images; captions changed at level {summary}")
    write_manifest(
        out_dir,
        stage="eval_perturb",
        model=adapter.describe(),
        mode=args.mode,
        levels=args.level,
        args=vars(args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
