"""Controlled perturbations of one image's connector output E_post (T, D), seeded by its key.

Each takes a level in [0, 1] where the level is how much is changed, except lowrank, whose
level is the share of components kept (the connector study's convention):
    mask        zero round(level * T) tokens, chosen by a generator seeded from (seed, key)
    lowrank     centred SVD keeping round(level * min(T, D)) components, the token mean added back
    noise       Gaussian noise with power level x the signal's power (SNR = 1 / level)
    orthogonal  x exp(level A), A a random skew-symmetric matrix (seeded by seed only, shared by
                all images): a rotation from the identity (level 0) to a random one (level 1);
                token norms are kept
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache

import torch

MODES = ("mask", "lowrank", "noise", "orthogonal")


def key_generator(key: str, seed: int) -> torch.Generator:
    """A CPU generator determined by (seed, image key) alone: reproducible in any order."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return torch.Generator().manual_seed(h & (2**63 - 1))


def mask_tokens(x: torch.Tensor, level: float, key: str, seed: int = 0) -> torch.Tensor:
    """(T, D) -> (T, D) with round(level * T) rows set to zero."""
    n = round(level * x.shape[0])
    if n == 0:
        return x.clone()
    rows = torch.randperm(x.shape[0], generator=key_generator(key, seed))[:n]
    out = x.clone()
    out[rows.to(x.device)] = 0
    return out


def lowrank(x: torch.Tensor, level: float, key: str = "", seed: int = 0) -> torch.Tensor:
    """(T, D) -> the best rank-r approximation of the centred rows plus their mean,
    r = round(level * min(T, D)); level 1 keeps everything (up to float rounding)."""
    r = round(level * min(x.shape))
    if r >= min(x.shape):
        return x.clone()
    xf = x.float()
    mean = xf.mean(0, keepdim=True)
    u, s, vh = torch.linalg.svd(xf - mean, full_matrices=False)
    approx = (u[:, :r] * s[:r]) @ vh[:r] + mean
    return approx.to(x.dtype)


def add_noise(x: torch.Tensor, level: float, key: str, seed: int = 0) -> torch.Tensor:
    """(T, D) + N(0, sigma^2) with sigma^2 = level x mean(x^2): noise power / signal power."""
    if level == 0:
        return x.clone()
    xf = x.float()
    sigma = (level * xf.pow(2).mean()).sqrt()
    noise = torch.randn(x.shape, generator=key_generator(key, seed)).to(x.device)
    return (xf + sigma * noise).to(x.dtype)


@lru_cache(maxsize=4)
def _rotation_generator(dim: int, seed: int) -> torch.Tensor:
    """A random skew-symmetric (D, D) A; exp(A) is a rotation whose angles spread over (-pi, pi)
    (the eigenvalues of A follow a semicircle of radius pi), exp(level A) a path to it."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=g, dtype=torch.float64) * (torch.pi / (2 * dim**0.5))
    return (m - m.T) / 2**0.5


def rotate(x: torch.Tensor, level: float, key: str = "", seed: int = 0) -> torch.Tensor:
    """(T, D) @ exp(level * A): a rotation that grows from the identity to a random one."""
    if level == 0:
        return x.clone()
    rot = torch.linalg.matrix_exp(level * _rotation_generator(x.shape[1], seed))
    return (x.double() @ rot.to(x.device)).to(x.dtype)


PERTURBATIONS: dict[str, Callable[[torch.Tensor, float, str, int], torch.Tensor]] = {
    "mask": mask_tokens,
    "lowrank": lowrank,
    "noise": add_noise,
    "orthogonal": rotate,
}


def perturb(x: torch.Tensor, mode: str, level: float, key: str, seed: int = 0) -> torch.Tensor:
    """Apply one perturbation to one image's E_post (T, D)."""
    if mode not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {mode!r}; choose from {', '.join(MODES)}")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"level must be in [0, 1], got {level}")
    return PERTURBATIONS[mode](x, level, key, seed)
