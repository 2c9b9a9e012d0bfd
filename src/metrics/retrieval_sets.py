"""Retrieval over caption sets with bootstrap CIs (train_align, eval_probe): ranks both directions
with several captions per image, R@k, MRR and chance levels (CLIP_benchmark's definitions). Pure
tensor functions, no I/O. src.metrics.retrieval (the alignment suite's) overlaps: to be merged.

Conventions: sim is (N_cap, N_img), caption j belongs to image owner[j]. A rank is 0-based: the
number of candidates scored above the query's positive, ties broken by candidate index (the
lower index first), so results are deterministic.
  text -> image: caption j ranks its own image among the N_img images.
  image -> text: image i is found at the best (lowest) rank of any of its captions among all
                 N_cap captions, so R@k counts it when any of its captions is within the top k.
"""

from __future__ import annotations

import math

import torch


def _rank_of(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """scores (Q, C), target (Q,) column of each query's positive -> (Q,) 0-based ranks."""
    pos = scores.gather(1, target[:, None])  # (Q, 1)
    cols = torch.arange(scores.shape[1], device=scores.device)[None]
    ahead = (scores > pos) | ((scores == pos) & (cols < target[:, None]))
    return ahead.sum(1)


def text_to_image_ranks(sim: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """sim (N_cap, N_img), owner (N_cap,) -> (N_cap,) rank of each caption's image."""
    return _rank_of(sim, owner)


def image_to_text_ranks(sim: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """sim (N_cap, N_img), owner (N_cap,) -> (N_img,) best rank of any own caption among all
    captions. Every image needs at least one caption."""
    n_img = sim.shape[1]
    scores = sim.T  # (N_img, N_cap)
    best = torch.full((n_img,), sim.shape[0], dtype=torch.long, device=sim.device)
    caps = torch.arange(sim.shape[0], device=sim.device)
    ranks = _rank_of(scores[owner], caps)  # (N_cap,): caption j ranked for its own image
    best = best.scatter_reduce(0, owner, ranks, reduce="amin")
    if (best >= sim.shape[0]).any():
        raise ValueError("an image has no caption")
    return best


def recall_hits(ranks: torch.Tensor, k: int) -> torch.Tensor:
    """(Q,) ranks -> (Q,) float 1.0 where the positive is within the top k."""
    return (ranks < k).double()


def reciprocal_ranks(ranks: torch.Tensor) -> torch.Tensor:
    """(Q,) 0-based ranks -> (Q,) 1 / (rank + 1); their mean is the MRR."""
    return 1.0 / (ranks.double() + 1)


def _p_min_rank_at_least(n: int, c: int, r: int) -> float:
    """P(the best of c positives placed at random among n candidates has rank >= r)."""
    if r + c > n:
        return 0.0
    return math.exp(
        math.lgamma(n - r + 1)
        - math.lgamma(n - r - c + 1)
        - math.lgamma(n + 1)
        + math.lgamma(n - c + 1)
    )


def chance_recall(n_candidates: int, n_positives: torch.Tensor, k: int) -> float:
    """Expected R@k of a random ranking: queries with n_positives (Q,) among n_candidates."""
    vals = [1 - _p_min_rank_at_least(n_candidates, int(c), k) for c in n_positives.tolist()]
    return sum(vals) / max(1, len(vals))


def chance_mrr(n_candidates: int, n_positives: torch.Tensor) -> float:
    """Expected MRR of a random ranking (the mean of E[1 / (best rank + 1)] over queries)."""
    out = 0.0
    cache: dict[int, float] = {}
    for c in n_positives.tolist():
        if c not in cache:
            p = [_p_min_rank_at_least(n_candidates, int(c), r) for r in range(n_candidates + 1)]
            cache[c] = sum((p[r] - p[r + 1]) / (r + 1) for r in range(n_candidates))
        out += cache[c]
    return out / max(1, n_positives.numel())


def retrieval_rows(
    sim: torch.Tensor,
    owner: torch.Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Both directions' R@k and MRR with bootstrap CIs (over queries) and chance levels.

    sim (N_cap, N_img), owner (N_cap,). One dict per (direction, metric): direction,
    metric ('R@k' / 'MRR'), value, ci_low, ci_high, chance, n (queries)."""
    from src.metrics.stats import summarize

    n_cap, n_img = sim.shape
    per_image = torch.bincount(owner, minlength=n_img)
    ranks = {
        "image_to_text": (image_to_text_ranks(sim, owner), n_cap, per_image),
        "text_to_image": (text_to_image_ranks(sim, owner), n_img, torch.ones(n_cap)),
    }
    rows = []
    for direction, (r, n_cand, n_pos) in ranks.items():
        metrics = {f"R@{k}": (recall_hits(r, k), chance_recall(n_cand, n_pos, k)) for k in ks}
        metrics["MRR"] = (reciprocal_ranks(r), chance_mrr(n_cand, n_pos))
        for name, (values, chance) in metrics.items():
            s = summarize(values, n_boot=n_boot, seed=seed)
            rows.append({"direction": direction, "metric": name, "value": s["mean"],
                         "ci_low": s["ci_low"], "ci_high": s["ci_high"], "chance": chance,
                         "n": s["n"]})  # fmt: skip
    return rows
