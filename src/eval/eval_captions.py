"""Stage: captions from E_post as the model made it and, with --compare_post_vs_recon, from the
reconstructed E_pre sent back through the connector; a CSV per shard."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from src.data.io import atomic_write, is_complete, write_manifest
from src.data.paths import shard_dirs
from src.metrics.caption_tables import reference_scores
from src.metrics.text import BertScorer
from src.models import MODEL_NAMES, load_adapter
from src.models.base import DEFAULT_PROMPT
from src.models.captioning import caption_shard, stored
from src.recon.model import STATS_NAME, NormStats, load_recon, reconstruct
from src.runtime import add_runtime_args, csv_list, resolve_device, resolve_dtype


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_captions",
        description="Greedy captions from stored E_post, and from reconstructed E_pre passed "
        "through the connector (--compare_post_vs_recon). Writes <out_dir>/<shard>.csv.",
    )
    p.add_argument("--vec_dir", type=Path, required=True, help="data/vector/<model>")
    p.add_argument("--image_dir", type=Path, required=True, help="the image root")
    p.add_argument("--embed_model", required=True, choices=MODEL_NAMES)
    p.add_argument("--vlm_id", help="hub id or path of the VLM (default: the adapter's)")
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


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
        dirs = shard_dirs(args.vec_dir, args.shards)
        variants = {"post": stored}
        if args.compare_post_vs_recon:
            if args.model_path is None:
                raise ValueError("--compare_post_vs_recon needs --model_path (a reconstructor)")
            folder = args.model_path if args.model_path.is_dir() else args.model_path.parent
            recon, _ = load_recon(folder, args.embed_model)
            recon.to(device)
            stats = NormStats.load(args.recon_stats_path or folder / STATS_NAME)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if (
        args.skip_existing
        and is_complete(args.out_dir)
        and all((args.out_dir / f"{d.name}.csv").exists() for d in dirs)
    ):
        print(f"  {args.out_dir}: every shard captioned, nothing to do")
        return 0
    adapter = load_adapter(args.embed_model, args.vlm_id, device=device, dtype=dtype)
    if args.compare_post_vs_recon:

        def from_recon(keys: list[str], posts: list[torch.Tensor], inputs: dict):
            return adapter.connect(inputs, reconstruct(recon, stats, posts, device))

        variants["recon"] = from_recon
    budget = args.max_items or None
    for d in dirs:
        out = args.out_dir / f"{d.name}.csv"
        if args.skip_existing and out.exists():
            print(f"  {d.name}: {out} exists, skipped")
            continue
        limit = min(x for x in (args.shard_limit, budget, 10**12) if x is not None)
        if limit <= 0:
            break
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
            caption_cols = [c for c in df.columns if c.startswith("caption_")]
            df = reference_scores(df, caption_cols, BertScorer())
            if args.compare_post_vs_recon:
                df["bertscore_recon_vs_post"] = BertScorer()(
                    df["caption_recon"].tolist(), df["caption_post"].tolist()
                )["bertscore_f1"].numpy()
        atomic_write(out, lambda tmp, df=df: df.to_csv(tmp, index=False))
        if budget is not None:
            budget -= len(df)
        same = (df["caption_post"] == df.get("caption_recon", df["caption_post"])).mean()
        extra = f"; recon caption identical for {same:.0%}" if args.compare_post_vs_recon else ""
        print(f"  {d.name}: {len(df)} images captioned{extra}")
    write_manifest(
        args.out_dir,
        stage="eval_captions",
        embed_model=args.embed_model,
        model=adapter.describe(),
        args=vars(args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
