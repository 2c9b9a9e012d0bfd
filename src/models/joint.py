"""Image-text models with one joint space, as eval_probe's zero-shot classifier and retrieval
see them: a trained dual encoder folder (train_align), or a CLIP / SigLIP model by hub id or path.

    JointModel.image_features(root, shards, cache) -> Pooled (its own image side, unit rows)
    JointModel.encode_text(texts) -> (N, d) unit rows
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from src.data.pooled import Pooled, pooled_features
from src.models.dual_encoder import is_dual_encoder, load_dual_encoder


class DualJoint:
    """A train_align dual encoder: its vision tower's pooled features (cached) through the image
    adapter; texts through its text tower and adapter; at an MRL radius if given."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype,
                 radius: int | None = None) -> None:  # fmt: skip
        self.dual = load_dual_encoder(folder, device=device, dtype=dtype)
        self.device, self.dtype, self.radius = device, dtype, radius
        self.name, self.vision = str(folder), self.dual.config.vision  # vision: the cached tower

    def image_features(self, root: Path, shards: list[str], cache: Path, **kw: Any) -> Pooled:
        c = self.dual.config
        pooled = pooled_features(
            root, shards, c.vision, cache, pool=c.vision_pool, revision=c.revision,
            device=self.device, dtype=self.dtype, **kw,
        )  # fmt: skip
        pooled.features = self.dual.encode_image(pooled.features, self.radius)
        return pooled

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.dual.encode_text(texts, self.radius)

    def describe(self) -> dict[str, Any]:
        return {**self.dual.describe(), "radius": self.radius}


class HFJoint:
    """A CLIP / SigLIP model: get_image_features (extract_clip's pool 'cls' reference, cached)
    and get_text_features (transformers 5.x: the projected vector is pooler_output). SigLIP was
    trained on texts padded to 64 tokens, so texts are padded to max_length for it."""

    def __init__(self, model_id: str, device: torch.device, dtype: torch.dtype,
                 revision: str | None = None) -> None:  # fmt: skip
        from transformers import AutoModel, AutoTokenizer

        self.name, self.revision, self.device, self.dtype = model_id, revision, device, dtype
        self.vision = model_id  # the cached tower: its own image side
        self.model = AutoModel.from_pretrained(model_id, revision=revision, dtype=dtype)
        self.model = self.model.to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
        self.siglip = self.model.config.model_type.startswith("siglip")

    def image_features(self, root: Path, shards: list[str], cache: Path, **kw: Any) -> Pooled:
        pooled = pooled_features(
            root, shards, self.name, cache, pool="cls", revision=self.revision,
            device=self.device, dtype=self.dtype, **kw,
        )  # fmt: skip
        pooled.features = F.normalize(pooled.features.float(), dim=-1)
        return pooled

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), 64):
            pad = {"padding": "max_length", "max_length": 64} if self.siglip else {"padding": True}
            enc = self.tokenizer(texts[s : s + 64], truncation=True, return_tensors="pt", **pad)
            feats = self.model.get_text_features(**enc.to(self.device))
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            out.append(F.normalize(feats.float().cpu(), dim=-1))
        return torch.cat(out)

    def describe(self) -> dict[str, Any]:
        return {"joint_model": self.name, "revision": self.revision}


def load_joint(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    radius: int | None = None,
    revision: str | None = None,
) -> DualJoint | HFJoint:
    """A dual encoder folder, else a CLIP / SigLIP hub id or path."""
    if is_dual_encoder(name):
        return DualJoint(Path(name), device, dtype, radius)
    return HFJoint(name, device, dtype, revision)
