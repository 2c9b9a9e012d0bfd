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


class BertColumns:
    """BERTScore F1 columns of one table, collected and then computed in one bert-score call
    (BertScorer.many): each distinct sentence embedded once, each distinct pair scored once.

    A column is created when it is added, so the table's column order and dtypes stay what one
    call per column gave: a whole column float32 (the scorer's dtype), a column over some rows
    float64 with NaN elsewhere.
    """

    def __init__(self, df: pd.DataFrame, bert: BertScorer) -> None:
        self.df, self.bert = df, bert
        self.jobs: list[tuple[str, np.ndarray | None, list[str], list]] = []

    def add(self, name: str, cands: list[str], refs: list, rows: np.ndarray | None = None) -> None:
        """rows None: the column over every row; else only those row positions are scored."""
        if rows is None:
            self.df[name] = np.full(len(self.df), np.nan, dtype=np.float32)
        elif name not in self.df:
            self.df[name] = float("nan")
        self.jobs.append((name, rows, cands, refs))

    def run(self) -> pd.DataFrame:
        f1s = self.bert.many([(cands, refs) for _, _, cands, refs in self.jobs])
        for (name, rows, _, _), f1 in zip(self.jobs, f1s, strict=True):
            if rows is None:
                self.df[name] = f1.numpy()
            else:
                self.df.loc[self.df.index[rows], name] = f1.numpy()
        self.jobs = []
        return self.df


def reference_scores(
    df: pd.DataFrame,
    columns: list[str],
    bert: BertScorer,
    seed: int = 0,
    batch: BertColumns | None = None,
) -> pd.DataFrame:
    """bertscore_<col>_ref per caption column; NaN where an image has no reference caption.

    Also bertscore_<col>_ref_mismatched, each caption against another image's references (a
    seeded derangement of the captioned images): the chance level a reader compares with, since
    BERTScore without baseline rescaling is far above 0 for unrelated sentences.

    batch: add the columns to it and leave the scoring to its run() (one call for a table);
    without it they are scored here.
    """
    own = batch is None
    batch = BertColumns(df, bert) if batch is None else batch
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
        batch.add(f"bertscore_{col}_ref", captions[rows].tolist(), refs.iloc[rows].tolist(), rows)
        if other is not None:
            batch.add(f"bertscore_{col}_ref_mismatched", captions[rows].tolist(),
                      refs.iloc[other].tolist(), rows)  # fmt: skip
    return batch.run() if own else df


def bertscore_columns(df: pd.DataFrame, bert: BertScorer, seed: int = 0) -> pd.DataFrame:
    """BERTScore of every caption_* column against the references (reference_scores) and,
    where the table has both, of the reconstructed caption against the original one."""
    batch = BertColumns(df, bert)
    reference_scores(df, [c for c in df.columns if c.startswith("caption_")], bert, seed, batch)
    if "caption_recon" in df and "caption_post" in df:
        batch.add("bertscore_recon_vs_post", df["caption_recon"].fillna("").tolist(),
                  df["caption_post"].fillna("").tolist())  # fmt: skip
    return batch.run()


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
    batch_size: int = 32,
    prefix_group: int = 64,
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
    from src.models.mini import PrefixStates  # here: importing it loads transformers

    unique = list(dict.fromkeys(wanted.values()))
    nll: dict[tuple[tuple[str, str], str], float] = {}
    model = adapter.model
    images = list(dict.fromkeys(image for image, _ in unique))
    # A group of images at a time: each image's prefix once (prefix_states), then its pairs in
    # batches of similar caption length (padding is computed too), continuing from the prefix.
    for g in range(0, len(images), prefix_group):
        group = images[g : g + prefix_group]
        slot = {image: i for i, image in enumerate(group)}
        states = PrefixStates.cat([
            model.prefix_states(torch.stack([post[im] for im in group[s : s + batch_size]])
                                .to(adapter.device))
            for s in range(0, len(group), batch_size)
        ])  # fmt: skip
        pairs = sorted((p for p in unique if p[0] in slot), key=lambda p: len(p[1]))
        for s in range(0, len(pairs), batch_size):
            batch = pairs[s : s + batch_size]
            losses = model.caption_nll(states, [slot[im] for im, _ in batch], [c for _, c in batch])
            nll.update(zip(batch, losses.tolist(), strict=True))
    for name in dict.fromkeys(n for n, _ in wanted):
        df[name] = [nll[wanted[(name, i)]] for i in range(len(rows))]
    return df
