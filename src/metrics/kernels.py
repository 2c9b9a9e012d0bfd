"""Batch kernel matrices for kernel alignment (KUEA, seed D): polynomial, gaussian, cosine, each
normalised by its diagonal, and the alignment loss between two of them. Pure tensor functions.

Every kernel takes x: (N, D) and returns K: (N, N). Normalisation K_ij / sqrt(K_ii K_jj) makes
the diagonal 1, so kernels of spaces of different width and scale are comparable entry by entry.
Note that the normalised polynomial kernel is invariant to scaling (gamma, c0) together: only
c0 / gamma matters (fit_kernel_params records both and the ratio).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

KERNELS = ("polynomial", "gaussian", "cosine")


def normalise_kernel(k: Tensor, eps: float = 1e-12) -> Tensor:
    """K (N, N) -> K_ij / sqrt(K_ii K_jj) (N, N). The diagonal must be positive."""
    d = k.diagonal().clamp_min(eps).sqrt()  # (N,)
    return k / (d[:, None] * d[None, :])


def polynomial_kernel(x: Tensor, gamma: Tensor | float, coef0: Tensor | float, degree: int = 3):
    """(gamma <x_i, x_j> + coef0)^degree, normalised: x (N, D) -> (N, N).

    gamma and coef0 may be 0-d tensors with gradients (the trainable student kernel)."""
    return normalise_kernel((gamma * (x @ x.T) + coef0) ** degree)


def gaussian_kernel(x: Tensor, band: Tensor | float) -> Tensor:
    """exp(-||x_i - x_j||^2 / (2 band^2)): x (N, D) -> (N, N). Its diagonal is already 1.

    Squared distances from the Gram matrix (clamped at 0), not cdist: cdist's gradient is NaN at
    the zero diagonal."""
    sq = x.pow(2).sum(1)  # (N,)
    d2 = (sq[:, None] + sq[None, :] - 2 * (x @ x.T)).clamp_min(0)
    return torch.exp(-d2 / (2 * band**2))


def cosine_kernel(x: Tensor, eps: float = 1e-12) -> Tensor:
    """<x_i, x_j> / (|x_i| |x_j|): x (N, D) -> (N, N)."""
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(eps)
    return xn @ xn.T


def kernel_matrix(name: str, x: Tensor, params: dict[str, Tensor | float]) -> Tensor:
    """The named kernel of x (N, D) with its parameters ({gamma, coef0} / {band} / {})."""
    fns: dict[str, Callable[[], Tensor]] = {
        "polynomial": lambda: polynomial_kernel(x, params["gamma"], params["coef0"]),
        "gaussian": lambda: gaussian_kernel(x, params["band"]),
        "cosine": lambda: cosine_kernel(x),
    }
    if name not in fns:
        raise ValueError(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    return fns[name]()


def kernel_alignment_loss(k_student: Tensor, k_teacher: Tensor) -> Tensor:
    """mean((K_s - K_t)^2) over all N x N entries: (N, N), (N, N) -> 0-d."""
    if k_student.shape != k_teacher.shape:
        raise ValueError(
            f"kernel shapes differ: {tuple(k_student.shape)} vs {tuple(k_teacher.shape)}"
        )
    return (k_student - k_teacher).pow(2).mean()


def clean_loss(kind: str, e: Tensor, e_orig: Tensor) -> Tensor:
    """How far the student's embedding moved from the original's: (B, ..., D) twice -> 0-d.

    l2: squared L2 distance summed over the last dim, averaged over everything else (the seed's
    l2, which does not divide by the width); cosine: 1 - mean cosine; none: 0.
    """
    if kind == "l2":
        return (e - e_orig).pow(2).sum(-1).mean()
    if kind == "cosine":
        return 1 - torch.nn.functional.cosine_similarity(e, e_orig, dim=-1).mean()
    if kind == "none":
        return e.new_zeros(())
    raise ValueError(f"unknown clean loss {kind!r} (l2, cosine, none)")


def median_distance(x: Tensor) -> float:
    """Median pairwise Euclidean distance of x (N, D) over i < j: the bandwidth heuristic."""
    d = torch.cdist(x.double(), x.double())
    iu = torch.triu_indices(len(x), len(x), offset=1)
    return float(d[iu[0], iu[1]].median())
