"""Cross-modal retrieval with several captions per image: ranks, R@k, MRR and their chance levels.

Images img (N, D) and captions cap (M, D) live in one space (cosine similarity); owner (M,) says
which image each caption describes. CLIP_benchmark's definition: an image query is answered at
rank r when the best-ranked of ITS captions is r-th among all M captions; a caption query when
its own image is r-th among the N images. Ties count against the query (an irrelevant item with
the same score ranks ahead), so a constant scorer gets the worst rank, never a lucky one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


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


def image_to_text_ranks(img: Tensor, cap: Tensor, owner: Tensor) -> Tensor:
    """(N,) rank among the M captions of the first of image i's own captions."""
    n = img.shape[0]
    relevant = owner.unsqueeze(0) == torch.arange(n).unsqueeze(1)  # (N, M)
    return first_relevant_rank(_cosine(img, cap), relevant)


def text_to_image_ranks(img: Tensor, cap: Tensor, owner: Tensor) -> Tensor:
    """(M,) rank among the N images of each caption's own image."""
    n = img.shape[0]
    relevant = torch.arange(n).unsqueeze(0) == owner.unsqueeze(1)  # (M, N)
    return first_relevant_rank(_cosine(cap, img), relevant)


def recall_at_k(ranks: Tensor, k: int) -> float:
    """Fraction of queries answered within the top k."""
    return float((ranks <= k).double().mean())


def mean_reciprocal_rank(ranks: Tensor) -> float:
    return float((1.0 / ranks.double()).mean())


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


def chance_mrr(g: int, c: int) -> float:
    """E[1 / rank of the best of c relevant items among g randomly ordered ones]."""
    return sum((_p_best_after(g, c, r - 1) - _p_best_after(g, c, r)) / r for r in range(1, g + 1))


def retrieval_metrics(
    img: Tensor, cap: Tensor, owner: Tensor, ks: tuple[int, ...] = (1, 5, 10)
) -> list[dict]:
    """Both directions' R@k and MRR with chance levels: rows {direction, metric, value, chance}.

    img (N, D), cap (M, D), owner (M,) int64 in [0, N), every image with >= 1 caption.
    """
    n, m = img.shape[0], cap.shape[0]
    counts = torch.bincount(owner, minlength=n)
    if int(counts.min()) < 1:
        raise ValueError("every image needs at least one caption")
    rows = []
    for direction, ranks, chance_k, chance_m in (
        (
            "image_to_text",
            image_to_text_ranks(img, cap, owner),
            lambda k: sum(chance_recall(m, int(c), k) for c in counts) / n,
            sum(chance_mrr(m, int(c)) for c in counts) / n,
        ),
        (
            "text_to_image",
            text_to_image_ranks(img, cap, owner),
            lambda k: chance_recall(n, 1, k),
            chance_mrr(n, 1),
        ),
    ):
        for k in ks:
            rows.append(
                {
                    "direction": direction,
                    "metric": f"R@{k}",
                    "value": recall_at_k(ranks, k),
                    "chance": chance_k(k),
                }
            )
        rows.append(
            {
                "direction": direction,
                "metric": "MRR",
                "value": mean_reciprocal_rank(ranks),
                "chance": chance_m,
            }
        )
    return rows
