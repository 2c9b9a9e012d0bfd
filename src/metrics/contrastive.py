"""Contrastive losses of a dual encoder: symmetric InfoNCE and its Matryoshka (MRL) sum over radii.

Pure tensor functions, no I/O. Each radius r takes the first r coordinates of both embeddings,
L2-normalises them and scores the batch's B x B similarity matrix; the MRL loss is a weighted sum
with each radius counted once (seed E added a full-dimension CLIP term on top of the mean over
radii, so its largest radius weighed 4/3 against 1/3 for each smaller one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

CLIP_INIT_SCALE = 1 / 0.07  # CLIP's initial logit scale (temperature 0.07)
CLIP_MAX_SCALE = 100.0  # CLIP clamps the learnt scale here


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matched rows: mean of the image->text and text->image cross-entropy.

    image, text: (B, D) unit-norm rows, row b of each a positive pair; logit_scale: () > 0.
    Returns a scalar."""
    logits = logit_scale * image @ text.T  # (B, B); the diagonal holds the positives
    target = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def mrl_info_nce(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    radii: Sequence[int],
    weights: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """sum_r weights[r] * info_nce(normalise(image[:, :r]), normalise(text[:, :r])).

    image, text: (B, D) adapter outputs (any norm); radii: distinct, each <= D; weights: one per
    radius. Returns (total loss (), per-radius losses (R,), detached)."""
    if len(radii) != len(weights):
        raise ValueError(f"{len(radii)} radii but {len(weights)} weights")
    if len(set(radii)) != len(radii):
        raise ValueError(f"radii must be distinct (each counted once): {list(radii)}")
    if max(radii) > image.shape[1] or max(radii) > text.shape[1]:
        raise ValueError(f"radius {max(radii)} exceeds the embedding width {image.shape[1]}")
    parts = [
        info_nce(F.normalize(image[:, :r], dim=-1), F.normalize(text[:, :r], dim=-1), logit_scale)
        for r in radii
    ]
    per = torch.stack(parts)  # (R,)
    w = torch.tensor(list(weights), dtype=per.dtype, device=per.device)
    return (w * per).sum(), per.detach()


def clamp_scale(log_scale: torch.Tensor, max_scale: float = CLIP_MAX_SCALE) -> torch.Tensor:
    """exp(log_scale) clamped at max_scale (CLIP clamps the learnt logit scale at 100): ()."""
    return log_scale.exp().clamp(max=max_scale)


def init_log_scale(scale: float = CLIP_INIT_SCALE) -> float:
    """log of the initial logit scale (CLIP: log(1 / 0.07))."""
    return math.log(scale)
