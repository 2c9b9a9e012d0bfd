"""Uncertainty for headline numbers: percentile bootstrap of a mean, and permutation p-values."""

from __future__ import annotations

from collections.abc import Callable

import torch


def bootstrap_means(values: torch.Tensor, n_boot: int = 1000, seed: int = 0) -> torch.Tensor:
    """Means of n_boot resamples (with replacement) of values (N,) -> (n_boot,), float64.

    Resampled in blocks of rows so that memory stays O(block x N) for large N.
    """
    v = _check_1d(values).double()
    g = torch.Generator().manual_seed(seed)
    n = v.numel()
    out = torch.empty(n_boot, dtype=torch.float64)
    block = max(1, min(n_boot, 2**24 // max(n, 1)))
    for s in range(0, n_boot, block):
        m = min(block, n_boot - s)
        idx = torch.randint(n, (m, n), generator=g)
        out[s : s + m] = v[idx].mean(1)
    return out


def bootstrap_ci(
    values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of values (N,)."""
    means = bootstrap_means(values, n_boot, seed)
    alpha = (1 - level) / 2
    q = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


def summarize(
    values: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """mean, median, std, the bootstrap CI of the mean (ci_low, ci_high) and n of values (N,)."""
    v = _check_1d(values).double()
    lo, hi = bootstrap_ci(v, n_boot, seed, level) if n_boot > 0 else (float("nan"),) * 2
    return {
        "mean": float(v.mean()),
        "median": float(v.median()),
        "std": float(v.std()) if v.numel() > 1 else 0.0,
        "ci_low": lo,
        "ci_high": hi,
        "ci_level": level,
        "n": int(v.numel()),
    }


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of paired values x, y (N,); ties get their average rank."""
    from scipy import stats

    x, y = _check_1d(x).double(), _check_1d(y).double()
    if x.numel() != y.numel():
        raise ValueError(f"x and y differ in length: {x.numel()} vs {y.numel()}")
    return float(stats.spearmanr(x.numpy(), y.numpy()).statistic)


def bootstrap_spearman(
    x: torch.Tensor, y: torch.Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Spearman rho of pairs (x_i, y_i), (N,) each, with a percentile bootstrap CI over pairs.

    Resamples where either side is constant have no rank correlation and are dropped.
    """
    rho = spearman(x, y)
    g = torch.Generator().manual_seed(seed)
    n = x.numel()
    draws = []
    for _ in range(n_boot):
        idx = torch.randint(n, (n,), generator=g)
        xs, ys = x[idx], y[idx]
        if xs.unique().numel() > 1 and ys.unique().numel() > 1:
            draws.append(spearman(xs, ys))
    alpha = (1 - level) / 2
    if draws:
        q = torch.quantile(torch.tensor(draws, dtype=torch.float64),
                           torch.tensor([alpha, 1 - alpha], dtype=torch.float64))  # fmt: skip
        lo, hi = float(q[0]), float(q[1])
    else:
        lo = hi = float("nan")
    return {"rho": rho, "ci_low": lo, "ci_high": hi, "ci_level": level, "n": n}


def bootstrap_statistic(
    statistic: Callable[[torch.Tensor], float],
    n: int,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of a statistic that is not a mean of per-item values (mean
    per-class recall, say): statistic(idx) scores a resample given as indices (n,) into the
    n items. Resamples where it is NaN are dropped."""
    g = torch.Generator().manual_seed(seed)
    draws = [statistic(torch.randint(n, (n,), generator=g)) for _ in range(n_boot)]
    kept = torch.tensor([d for d in draws if d == d], dtype=torch.float64)
    if kept.numel() == 0:
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    q = torch.quantile(kept, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


def derangement(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded permutation of range(n) with no fixed point (n >= 2): row i is paired with
    row out[i] != i. Pairing each item with another one's partner gives a chance level."""
    if n < 2:
        raise ValueError(f"a derangement needs at least 2 items, got {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out = torch.empty(n, dtype=torch.long)
    out[order] = order.roll(-1)  # each item points to the next one in a random cycle
    return out


def permutation_pvalue(observed: float, null: torch.Tensor) -> float:
    """One-sided p-value of observed against null draws (n,): (#{null >= obs} + 1) / (n + 1).

    The +1 counts the observed pairing as one of the permutations, so p is never 0.
    """
    null = _check_1d(null)
    return (int((null >= observed).sum()) + 1) / (null.numel() + 1)


def _check_1d(values: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(values)
    if v.dim() != 1 or v.numel() == 0:
        raise ValueError(f"expected a non-empty 1-d tensor, got shape {tuple(v.shape)}")
    if not torch.isfinite(v).all():
        raise ValueError("values contain NaN or Inf")
    return v
