"""Reconstruction quality per image: MSE in the standardised space, cosine in the original one."""

from __future__ import annotations

import torch


def token_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image, averaged over tokens and channels.

    pred, target: (B, T, D) in the space the error is meant in (standardised) -> (B,)
    """
    _check(pred, target)
    return ((pred.float() - target.float()) ** 2).mean((1, 2))


def token_cosine(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity per token, averaged over tokens: (B, T, D) x2 -> (B,)."""
    _check(pred, target)
    p, t = pred.float(), target.float()
    cos = (p * t).sum(-1) / (p.norm(dim=-1) * t.norm(dim=-1)).clamp(min=eps)
    return cos.mean(1)


def _check(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"expected two (B, T, D) tensors of one shape, got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )


def fit_ridge(xtx: torch.Tensor, xty: torch.Tensor, alpha: float) -> torch.Tensor:
    """Ridge solution W = (X^T X + alpha I)^-1 X^T Y from accumulated moments (float64).

    xtx: (D_in + 1, D_in + 1) including a bias column; xty: (D_in + 1, D_out).
    The bias (last row/column) is not penalised.
    """
    reg = torch.eye(xtx.shape[0], dtype=xtx.dtype) * alpha
    reg[-1, -1] = 0.0
    return torch.linalg.solve(xtx + reg, xty)
