"""Stage: captions from E_post as the model made it and, with --compare_post_vs_recon, from the
reconstructed E_pre sent back through the connector; a CSV per shard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from src.data.identity import add_identity_args, upstream_identity
from src.data.io import atomic_write, is_complete, write_manifest
from src.data.paths import caption_table, shard_dirs
from src.errors import UserError
from src.metrics.caption_tables import bertscore_columns
from src.metrics.text import BertScorer
from src.models import load_for_stage
from src.models.base import DEFAULT_PROMPT, VLMAdapter
from src.models.captioning import caption_shard, stored
from src.recon.model import STATS_NAME, NormStats, load_recon, reconstruct
from src.runtime import add_runtime_args, csv_list
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_captions",
        description="Greedy captions from stored E_post, and from reconstructed E_pre passed "
        "through the connector (--compare_post_vs_recon). Writes <out_dir>/<shard>.csv.",
    )
    p.add_argument("--vec_dir", type=Path, required=True, help="data/vector/<model>")
    p.add_argument("--image_dir", type=Path, required=True, help="the image root")
    add_identity_args(p, model_flag="--embed_model")
    p.add_argument("--model_path", type=Path, help="reconstructor folder (train_recon out_dir)")
    p.add_argument(
        "--recon_stats_path",
        type=Path,
        help="its normalisation statistics (default: beside the reconstructor)",
    )
    p.add_argument("--out_dir", type=Path, required=True)
    p.add_argument("--compare_post_vs_recon", action="store_true")
    p.add_argument("--shards", type=csv_list)
    p.add_argument("--shard_limit", type=int, help="images per shard")
    p.add_argument("--max_items", type=int, default=0, help="images in all (0: no limit)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--amp", action="store_true", help="bf16 autocast on GPU")
    p.add_argument(
        "--with_bertscore",
        action="store_true",
        help="add BERTScore F1 columns (offline MiniLM backbone; score_captions has "
        "every scorer option)",
    )
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def done(args: argparse.Namespace) -> bool:
    """The folder is complete with a table for every shard asked for."""
    dirs = shard_dirs(args.vec_dir, args.shards)
    return is_complete(args.out_dir) and all(
        caption_table(args.out_dir, d.name).exists() for d in dirs
    )


def recon_variant(adapter: VLMAdapter, ident: dict, args: argparse.Namespace):
    """Captions from the reconstructed E_pre sent back through the connector."""
    if args.model_path is None:
        raise UserError("--compare_post_vs_recon needs --model_path (a reconstructor)")
    folder = args.model_path if args.model_path.is_dir() else args.model_path.parent
    made_from = upstream_identity(folder)
    if (made_from["model"], made_from["model_id"]) != (ident["model"], ident["model_id"]):
        raise UserError(
            f"--model_path {folder} was trained on vectors of {made_from['model']} "
            f"({made_from['model_id']}), not {ident['model']} ({ident['model_id']})"
        )
    recon, _ = load_recon(folder, ident["model"])
    recon.to(adapter.device)
    stats = NormStats.load(args.recon_stats_path or folder / STATS_NAME)

    def from_recon(keys: list[str], posts: list[torch.Tensor], inputs: dict):
        return adapter.connect(inputs, reconstruct(recon, stats, posts, adapter.device))

    return from_recon


def run(args: argparse.Namespace) -> int:
    dirs = shard_dirs(args.vec_dir, args.shards)
    adapter, ident = load_for_stage(args)
    variants = {"post": stored}
    if args.compare_post_vs_recon:
        variants["recon"] = recon_variant(adapter, ident, args)
    budget = args.max_items or None
    for d in dirs:
        out = caption_table(args.out_dir, d.name)
        limit = min(x for x in (args.shard_limit, budget, 10**12) if x is not None)
        if (args.skip_existing and out.exists()) or limit <= 0:
            continue
        rows = caption_shard(
            adapter,
            d,
            args.image_dir,
            variants,
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            limit=limit,
            amp=args.amp,
            progress=not args.no_progress,
        )
        df = pd.DataFrame(rows)
        if args.with_bertscore:
            df = bertscore_columns(df, BertScorer())
        atomic_write(out, lambda tmp, df=df: df.to_csv(tmp, index=False))
        budget = None if budget is None else budget - len(df)
        same = (df["caption_post"] == df.get("caption_recon", df["caption_post"])).mean()
        extra = f"; recon caption identical for {same:.0%}" if args.compare_post_vs_recon else ""
        print(f"  {d.name}: {len(df)} images captioned{extra}")
    write_manifest(args.out_dir, stage="eval_captions", upstream=ident,
                   model=adapter.describe(), args=vars(args))  # fmt: skip
    return 0


STAGE = Stage(
    name="eval_captions",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.vec_dir, a.image_dir, *([a.model_path] if a.model_path else [])],
    outputs=lambda a: [a.out_dir],
    done=done,
    on_skip=lambda a: print(f"  {a.out_dir}: every shard captioned, nothing to do"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
