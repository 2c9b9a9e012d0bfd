"""A fine-tuned vision tower saved as a folder: a base tower's name plus the weights that differ.

    <folder>/tower.json          {"format", "base", "dim", "changed", ... the training record}
    <folder>/tower.safetensors   the tensors of the base tower's state dict that training changed
    <folder>/manifest.json       written last by the stage that made it (upstream identity)

Only the changed tensors are stored (a kernel-aligned EfficientNet-Lite0 with its last blocks
trained is ~3 MB, not 18), so the base tower (an offline package's weights or a hub id) must be
available where the folder is loaded; tower.json records which. Wherever a tower is built by name
(src.models.mini.build_vision), a folder path in its place loads this way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from src.data.io import atomic_write, write_json_atomic
from src.errors import UserError

TOWER_CONFIG = "tower.json"
TOWER_WEIGHTS = "tower.safetensors"
FORMAT = "bridgescope-tower-delta/1"


def is_tower_folder(name: str | Path) -> bool:
    """Is `name` a folder written by save_tower_folder?"""
    return (Path(name) / TOWER_CONFIG).is_file()


def changed_tensors(
    tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The entries of state dict `tuned` that are not bit-equal to `base`'s (same keys)."""
    if tuned.keys() != base.keys():
        extra = sorted(set(tuned) ^ set(base))[:5]
        raise ValueError(f"state dicts have different keys (e.g. {extra})")
    return {
        k: v.detach().cpu().contiguous()
        for k, v in tuned.items()
        if not torch.equal(v.detach().cpu(), base[k].detach().cpu())
    }


def save_tower_folder(
    folder: Path,
    tuned: torch.nn.Module,
    base: torch.nn.Module,
    *,
    base_name: str,
    record: dict[str, Any],
) -> Path:
    """folder/tower.safetensors (the changed tensors) then folder/tower.json (config last)."""
    folder = Path(folder)
    delta = changed_tensors(tuned.state_dict(), base.state_dict())
    atomic_write(folder / TOWER_WEIGHTS, lambda tmp: save_file(delta, str(tmp)))
    config = {
        "format": FORMAT,
        "base": base_name,
        "dim": int(getattr(base, "dim", 0)),
        "changed": sorted(delta),
        **record,
    }
    write_json_atomic(folder / TOWER_CONFIG, config)
    return folder


def read_tower_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / TOWER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise UserError(f"{path} is not a {FORMAT} tower folder (format {config.get('format')!r})")
    return config


def load_tower_folder(
    folder: Path,
    grid: int,
    build_base: Callable[[str, int], tuple[torch.nn.Module, Any]],
) -> tuple[torch.nn.Module, Any]:
    """(tower, image transform): the base tower built by `build_base(name, grid)` with the
    folder's changed tensors loaded over its weights, frozen, in eval mode."""
    config = read_tower_config(folder)
    if is_tower_folder(config["base"]):
        raise UserError(f"{folder}: its base {config['base']} is itself a tower folder")
    tower, transform = build_base(config["base"], grid)
    delta = load_file(str(Path(folder) / TOWER_WEIGHTS))
    state = tower.state_dict()
    wrong = [k for k, v in delta.items() if k not in state or state[k].shape != v.shape]
    if wrong:
        raise UserError(
            f"{folder}/{TOWER_WEIGHTS} does not fit base tower {config['base']!r} "
            f"(e.g. {wrong[:3]}): it was trained from another tower"
        )
    tower.load_state_dict(delta, strict=False)
    return tower.eval().requires_grad_(False), transform
