"""LLaVA-style connector training: cached frozen vision tokens -> MLP -> frozen LM loss."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from src.data.io import load_torch, save_torch_atomic
from src.models.mini import ComposedVLM


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    prompt: str = "Describe the image."


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def batch_indices(n: int, step: int, cfg: TrainConfig) -> list[int]:
    """The examples of one step, a function of (seed, step) only, so a resumed run draws the
    same batches as an uninterrupted one."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randperm(n, generator=g)[: cfg.batch_size].tolist()


def train_connector(
    model: ComposedVLM,
    features: torch.Tensor,
    captions: list[list[str]],
    cfg: TrainConfig,
    *,
    checkpoint: Path,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> list[float]:
    """Train model.connector in place on features (N, T, D_vision) and their captions.

    Resumes from `checkpoint` if it exists (weights, optimizer, step, losses). Returns the loss
    per step. The caption of an image with several reference lines is drawn per (seed, step).
    """
    if len(features) != len(captions):
        raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
    if any(not c for c in captions):
        raise ValueError("every training image needs at least one caption")
    connector = model.connector
    connector.train().requires_grad_(True)
    opt = torch.optim.AdamW(connector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    start = 0
    if checkpoint.exists():
        state = load_torch(checkpoint)
        connector.load_state_dict(state["connector"])
        opt.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
    device = next(connector.parameters()).device
    dtype = next(connector.parameters()).dtype
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="train connector",
        disable=not progress,
    )
    t0 = time.perf_counter()
    for step in bar:
        idx = batch_indices(len(features), step, cfg)
        rng = random.Random(cfg.seed * 1_000_003 + step)
        caps = [captions[i][rng.randrange(len(captions[i]))] for i in idx]
        x = features[idx].to(device, dtype)  # (B, T, D_vision)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model.caption_loss(connector(x), caps, cfg.prompt).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(connector.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(
            loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}",
            s_per_step=f"{(time.perf_counter() - t0) / (step + 1 - start):.2f}",
        )
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_torch_atomic(
                checkpoint,
                {
                    "connector": connector.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step + 1,
                    "losses": losses,
                },
            )
            if on_checkpoint is not None:
                on_checkpoint(step + 1)
    connector.eval().requires_grad_(False)
    return losses
