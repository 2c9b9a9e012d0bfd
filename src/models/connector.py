"""Trainable connectors (LLaVA-style MLP) saved as safetensors + a JSON config, symmetrically."""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from src.data.io import atomic_write, write_json_atomic
from src.errors import UserError

WEIGHTS_NAME = "connector.safetensors"
CONFIG_NAME = "config.json"


@dataclass
class ConnectorArch:
    """The connector and the VLM around it that a user chooses (train_connector's flags)."""

    num_layers: int = field(
        default=2, metadata={"help": "Linear layers of the MLP (GELU between them)"}
    )
    vision: str = field(
        default="efficientnet-lite0",
        metadata={
            "help": "efficientnet-lite0 or craft-vgg16 (offline), a train_align dual encoder "
            "folder (its image side: one joint-space vector; pair with --prefix_tokens) or a "
            "hub id/path of a CLIP/SigLIP/DINOv2 tower"
        },
    )
    lm: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "smollm2-135m-instruct or gemma3-270m (offline) or a causal LM id/path"},
    )
    grid: int = field(
        default=4, metadata={"help": "offline tower token grid per side (4 -> 16 tokens)"}
    )
    prompt: str = field(
        default="Describe the image.", metadata={"help": "the instruction after the image"}
    )
    prefix_tokens: int = field(
        default=0,
        metadata={
            "help": "0: one LM token per vision token; N: the mean-pooled vision vector mapped "
            "to N prefix tokens by the MLP (seed E: 8, on the aligned encoder's one vector)"
        },
    )


@dataclass(kw_only=True)
class ConnectorConfig(ConnectorArch):
    """Everything needed to rebuild a connector and the VLM it belongs to (its config.json)."""

    in_dim: int  # vision token width (E_pre)
    out_dim: int  # LM embedding width (E_post)
    hidden_dim: int
    training: dict[str, Any] = field(default_factory=dict)  # command, data, steps, metrics


class MLPConnector(torch.nn.Module):
    """(..., in_dim) -> (..., out_dim): Linear, then (GELU, Linear) x (num_layers - 1).
    With prefix_tokens N: (B, T, in_dim) -> mean over T -> MLP -> (B, N, out_dim), its last
    Linear N * out_dim wide (one pooled vector becomes N prefix tokens).

    No LayerNorm: trained against a frozen LM, the output settles at the LM's embedding scale.
    """

    def __init__(self, config: ConnectorConfig) -> None:
        super().__init__()
        self.config = config
        out = config.out_dim * max(1, config.prefix_tokens)
        dims = [config.in_dim] + [config.hidden_dim] * (config.num_layers - 1) + [out]
        layers: list[torch.nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            if i:
                layers.append(torch.nn.GELU())
            layers.append(torch.nn.Linear(a, b))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.config.prefix_tokens
        if not n:
            return self.mlp(x)
        return self.mlp(x.mean(-2)).unflatten(-1, (n, self.config.out_dim))  # (B, N, out_dim)


def save_connector(connector: MLPConnector, folder: Path) -> Path:
    """folder/connector.safetensors + folder/config.json (weights first, config last)."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in connector.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(folder / CONFIG_NAME, asdict(connector.config))
    return folder


def load_connector(folder: Path) -> MLPConnector:
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not cfg_path.exists() or not w_path.exists():
        raise UserError(
            f"{folder} is not a connector folder (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    config = ConnectorConfig(**json.loads(cfg_path.read_text(encoding="utf-8")))
    connector = MLPConnector(config)
    state = load_file(str(w_path))
    try:
        connector.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{w_path} does not match its {CONFIG_NAME}: {e}") from None
    return connector
