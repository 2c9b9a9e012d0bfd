"""TopK SAEs on the LLM's own text activations, with eai-sparsify's SparseCoder (its TopK
encoder, FVU and AuxK losses, decoder normalisation, save_to_disk): only the loop over cached
activations is ours, because sparsify's Trainer drives a text-only model over token ids and
cannot read a VLM's chat-formatted sequences or a fixed activation set.

The loop does what sparsify's Trainer does per step: b_dec starts at the data mean, the
decoder rows stay unit-norm (the gradient parallel to them removed), AuxK on features that have
not fired for `dead_tokens` tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm


@dataclass
class SAEConfig:
    expansion_factor: int = field(default=4, metadata={"help": "features = d_in x this"})
    k: int = field(default=32, metadata={"help": "active features per token (TopK)"})
    epochs: int = field(default=10, metadata={"help": "passes over the text activations"})
    sae_batch: int = field(default=256, metadata={"help": "tokens per optimiser step"})
    lr: float = field(default=2e-3, metadata={"help": "Adam learning rate"})
    auxk_alpha: float = field(default=1 / 32, metadata={"help": "weight of the AuxK loss"})
    dead_tokens: int = field(
        default=0,
        metadata={
            "help": "tokens without firing that make a feature dead for AuxK "
            "(0: one epoch's tokens)"
        },
    )
    seed: int = field(default=0, metadata={"help": "initialisation and shuffling seed"})


@dataclass
class TrainResult:
    sae: torch.nn.Module  # sparsify.SparseCoder
    fvu_per_epoch: list[float]
    seconds: float
    steps: int


def train_sparse_coder(
    x: torch.Tensor,
    cfg: SAEConfig,
    device: torch.device,
    *,
    progress: bool = False,
    target_fvu: float | None = None,
) -> TrainResult:
    """Train one TopK SparseCoder on activations x (N, D) (float32, any device).

    target_fvu: stop after the first epoch whose mean training FVU is at or below it."""
    from sparsify import SparseCoder, SparseCoderConfig

    torch.manual_seed(cfg.seed)
    x = x.to(device, torch.float32)
    n = x.shape[0]
    sae = SparseCoder(
        x.shape[1],
        SparseCoderConfig(expansion_factor=cfg.expansion_factor, k=cfg.k),
        device,
        dtype=torch.float32,
    )
    sae.b_dec.data = x.mean(0)  # sparsify's Trainer: pre-activations centred at the start
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    since = torch.zeros(sae.num_latents, dtype=torch.long, device=device)
    dead_after = cfg.dead_tokens or n
    g = torch.Generator().manual_seed(cfg.seed)
    history: list[float] = []
    steps, t0 = 0, time.perf_counter()
    for _ in tqdm(range(cfg.epochs), desc="SAE epochs", disable=not progress):
        total, rows = 0.0, 0
        for idx in torch.randperm(n, generator=g).split(cfg.sae_batch):
            xb = x[idx.to(device)]
            dead = since > dead_after if cfg.auxk_alpha > 0 else None
            out = sae(xb, dead_mask=dead)
            loss = out.fvu + cfg.auxk_alpha * out.auxk_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_gradient_parallel_to_decoder_directions()
            opt.step()
            sae.set_decoder_norm_to_unit_norm()
            since += xb.shape[0]
            since[out.latent_indices.flatten()] = 0
            total += float(out.fvu.detach()) * xb.shape[0]
            rows += xb.shape[0]
            steps += 1
        history.append(total / rows)
        if target_fvu is not None and history[-1] <= target_fvu:
            break
    return TrainResult(sae.eval().requires_grad_(False), history, time.perf_counter() - t0, steps)
