"""Sparse-autoencoder measures as pure tensor functions: FVU, L0, dead features, feature overlap.

FVU (fraction of variance unexplained) = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the
token rows of one layer and token set: unlike raw MSE it compares across layers whose residual
norms differ. L0 is a count of active features per token (not a fraction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """x, x_hat (N, D) -> sum ||x - x_hat||^2 / sum ||x - mean x||^2 (float64 sums)."""
    x, x_hat = x.double(), x_hat.double()
    return float((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def l0(codes: torch.Tensor) -> torch.Tensor:
    """codes (N, F) -> (N,) the number of active (non-zero) features of each row."""
    return (codes != 0).sum(-1)


def active_features(codes: torch.Tensor) -> torch.Tensor:
    """codes (N, F) -> (F,) bool: the features active on any of the rows (a token set's union)."""
    return (codes != 0).any(0)


def dead_share(ever_active: torch.Tensor) -> float:
    """ever_active (F,) bool over an evaluation set -> the share of features never active."""
    return float((~ever_active).float().mean())


def overlap_share(a: torch.Tensor, b: torch.Tensor) -> float:
    """a, b (F,) bool active sets -> |a & b| / |a|: how many of a's features b also uses
    (nan when a is empty)."""
    n = int(a.sum())
    return float((a & b).sum()) / n if n else float("nan")


@dataclass
class TokenSums:
    """What FVU needs from one image's rows, so that FVU over any set of images (a bootstrap
    resample) is a ratio of sums: err = sum ||x - x_hat||^2, sx = sum x (D,), sxx = sum ||x||^2,
    n = rows. Stacked over images: err (M,), sx (M, D), sxx (M,), n (M,)."""

    err: torch.Tensor
    sx: torch.Tensor
    sxx: torch.Tensor
    n: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, x_hat: torch.Tensor) -> TokenSums:
        """One image's rows x, x_hat (T, D) -> its sums (0-d tensors and (D,))."""
        x, x_hat = x.double(), x_hat.double()
        return cls((x - x_hat).pow(2).sum(), x.sum(0), x.pow(2).sum(), torch.tensor(x.shape[0]))

    @classmethod
    def stack(cls, parts: list[TokenSums]) -> TokenSums:
        return cls(
            *(torch.stack([getattr(p, f) for p in parts]) for f in ("err", "sx", "sxx", "n"))
        )

    def fvu(self, idx: torch.Tensor | None = None) -> float:
        """FVU over the images idx (M',) (with repeats; None: all) of stacked sums."""
        if idx is None:
            idx = torch.arange(self.err.shape[0])
        n = self.n[idx].sum().double()
        total = self.sxx[idx].sum() - self.sx[idx].sum(0).pow(2).sum() / n
        return float(self.err[idx].sum() / total)


def fvu_with_ci(
    sums: TokenSums, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """FVU of stacked per-image sums and a percentile bootstrap CI over images."""
    m = sums.err.shape[0]
    g = torch.Generator().manual_seed(seed)
    draws = torch.tensor([sums.fvu(torch.randint(m, (m,), generator=g)) for _ in range(n_boot)])
    alpha = (1 - level) / 2
    lo, hi = (
        torch.quantile(draws.double(), torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
        if n_boot
        else torch.tensor([float("nan")] * 2)
    )
    return {"mean": sums.fvu(), "ci_low": float(lo), "ci_high": float(hi), "n": m}
