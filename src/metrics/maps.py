"""Comparing two embedding spaces of the same items: Procrustes disparity after one shared map,
and representational similarity analysis (RSA) of their dissimilarity matrices.

x (N, Dx) and y (N, Dy) hold the same N items in the same row order.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from src.metrics.alignment import ridge
from src.metrics.stats import permutation_pvalue, spearman


def _standardise(m: Tensor) -> Tensor:
    m = m.double() - m.double().mean(0)
    norm = torch.linalg.matrix_norm(m)
    if norm == 0:
        raise ValueError("a configuration with every row equal has no shape to compare")
    return m / norm


def procrustes_disparity(x: Tensor, y: Tensor) -> float:
    """scipy.spatial.procrustes's disparity of x, y (N, D) each: both centred and scaled to unit
    Frobenius norm, y rotated / reflected and scaled to fit x best; the sum of squared residuals,
    1 - (sum of singular values of x'y)^2, in [0, 1] (0: the same shape)."""
    if x.shape != y.shape or x.dim() != 2:
        raise ValueError(f"procrustes needs two (N, D) matrices of one shape: {x.shape}, {y.shape}")
    a, b = _standardise(x), _standardise(y)
    s = torch.linalg.svdvals(a.T @ b).sum()
    return float((1 - s**2).clamp(0, 1))


def ridge_map(x: Tensor, y: Tensor, alpha: float = 1e-3) -> Callable[[Tensor], Tensor]:
    """The least-squares map of x (N, Dx) onto y (N, Dy), ridge alpha relative to x's mean
    variance per feature, with intercept: fitted on a training split, applied to held-out rows.
    (src.metrics.alignment.ridge scales by the mean squared row norm, N / Dx times larger.)"""
    n, dx = x.shape
    mx, w, c = ridge(x, y, alpha * n / max(1, dx))
    return lambda z: ((z.double() - mx) @ w + c).float()


def rdm(x: Tensor, metric: str = "cosine") -> Tensor:
    """(N, N) dissimilarities: 1 - cosine similarity, or euclidean distance."""
    x = x.double()
    if metric == "cosine":
        u = x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)
        return (1 - u @ u.T).clamp(min=0)
    if metric == "euclidean":
        return torch.cdist(x, x)
    raise ValueError(f"unknown metric {metric!r}; expected cosine or euclidean")


def upper(m: Tensor) -> Tensor:
    """The entries above the diagonal of a square matrix, row by row (scipy's pdist order)."""
    i, j = torch.triu_indices(m.shape[0], m.shape[0], offset=1)
    return m[i, j]


def rsa(x: Tensor, y: Tensor, metric: str = "cosine") -> float:
    """Spearman correlation of the two spaces' dissimilarities over item pairs (N >= 3)."""
    if x.shape[0] != y.shape[0] or x.shape[0] < 3:
        raise ValueError(f"rsa needs the same N >= 3 items: {x.shape[0]}, {y.shape[0]}")
    return spearman(upper(rdm(x, metric)), upper(rdm(y, metric)))


def rsa_test(
    x: Tensor,
    y: Tensor,
    metric: str = "cosine",
    n_boot: int = 1000,
    n_perm: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, float]:
    """RSA rho with a percentile bootstrap CI over items and a permutation p-value.

    Bootstrap: items drawn with replacement; the pairs of two copies of one item (dissimilarity
    0 by construction) are left out. Permutation (Mantel): y's items relabelled at random.
    """
    rho = rsa(x, y, metric)
    dx, dy = rdm(x, metric), rdm(y, metric)
    n = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    i, j = torch.triu_indices(n, n, offset=1)
    boots = []
    for _ in range(n_boot):
        idx = torch.randint(n, (n,), generator=g)
        keep = idx[i] != idx[j]
        a, b = dx[idx[i], idx[j]][keep], dy[idx[i], idx[j]][keep]
        if a.numel() > 2 and a.unique().numel() > 1 and b.unique().numel() > 1:
            boots.append(spearman(a, b))
    null = []
    ux = upper(dx)
    for _ in range(n_perm):
        p = torch.randperm(n, generator=g)
        null.append(spearman(ux, upper(dy[p][:, p])))
    alpha = (1 - level) / 2
    lo = hi = float("nan")
    if boots:
        q = torch.quantile(torch.tensor(boots, dtype=torch.float64),
                           torch.tensor([alpha, 1 - alpha], dtype=torch.float64))  # fmt: skip
        lo, hi = float(q[0]), float(q[1])
    p_value = permutation_pvalue(rho, torch.tensor(null)) if null else float("nan")
    return {"rho": rho, "ci_low": lo, "ci_high": hi, "ci_level": level, "p_perm": p_value,
            "n": n, "n_pairs": n * (n - 1) // 2}  # fmt: skip
