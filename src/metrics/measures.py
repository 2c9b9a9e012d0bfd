"""Similarity measures looked up by name (as platonic-rep's AlignmentMetrics.measure does), so the
alignment suite, extract_knn and the web app pick them the same way; a new measure is one entry.

Every entry wraps a pure function that lives elsewhere in src/metrics (nothing is computed twice
here). A measure takes x (N, Dx) and y (N, Dy), the same N images row by row, and returns a float;
`higher_is_better` says how to read it. Kernel measures also give their Gram matrix (`gram`,
x -> (N, N)) so a bootstrap can resample images in O(N^2) per draw, and `null` gives the
permutation test (shuffled pairing) where one exists. `permutation_tests` runs the tests of
several measures at once: measures of one `null_family` share one set of permutations and
their permuted cross terms (both linear CKA estimators: the cost of one).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    linear_cka_permutation_tests,
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
    # measures naming one family get their nulls from one NULL_FAMILIES call (permutation_tests)
    null_family: str | None = None
    subsample: bool = False  # fn and null take max_n: N x N Gram matrices, seeded subsample above


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
            null_family="linear_cka",
        ),
        Measure(
            "cka_linear_unbiased",
            lambda x, y: linear_cka(x, y, unbiased=True),
            "linear CKA, unbiased HSIC (Song et al.; ~0 for independent data)",
            gram=_linear_gram,
            unbiased=True,
            null=lambda x, y, **kw: linear_cka_permutation_test(x, y, unbiased=True, **kw),
            null_family="linear_cka",
        ),
        Measure(
            "cka_rbf",
            lambda x, y, **kw: rbf_cka(x, y, **kw),
            "RBF CKA, median bandwidth, biased",
            gram=_rbf,
            null=lambda x, y, **kw: rbf_cka_permutation_test(x, y, **kw),
            subsample=True,
        ),
        Measure(
            "cka_rbf_unbiased",
            lambda x, y, **kw: rbf_cka(x, y, unbiased=True, **kw),
            "RBF CKA, median bandwidth, unbiased HSIC",
            gram=_rbf,
            unbiased=True,
            null=lambda x, y, **kw: rbf_cka_permutation_test(x, y, unbiased=True, **kw),
            subsample=True,
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


def null_measures(names: Sequence[str]) -> list[Measure]:
    """The measures named, each checked to exist (get_measure) and to have a permutation null."""
    out = [get_measure(n) for n in dict.fromkeys(names)]
    untested = [m.name for m in out if m.null is None]
    if untested:
        with_null = ", ".join(n for n, m in MEASURES.items() if m.null is not None)
        msg = f"no permutation null for {', '.join(untested)}; measures with one: {with_null}"
        raise UserError(msg)
    return out


def _linear_family(
    members: Sequence[Measure], x: Tensor, y: Tensor, n_perm: int, seed: int
) -> list[PermutationTest]:
    biased, unbiased = linear_cka_permutation_tests(x, y, n_perm=n_perm, seed=seed)
    return [unbiased if m.unbiased else biased for m in members]


# family -> f(members, x, y, n_perm, seed) -> one PermutationTest per member, in order, each
# equal to that member's own null(x, y, n_perm=, seed=)
NULL_FAMILIES: dict[str, Callable[..., list[PermutationTest]]] = {"linear_cka": _linear_family}


def permutation_tests(
    names: Sequence[str],
    x: Tensor,
    y: Tensor,
    *,
    n_perm: int,
    seed: int = 0,
    max_n: int | None = 5000,
) -> dict[str, PermutationTest]:
    """{name: PermutationTest} of x (N, Dx) vs y (N, Dy) under shuffled pairing, in names' order.

    Measures sharing a null family and asked for together come from one call (the same
    permutations, computed once); any other runs its own null. Each result equals
    get_measure(name).null(x, y, n_perm=n_perm, seed=seed) (with max_n for the subsampling
    ones: N x N Gram measures use a seeded subsample of max_n images above it, None: all)."""
    measures = null_measures(names)
    families: dict[str, list[Measure]] = {}
    for m in measures:
        if m.null_family is not None:
            families.setdefault(m.null_family, []).append(m)
    out: dict[str, PermutationTest] = {}
    for family, members in families.items():
        if len(members) > 1:
            tests = NULL_FAMILIES[family](members, x, y, n_perm, seed)
            out.update(zip((m.name for m in members), tests, strict=True))
    for m in measures:
        if m.name not in out:
            kw = {"max_n": max_n} if m.subsample else {}
            out[m.name] = m.null(x, y, n_perm=n_perm, seed=seed, **kw)
    return {m.name: out[m.name] for m in measures}


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
