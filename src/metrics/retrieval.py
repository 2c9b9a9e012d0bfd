"""Cross-modal retrieval with several captions per image: ranks, R@k, MRR, their chance levels
and bootstrap CIs (the alignment suite, train_align, eval_probe). Pure tensor functions, no I/O.

Conventions: sim (N_cap, N_img) holds similarities, larger = nearer; caption j describes image
owner[j]. Ranks are 1-based, CLIP_benchmark's definitions:
  text -> image: caption j is answered at the rank of its own image among the N_img images;
  image -> text: image i at the rank of the best-ranked of ITS captions among all N_cap captions,
                 so R@k counts it when any of its captions is within the top k.
Ties count against the query (an irrelevant item with the same score ranks ahead), so a
constant scorer gets the worst rank, never a lucky one.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_similarity(cap: Tensor, img: Tensor) -> Tensor:
    """cap (N_cap, D), img (N_img, D) -> (N_cap, N_img) float64 cosine similarities."""
    return F.normalize(cap.double(), dim=-1) @ F.normalize(img.double(), dim=-1).T


def first_relevant_rank(sim: Tensor, relevant: Tensor) -> Tensor:
    """1-based rank of the best relevant item per query: sim (Q, G) scores, relevant (Q, G) bool
    (at least one True per row) -> (Q,) int64 = 1 + #{irrelevant g: sim >= best relevant}."""
    if sim.shape != relevant.shape or sim.ndim != 2:
        raise ValueError(f"sim {tuple(sim.shape)} and relevant {tuple(relevant.shape)} differ")
    if not bool(relevant.any(1).all()):
        raise ValueError("every query needs at least one relevant item")
    best = sim.masked_fill(~relevant, float("-inf")).max(1).values  # (Q,)
    ahead = (sim >= best.unsqueeze(1)) & ~relevant
    return 1 + ahead.sum(1)


def text_to_image_ranks(sim: Tensor, owner: Tensor) -> Tensor:
    """sim (N_cap, N_img), owner (N_cap,) -> (N_cap,) rank of each caption's own image."""
    relevant = torch.arange(sim.shape[1], device=sim.device).unsqueeze(0) == owner.unsqueeze(1)
    return first_relevant_rank(sim, relevant)


def image_to_text_ranks(sim: Tensor, owner: Tensor) -> Tensor:
    """sim (N_cap, N_img), owner (N_cap,) -> (N_img,) rank of the first of each image's own
    captions among all captions. Every image needs at least one caption."""
    relevant = owner.unsqueeze(0) == torch.arange(sim.shape[1], device=sim.device).unsqueeze(1)
    if not bool(relevant.any(1).all()):
        raise ValueError("every image needs at least one caption")
    return first_relevant_rank(sim.T, relevant)


def recall_hits(ranks: Tensor, k: int) -> Tensor:
    """(Q,) ranks -> (Q,) float64, 1.0 where the query is answered within the top k."""
    return (ranks <= k).double()


def reciprocal_ranks(ranks: Tensor) -> Tensor:
    """(Q,) ranks -> (Q,) float64 1 / rank; their mean is the MRR."""
    return 1.0 / ranks.double()


def _p_best_after(g: int, c: int, r: int) -> float:
    """P(the best of c relevant items among g randomly ordered ones ranks after r)."""
    if r >= g - c + 1:
        return 0.0
    return math.exp(
        math.lgamma(g - c + 1)
        - math.lgamma(g - c - r + 1)
        + math.lgamma(g - r + 1)
        - math.lgamma(g + 1)
    )


def chance_recall(g: int, c: int, k: int) -> float:
    """R@k of a random ranking: 1 - C(g - c, k) / C(g, k) for c relevant among g items."""
    return 1.0 - _p_best_after(g, c, min(k, g))


@lru_cache(maxsize=256)
def chance_mrr(g: int, c: int) -> float:
    """E[1 / rank of the best of c relevant items among g randomly ordered ones]."""
    return sum((_p_best_after(g, c, r - 1) - _p_best_after(g, c, r)) / r for r in range(1, g + 1))


def retrieval_rows(
    sim: Tensor,
    owner: Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Both directions' R@k and MRR with bootstrap CIs over queries (NaN when n_boot = 0) and
    chance levels. sim (N_cap, N_img), owner (N_cap,) int64 in [0, N_img).

    One dict per (direction, metric): direction, metric ('R@k' / 'MRR'), value, ci_low,
    ci_high, chance, n (queries). Image queries' chance is the mean over images of the chance
    for their number of captions."""
    from src.metrics.stats import summarize

    n_cap, n_img = sim.shape
    counts = [int(c) for c in torch.bincount(owner, minlength=n_img)]
    directions = {
        "image_to_text": (image_to_text_ranks(sim, owner), n_cap, counts),
        "text_to_image": (text_to_image_ranks(sim, owner), n_img, [1]),
    }
    rows = []
    for direction, (ranks, g, positives) in directions.items():
        metrics = {
            f"R@{k}": (recall_hits(ranks, k), [chance_recall(g, c, k) for c in positives])
            for k in ks
        }
        metrics["MRR"] = (reciprocal_ranks(ranks), [chance_mrr(g, c) for c in positives])
        for name, (values, chance) in metrics.items():
            s = summarize(values, n_boot=n_boot, seed=seed)
            rows.append({"direction": direction, "metric": name, "value": s["mean"],
                         "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                         "chance": sum(chance) / len(chance), "n": s["n"]})  # fmt: skip
    return rows


def retrieval_metrics(
    img: Tensor, cap: Tensor, owner: Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> list[dict]:
    """retrieval_rows of the cosine similarities of img (N, D) and cap (M, D), without CIs:
    rows {direction, metric, value, chance, n}."""
    rows = retrieval_rows(cosine_similarity(cap, img), owner, ks, n_boot=0)
    return [{k: v for k, v in r.items() if k not in ("ci_low", "ci_high")} for r in rows]
