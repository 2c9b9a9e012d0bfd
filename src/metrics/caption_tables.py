"""Score columns of caption tables (pandas) from scorers the caller built: no I/O here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from src.errors import UserError
from src.metrics.stats import derangement
from src.metrics.text import BertScorer, ClipScorer, split_references

if TYPE_CHECKING:
    from src.models.mini import MiniAdapter


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


def bertscore_columns(df: pd.DataFrame, bert: BertScorer, seed: int = 0) -> pd.DataFrame:
    """BERTScore of every caption_* column against the references (reference_scores) and,
    where the table has both, of the reconstructed caption against the original one."""
    df = reference_scores(df, [c for c in df.columns if c.startswith("caption_")], bert, seed)
    if "caption_recon" in df and "caption_post" in df:
        df["bertscore_recon_vs_post"] = bert(
            df["caption_recon"].fillna("").tolist(), df["caption_post"].fillna("").tolist()
        )["bertscore_f1"].numpy()
    return df


def clip_scores(
    df: pd.DataFrame, columns: list[str], clip: ClipScorer, images: list
) -> pd.DataFrame:
    """clipscore_<col> per caption column, against each row's image (images: one PIL image
    per row, in order)."""
    for col in columns:
        df[f"clipscore_{col}"] = clip(images, df[col].fillna("").tolist()).numpy()
    return df


def nll_scores(
    df: pd.DataFrame,
    columns: list[str],
    post: dict[tuple[str, str], torch.Tensor],
    adapter: MiniAdapter,
    seed: int = 0,
) -> pd.DataFrame:
    """mini_nll_<col>: mean token NLL of each caption under `mini` given the image's stored
    E_post (post: (shard, key) -> (T, D)). A real image-text score where no CLIP is at hand.

    Also mini_nll_<col>_mismatched: the caption given another image's E_post (a seeded
    derangement of the images, other_image_rows), the level at which the image no longer helps.
    """
    rows = list(zip(df["shard"], df["key"], strict=True))
    missing = [r for r in rows if r not in post]
    if missing:
        raise UserError(f"no stored E_post for the images {missing[:3]}")
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
