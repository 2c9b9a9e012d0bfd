"""Similarity measures looked up by name (as platonic-rep's AlignmentMetrics.measure does), so the
alignment suite, extract_knn and the web app pick them the same way; a new measure is one entry.

Every entry wraps a pure function that lives elsewhere in src/metrics (nothing is computed twice
here). A measure takes x (N, Dx) and y (N, Dy), the same N images row by row, and returns a float;
`higher_is_better` says how to read it. Kernel measures also give their Gram matrix (`gram`,
x -> (N, N)) so a bootstrap can resample images in O(N^2) per draw, and `null` gives the
permutation test (shuffled pairing) where one exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from src.errors import UserError
from src.metrics.alignment import coral_seed, coral_test
from src.metrics.neighbors import distance_correlation, mutual_knn
from src.metrics.similarity import (
    PermutationTest,
    kernel_cka,
    linear_cka,
    linear_cka_permutation_test,
    rbf_cka,
    rbf_cka_permutation_test,
    rbf_gram,
)

Score = Callable[..., float]


@dataclass(frozen=True)
class Measure:
    name: str
    fn: Score  # fn(x, y, **kw) -> float
    description: str
    higher_is_better: bool = True
    gram: Callable[[Tensor], Tensor] | None = None  # x (N, D) -> (N, N), for kernel measures
    unbiased: bool = False
    null: Callable[..., PermutationTest] | None = None  # null(x, y, n_perm=, seed=)


def _linear_gram(x: Tensor) -> Tensor:
    x = x.double()
    return x @ x.T


def _rbf(x: Tensor) -> Tensor:
    return rbf_gram(x.double())


def _knn(x: Tensor, y: Tensor, k: int = 10) -> float:
    return float(mutual_knn(x, y, min(k, x.shape[0] - 1)).mean())


def _coral(x: Tensor, y: Tensor, dim: int = 32, seed: int = 0) -> float:
    """Our CORAL distance on a seeded half split (map fitted on one half, scored on the other)."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    tr, te = order[: len(order) // 2], order[len(order) // 2 :]
    return coral_test(x[tr], y[tr], x[te], y[te], dim=dim, n_perm=0).distance


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure(
            "cka_linear",
            lambda x, y: linear_cka(x, y),
            "linear CKA, biased HSIC",
            gram=_linear_gram,
            null=lambda x, y, **kw: linear_cka_permutation_test(x, y, **kw),
        ),
        Measure(
            "cka_linear_unbiased",
            lambda x, y: linear_cka(x, y, unbiased=True),
            "linear CKA, unbiased HSIC (Song et al.; ~0 for independent data)",
            gram=_linear_gram,
            unbiased=True,
            null=lambda x, y, **kw: linear_cka_permutation_test(x, y, unbiased=True, **kw),
        ),
        Measure(
            "cka_rbf",
            lambda x, y: rbf_cka(x, y),
            "RBF CKA, median bandwidth, biased",
            gram=_rbf,
            null=lambda x, y, **kw: rbf_cka_permutation_test(x, y, **kw),
        ),
        Measure(
            "cka_rbf_unbiased",
            lambda x, y: rbf_cka(x, y, unbiased=True),
            "RBF CKA, median bandwidth, unbiased HSIC",
            gram=_rbf,
            unbiased=True,
            null=lambda x, y, **kw: rbf_cka_permutation_test(x, y, unbiased=True, **kw),
        ),
        Measure("knn_overlap", _knn, "mutual kNN overlap at k (platonic-rep's mutual_knn)"),
        Measure(
            "distance_corr",
            lambda x, y: distance_correlation(x, y)["spearman"],
            "Spearman correlation of pairwise cosine distances",
        ),
        Measure(
            "coral",
            _coral,
            "CORAL distance in one fitted basis, held-out half",
            higher_is_better=False,
        ),
        Measure(
            "coral_seed",
            lambda x, y: coral_seed(x, y).similarity,
            "the seed's CORAL similarity: unit rows, separate PCAs, 1/(1+d) (~1 always)",
        ),
    )
}


def get_measure(name: str) -> Measure:
    if name not in MEASURES:
        raise UserError(f"unknown measure {name!r}; known: {', '.join(MEASURES)}")
    return MEASURES[name]


def measure(name: str, x: Tensor, y: Tensor, **kw: Any) -> float:
    """measure('cka_linear_unbiased', x, y) -> float."""
    return get_measure(name).fn(x, y, **kw)


def bootstrap_kernel(m: Measure, kx: Tensor, ky: Tensor, n_boot: int, seed: int = 0) -> Tensor:
    """(n_boot,) values of a kernel measure on image resamples (with replacement) of two Gram
    matrices (n, n); the kernel bandwidth stays that of the full sample. NaN draws dropped.

    A resample repeats images, and a repeated image is a perfectly matched off-diagonal pair:
    both estimators (the unbiased one most) sit higher on resamples than on the sample. Use
    `centred_ci` for an interval: the resamples' spread around the sample's own value."""
    if m.gram is None:
        raise ValueError(f"{m.name} has no Gram form")
    g = torch.Generator().manual_seed(seed)
    n = kx.shape[0]
    out = []
    for _ in range(n_boot):
        i = torch.randint(n, (n,), generator=g)
        out.append(kernel_cka(kx[i][:, i], ky[i][:, i], unbiased=m.unbiased))
    v = torch.tensor(out, dtype=torch.float64)
    return v[torch.isfinite(v)]


def centred_ci(value: float, draws: Tensor, level: float = 0.95) -> tuple[float, float]:
    """value + the (1-level)/2 and (1+level)/2 quantiles of draws - mean(draws): the bootstrap
    spread centred on the estimate (resampling duplicates shift the draws, see bootstrap_kernel)."""
    if draws.numel() == 0:
        return float("nan"), float("nan")
    q = torch.quantile(draws.double(), torch.tensor([(1 - level) / 2, (1 + level) / 2]).double())
    shift = value - float(draws.double().mean())
    return float(q[0]) + shift, float(q[1]) + shift
