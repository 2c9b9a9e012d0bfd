"""Scoring caption tables (pandas): the helpers score_captions and score_perturb share."""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from src.data.images import list_images, load_image
from src.metrics.stats import derangement
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


def other_image_rows(df: pd.DataFrame, seed: int = 0) -> np.ndarray | None:
    """For each row, a row of another image ((shard, key) differs): a seeded derangement of
    the table's images, so that a table with several rows per image (perturbation levels) never
    pairs an image with itself. None with fewer than two images."""
    images = pd.MultiIndex.from_arrays([df["shard"], df["key"]])
    codes, uniques = pd.factorize(images)
    if len(uniques) < 2:
        return None
    _, first_row = np.unique(codes, return_index=True)  # codes are 0..U-1: row of each image
    return first_row[derangement(len(uniques), seed).numpy()[codes]]


def reference_scores(
    df: pd.DataFrame, columns: list[str], bert: BertScorer, seed: int = 0
) -> pd.DataFrame:
    """bertscore_<col>_ref per caption column; NaN where an image has no reference caption.

    Also bertscore_<col>_ref_mismatched, each caption against another image's references (a
    seeded derangement of the captioned images): the chance level a reader compares with, since
    BERTScore without baseline rescaling is far above 0 for unrelated sentences.
    """
    refs = df["reference"].map(split_references)
    has = refs.map(bool).to_numpy()
    rows = has.nonzero()[0]
    other = other_image_rows(df.iloc[rows], seed)
    other = rows[other] if other is not None else None
    for col in columns:
        df[f"bertscore_{col}_ref"] = float("nan")
        df[f"bertscore_{col}_ref_mismatched"] = float("nan")
        if not len(rows):
            continue
        captions = df[col].fillna("").to_numpy()
        f1 = bert(captions[rows].tolist(), refs.iloc[rows].tolist())["bertscore_f1"]
        df.loc[df.index[rows], f"bertscore_{col}_ref"] = f1.numpy()
        if other is not None:
            f1 = bert(captions[rows].tolist(), refs.iloc[other].tolist())["bertscore_f1"]
            df.loc[df.index[rows], f"bertscore_{col}_ref_mismatched"] = f1.numpy()
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


@cache
def _mini(model_id: str | None, device: str):
    """`mini`, loaded once per process: score_perturb scores one table per model and mode."""
    from src.models import load_adapter

    return load_adapter("mini", model_id, device=device)


def nll_scores(
    df: pd.DataFrame,
    columns: list[str],
    vec_dir: Path,
    model_id: str | None,
    device: str,
    seed: int = 0,
) -> pd.DataFrame:
    """mini_nll_<col>: mean token NLL of each caption under `mini` given the image's stored
    E_post (vec_dir = data/vector/mini). A real image-text score where no CLIP is at hand.

    Also mini_nll_<col>_mismatched: the caption given another image's E_post (a seeded
    derangement of the images, other_image_rows), the level at which the image no longer helps.
    """
    import torch

    from src.data.paths import shard_dirs
    from src.data.vectors import iter_chunks

    adapter = _mini(model_id, device)
    post: dict[tuple[str, str], torch.Tensor] = {}
    for d in shard_dirs(vec_dir, sorted(df["shard"].unique())):
        for _, chunk in iter_chunks(d, "post"):
            post.update({(d.name, k): v for k, v in chunk.by_key().items()})
    rows = list(zip(df["shard"], df["key"], strict=True))
    missing = [r for r in rows if r not in post]
    if missing:
        raise ValueError(f"no stored E_post in {vec_dir} for {missing[:3]}")
    pairings = {"": list(range(len(rows)))}
    other = other_image_rows(df, seed)
    if other is not None:
        pairings["_mismatched"] = other.tolist()
    wanted = {
        (f"mini_nll_{col}{suffix}", i): (rows[j], caption or " ")
        for col in columns
        for suffix, image_of in pairings.items()
        for i, (j, caption) in enumerate(zip(image_of, df[col].fillna(""), strict=True))
    }
    # Each distinct (image, caption) pair once: perturbation tables repeat the original caption
    # for every level, and mild levels often leave the caption unchanged.
    unique = list(dict.fromkeys(wanted.values()))
    nll: dict[tuple[tuple[str, str], str], float] = {}
    for s in range(0, len(unique), 32):
        batch = unique[s : s + 32]
        x = torch.stack([post[image] for image, _ in batch]).to(adapter.device)
        with torch.no_grad():
            losses = adapter.model.caption_loss(x, [c for _, c in batch]).tolist()
        nll.update(zip(batch, losses, strict=True))
    for name in dict.fromkeys(n for n, _ in wanted):
        df[name] = [nll[wanted[(name, i)]] for i in range(len(rows))]
    return df
