"""Scoring caption tables (pandas): the helpers score_captions and score_perturb share."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from src.data.images import list_images, load_image
from src.metrics.text import BertScorer, ClipScorer, split_references


def add_scorer_args(p: argparse.ArgumentParser) -> None:
    """The scorer flags both scoring stages take."""
    p.add_argument("--image_dir", type=Path, help="image root (needed for CLIPScore)")
    p.add_argument("--clip_model", help="CLIP hub id or path for CLIPScore (none ships offline)")
    p.add_argument("--clip_variant", choices=["torchmetrics", "hessel"], default="torchmetrics")
    p.add_argument(
        "--bertscore_model",
        default="",
        help="bert-score backbone (default: the offline all-MiniLM-L6-v2)",
    )
    p.add_argument("--bertscore_layers", type=int, default=6, help="layer bert-score reads")
    p.add_argument("--idf", action="store_true")
    p.add_argument("--rescale", action="store_true", help="baseline rescaling (hub models)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip_existing", action="store_true")


def reference_scores(df: pd.DataFrame, columns: list[str], bert: BertScorer) -> pd.DataFrame:
    """bertscore_<col>_ref per caption column; NaN where an image has no reference caption."""
    refs = df["reference"].map(split_references)
    has = refs.map(bool)
    for col in columns:
        df[f"bertscore_{col}_ref"] = float("nan")
        if has.any():
            f1 = bert(df.loc[has, col].fillna("").tolist(), refs[has].tolist())["bertscore_f1"]
            df.loc[has, f"bertscore_{col}_ref"] = f1.numpy()
    return df


def clip_scores(
    df: pd.DataFrame, columns: list[str], clip: ClipScorer, image_dir: Path
) -> pd.DataFrame:
    """clipscore_<col> per caption column, against each row's image (shard, key)."""
    records = {(r.shard, r.key): r for s in df["shard"].unique() for r in list_images(image_dir, s)}
    images = [load_image(records[(s, k)]).image for s, k in zip(df["shard"], df["key"],
                                                                 strict=True)]  # fmt: skip
    for col in columns:
        df[f"clipscore_{col}"] = clip(images, df[col].fillna("").tolist()).numpy()
    return df


def build_scorers(args: argparse.Namespace) -> tuple[BertScorer, ClipScorer | None]:
    """The scorers add_scorer_args configured; CLIPScore only with a CLIP (none ships offline)."""
    if args.clip_model and not args.image_dir:
        raise ValueError("CLIPScore needs --image_dir")
    bert = BertScorer(args.bertscore_model, args.bertscore_layers, args.idf, args.rescale,
                      args.batch_size)  # fmt: skip
    if not args.clip_model:
        print("note: no --clip_model, so no CLIPScore (no CLIP ships offline); BERTScore only")
        return bert, None
    return bert, ClipScorer(args.clip_model, variant=args.clip_variant, device=args.device)
