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
    p.add_argument(
        "--nll_vec_dir",
        type=Path,
        help="an image-text score that exists offline: the caption's mean token NLL "
        "under `mini` given the image's stored E_post (data/vector/mini); lower fits "
        "better",
    )
    p.add_argument("--nll_model", help="mini connector folder for the NLL (default: committed)")
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
        print("note: no --clip_model, so no CLIPScore (no CLIP ships offline)")
        return bert, None
    return bert, ClipScorer(args.clip_model, variant=args.clip_variant, device=args.device)


def nll_scores(
    df: pd.DataFrame, columns: list[str], vec_dir: Path, model_id: str | None, device: str
) -> pd.DataFrame:
    """mini_nll_<col>: mean token NLL of each caption under `mini` given the image's stored
    E_post (vec_dir = data/vector/mini). A real image-text score where no CLIP is at hand."""
    import torch

    from src.data.paths import shard_dirs
    from src.data.vectors import iter_chunks
    from src.models import load_adapter

    adapter = load_adapter("mini", model_id, device=device)
    post: dict[tuple[str, str], torch.Tensor] = {}
    for d in shard_dirs(vec_dir, sorted(df["shard"].unique())):
        for _, chunk in iter_chunks(d, "post"):
            post.update({(d.name, k): v for k, v in chunk.by_key().items()})
    rows = list(zip(df["shard"], df["key"], strict=True))
    missing = [r for r in rows if r not in post]
    if missing:
        raise ValueError(f"no stored E_post in {vec_dir} for {missing[:3]}")
    for col in columns:
        out = []
        for s in range(0, len(rows), 32):
            x = torch.stack([post[r] for r in rows[s : s + 32]]).to(adapter.device)
            caps = [c if c else " " for c in df[col].iloc[s : s + 32].fillna("").tolist()]
            with torch.no_grad():
                out += adapter.model.caption_loss(x, caps).tolist()
        df[f"mini_nll_{col}"] = out
    return df
