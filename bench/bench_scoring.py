"""Benchmark: the caption scores of score_perturb on one table, before and after the speed-ups.

    .venv/bin/python -m bench.bench_scoring [--n 16] [--repeats 3] [--threads 1]

A table shaped like eval_perturb's: --n images x 3 levels, each row with the perturbed caption,
the original caption and the reference (at the mildest level the caption is often unchanged, at
the strongest it is another image's). E_post comes from `mini` on rendered scenes.

    nll   mini_nll_* columns: before = every distinct (image, caption) pair as one full sequence,
          32 at a time (the code before caption_nll); after = nll_scores (each image's prefix
          once, through the KV cache)
    bert  the BERTScore columns of score_perturb's score_table: before = one bert-score call per
          column (each call embeds its sentences again); after = what score_table runs now

Before and after run interleaved in one process, --repeats times; the medians, their ratio, the
largest difference between the two results, and the load average are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from src.data.sample import make_scene, render_scene, scene_caption
from src.metrics.caption_tables import nll_scores, other_image_rows
from src.metrics.text import BertScorer, split_references
from src.models import load_adapter


def perturb_like_table(n: int, seed: int = 0) -> tuple[pd.DataFrame, list]:
    rng = np.random.default_rng([seed, 11])
    scenes = [make_scene(rng) for _ in range(n)]
    caps = [scene_caption(s) for s in scenes]
    rows = []
    for i, cap in enumerate(caps):
        words = cap.split()
        levels = {0.25: cap, 0.5: " ".join(words[: max(3, len(words) // 2)]), 0.75: caps[i - 1]}
        for level, caption in levels.items():
            rows.append({"shard": "synth", "key": f"{i:04d}", "mode": "mask", "level": level,
                         "reference": cap, "caption_original": cap,
                         "caption": caption})  # fmt: skip
    return pd.DataFrame(rows), [render_scene(s) for s in scenes]


def nll_before(df: pd.DataFrame, columns: list[str], post: dict, adapter: Any) -> pd.DataFrame:
    """nll_scores as it was: full sequences of the distinct pairs in table order, 32 at a time."""
    rows = list(zip(df["shard"], df["key"], strict=True))
    pairings = {"": list(range(len(rows))), "_mismatched": other_image_rows(df, 0).tolist()}
    wanted = {(f"mini_nll_{col}{suffix}", i): (rows[j], caption or " ")
              for col in columns for suffix, image_of in pairings.items()
              for i, (j, caption) in enumerate(zip(image_of, df[col], strict=True))}  # fmt: skip
    unique = list(dict.fromkeys(wanted.values()))
    nll = {}
    for s in range(0, len(unique), 32):
        batch = unique[s : s + 32]
        x = torch.stack([post[image] for image, _ in batch])
        with torch.no_grad():
            nll.update(zip(batch, adapter.model.caption_loss(x, [c for _, c in batch]).tolist(),
                           strict=True))  # fmt: skip
    for name in dict.fromkeys(n for n, _ in wanted):
        df[name] = [nll[wanted[(name, i)]] for i in range(len(rows))]
    return df


def bert_before(df: pd.DataFrame, bert: BertScorer) -> pd.DataFrame:
    """score_table's BERTScore columns as they were: one bert-score call per column."""
    f1 = "bertscore_f1"
    df["bertscore_vs_original"] = bert(df["caption"].tolist(), df["caption_original"].tolist())[f1]
    other = other_image_rows(df, 0)
    df["bertscore_vs_original_mismatched"] = bert(
        df["caption_original"].tolist(), df["caption_original"].iloc[other].tolist()
    )[f1]
    refs = df["reference"].map(split_references)
    rows = np.arange(len(df))
    captions = df["caption"].to_numpy()
    df["bertscore_caption_ref"] = bert(captions.tolist(), refs.tolist())[f1].numpy()
    df["bertscore_caption_ref_mismatched"] = bert(
        captions[rows].tolist(), refs.iloc[rows[other]].tolist()
    )[f1].numpy()
    return df


def bert_after(df: pd.DataFrame, bert: BertScorer) -> pd.DataFrame:
    from src.eval.score_perturb import bertscore_perturb

    return bertscore_perturb(df, bert, 0)


def timed(fn: Callable[[], pd.DataFrame]) -> tuple[float, pd.DataFrame]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def compare(name: str, before: Callable, after: Callable, repeats: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"before": [], "after": []}
    outs: dict[str, pd.DataFrame] = {}
    for r in range(repeats):
        for which, fn in (("before", before), ("after", after))[:: 1 if r % 2 == 0 else -1]:
            secs, outs[which] = timed(fn)
            times[which].append(secs)
    cols = [c for c in outs["before"].columns if c.startswith(("mini_nll_", "bertscore_"))]
    before, after = (outs[k][cols].to_numpy(float) for k in ("before", "after"))
    diff = float(np.nanmax(np.abs(before - after)))
    same_cols = list(outs["before"].columns) == list(outs["after"].columns)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"step": name, "before_s": round(med["before"], 3), "after_s": round(med["after"], 3),
            "ratio": round(med["before"] / med["after"], 2), "max_abs_diff": diff,
            "same_columns": same_cols, "times": times}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=16, help="images (3 rows each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (1 on a loaded shared machine)")
    p.add_argument("--only", choices=["nll", "bert"], help="one of the two comparisons")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    df, images = perturb_like_table(args.n)
    adapter = load_adapter("mini")
    inputs = adapter.preprocessor(images)
    post = {("synth", f"{i:04d}"): t for i, t in enumerate(adapter.encode(inputs).post)}
    bert = BertScorer()
    bert(["warm up"], ["warm up"])
    results = []
    if args.only in (None, "nll"):
        cols = ["caption", "caption_original"]
        results.append(compare("nll", lambda: nll_before(df.copy(), cols, post, adapter),
                               lambda: nll_scores(df.copy(), cols, post, adapter),
                               args.repeats))  # fmt: skip
    if args.only in (None, "bert"):
        results.append(compare("bert", lambda: bert_before(df.copy(), bert),
                               lambda: bert_after(df.copy(), bert), args.repeats))  # fmt: skip
    for r in results:
        print(json.dumps(r))
    end = os.getloadavg()
    print(f"rows {len(df)}, torch threads {torch.get_num_threads()}, load average "
          f"{load[0]:.2f} at start, {end[0]:.2f} at end (1-minute)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
