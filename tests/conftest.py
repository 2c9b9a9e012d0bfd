"""Shared fixtures: a `mini` VLM with a random connector, and small image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from src.models.connector import ConnectorConfig, MLPConnector, save_connector


@pytest.fixture(scope="session")
def random_connector_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mini connector folder with seeded random weights (EfficientNet 1280 -> SmolLM2 576)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("connector")
    save_connector(MLPConnector(ConnectorConfig(in_dim=1280, out_dim=576, hidden_dim=64)), folder)
    return folder


@pytest.fixture(scope="session")
def mini_adapter(random_connector_dir: Path):
    from src.models import load_adapter

    return load_adapter("mini", str(random_connector_dir))


def write_noise_images(folder: Path, n: int, *, seed: int = 0, caption: bool = True) -> list[Path]:
    """n small RGB JPEGs of seeded noise with varied sizes, plus caption files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = 40 + 7 * (i % 5), 48 + 5 * (i % 3)
        p = folder / f"img_{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p, quality=90)
        if caption:
            p.with_suffix(".txt").write_text(f"noise picture number {i}\n", encoding="utf-8")
        paths.append(p)
    return paths


@pytest.fixture
def noise_root(tmp_path: Path) -> Path:
    """Two shards of noise images: s0 with 9 images, s1 with 4."""
    root = tmp_path / "images"
    write_noise_images(root / "s0", 9, seed=1)
    write_noise_images(root / "s1", 4, seed=2)
    return root
