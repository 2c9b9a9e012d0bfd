"""Sparse autoencoders behind one small interface, from three on-disk formats.

- sparsify (`cfg.json` with d_in + `sae.safetensors`): what train_sae writes, read with
  sparsify's own SparseCoder.load_from_disk. TopK of ReLU(W_enc (x - b_dec) + b_enc).
- SAELens (`cfg.json` + `sae_weights.safetensors`: W_enc (D, F), b_enc, W_dec (F, D), b_dec and
  `threshold` for JumpReLU); architecture standard / jumprelu / topk, `apply_b_dec_to_input`.
- Gemma Scope's `params.npz` (the same five arrays; JumpReLU, nothing subtracted before encoding).

A small reader of our own, not a dependency on sae-lens (it pulls transformer-lens, wandb and
plotly). Every format becomes a Coder: dense codes (N, F) with zeros for inactive features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from src.errors import InputMissing, UserError

Activation = Literal["topk", "jumprelu", "relu"]


@dataclass
class Coder:
    """W_enc (D, F), b_enc (F,), W_dec (F, D), b_dec (D,); k for topk, threshold (F,) for
    jumprelu; apply_b_dec_to_input: encode x - b_dec instead of x."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    activation: Activation
    k: int | None = None
    threshold: torch.Tensor | None = None
    apply_b_dec_to_input: bool = True
    source: str = ""

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def n_features(self) -> int:
        return self.W_enc.shape[1]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Coder:
        move = {k: getattr(self, k).to(device, dtype) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}
        thr = None if self.threshold is None else self.threshold.to(device, dtype)
        return Coder(
            **move,
            activation=self.activation,
            k=self.k,
            threshold=thr,
            apply_b_dec_to_input=self.apply_b_dec_to_input,
            source=self.source,
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> codes (N, F), zero where a feature is inactive."""
        x = x.to(self.W_enc.dtype)
        pre = (x - self.b_dec if self.apply_b_dec_to_input else x) @ self.W_enc + self.b_enc
        if self.activation == "topk":
            assert self.k is not None
            vals, idx = torch.relu(pre).topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, idx, vals)
        if self.activation == "jumprelu":
            assert self.threshold is not None
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (N, F) -> x_hat (N, D)."""
        return codes @ self.W_dec + self.b_dec

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).to(x.dtype)


def load_coder(folder: Path, device: torch.device | str = "cpu") -> Coder:
    """A Coder from a folder in any of the three formats (found by its files)."""
    folder = Path(folder)
    if (folder / "sae.safetensors").exists():
        return _sparsify(folder).to(device)
    if (folder / "sae_weights.safetensors").exists():
        return _saelens(folder).to(device)
    if (folder / "params.npz").exists():
        return _gemma_scope(folder).to(device)
    raise InputMissing(
        f"{folder}: no SAE found (sparsify sae.safetensors, SAELens sae_weights.safetensors "
        "or Gemma Scope params.npz)"
    )


def _sparsify(folder: Path) -> Coder:
    from sparsify import SparseCoder

    sae = SparseCoder.load_from_disk(folder)
    if sae.cfg.activation != "topk" or sae.cfg.transcode or sae.W_skip is not None:
        raise UserError(f"{folder}: only plain TopK sparsify autoencoders are supported")
    return Coder(
        sae.encoder.weight.detach().T.contiguous(),
        sae.encoder.bias.detach(),
        sae.W_dec.detach(),
        sae.b_dec.detach(),
        "topk",
        k=sae.cfg.k,
        apply_b_dec_to_input=True,
        source="sparsify",
    )


def _saelens(folder: Path) -> Coder:
    from safetensors.torch import load_file

    cfg = json.loads((folder / "cfg.json").read_text(encoding="utf-8"))
    w = load_file(folder / "sae_weights.safetensors")
    norm = cfg.get("normalize_activations") or "none"
    if norm != "none":
        raise UserError(f"{folder}: normalize_activations={norm!r} is not supported")
    arch = cfg.get("architecture", "standard")
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if arch == "jumprelu":
        act, extra = "jumprelu", {"threshold": w["threshold"]}
    elif arch == "topk" or cfg.get("activation_fn_str", cfg.get("activation_fn")) == "topk":
        act, extra = "topk", {"k": int(cfg.get("k", kwargs.get("k", 0)))}
    elif arch == "standard":
        act, extra = "relu", {}
    else:
        raise UserError(f"{folder}: SAELens architecture {arch!r} is not supported")
    return Coder(
        w["W_enc"],
        w["b_enc"],
        w["W_dec"],
        w["b_dec"],
        act,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        source=f"saelens:{arch}",
        **extra,
    )


def _gemma_scope(folder: Path) -> Coder:
    import numpy as np

    with np.load(folder / "params.npz") as p:
        t = {k: torch.from_numpy(np.asarray(p[k], dtype=np.float32)) for k in p.files}
    # Gemma Scope's JumpReLU encodes x itself (its b_dec is only added back on decoding)
    return Coder(
        t["W_enc"],
        t["b_enc"],
        t["W_dec"],
        t["b_dec"],
        "jumprelu",
        threshold=t["threshold"],
        apply_b_dec_to_input=False,
        source="gemma-scope",
    )
