"""Vector chunks out and in: ragged per-image token matrices stored as flat tensors + lengths.

A chunk file is a dict of tensors, strings and numbers only (loads with weights_only=True):
    keys:    list[str], n image keys in shard order
    vectors: (sum_i T_i, D) the images' token rows, concatenated
    lengths: (n,) int64, T_i per image (token counts may differ per image)
    skipped: list[str], "key: reason" for the images of this chunk's range that were unusable
    notes:   list[str], "key: note" for images used after a fix (mode conversion, no caption, ...)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from src.data.io import load_torch, save_torch_atomic
from src.data.paths import ChunkKind, chunk_path, list_chunk_indices
from src.errors import UserError


@dataclass
class Chunk:
    keys: list[str]
    vectors: torch.Tensor  # (sum T_i, D)
    lengths: torch.Tensor  # (n,)
    skipped: list[str]
    notes: list[str] = field(default_factory=list)

    def items(self) -> list[torch.Tensor]:
        """Per-image token matrices, views into `vectors`: [(T_i, D)]."""
        return list(torch.split(self.vectors, self.lengths.tolist()))

    def by_key(self) -> dict[str, torch.Tensor]:
        """{key: (T_i, D)}"""
        return dict(zip(self.keys, self.items(), strict=True))

    def to_dict(self) -> dict:
        return {
            "keys": list(self.keys),
            "vectors": self.vectors.contiguous(),
            "lengths": self.lengths.to(torch.int64),
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }

    @classmethod
    def from_items(
        cls,
        keys: list[str],
        items: list[torch.Tensor],
        skipped: list[str],
        notes: list[str] | None = None,
        dim: int | None = None,
    ) -> Chunk:
        """Pack per-image (T_i, D) tensors. `dim` gives D for a chunk with no image at all."""
        if len(keys) != len(items):
            raise ValueError(f"{len(keys)} keys for {len(items)} vector sets")
        if items:
            vectors = torch.cat([t.reshape(t.shape[0], -1) for t in items])
        else:
            vectors = torch.zeros(0, dim or 0)
        lengths = torch.tensor([t.shape[0] for t in items], dtype=torch.int64)
        return cls(keys, vectors, lengths, skipped, list(notes or []))


def save_chunk(shard_dir: Path, kind: ChunkKind, index: int, chunk: Chunk) -> Path:
    return save_torch_atomic(chunk_path(shard_dir, kind, index), chunk.to_dict())


def load_chunk(path: Path) -> Chunk:
    d = load_torch(path)
    missing = {"keys", "vectors", "lengths"} - set(d)
    if missing:
        raise UserError(f"{path}: not a vector chunk (missing {sorted(missing)})")
    chunk = Chunk(
        list(d["keys"]),
        d["vectors"],
        d["lengths"],
        list(d.get("skipped", [])),
        list(d.get("notes", [])),
    )
    if int(chunk.lengths.sum()) != chunk.vectors.shape[0] or len(chunk.keys) != len(chunk.lengths):
        raise UserError(f"{path}: lengths do not match vectors/keys (corrupt chunk?)")
    return chunk


def iter_chunks(shard_dir: Path, kind: ChunkKind) -> Iterator[tuple[int, Chunk]]:
    """Finished chunks of one kind in index order, one in memory at a time."""
    for i in list_chunk_indices(shard_dir, kind):
        yield i, load_chunk(chunk_path(shard_dir, kind, i))


def pool_chunk(chunk: Chunk, pool: Literal["mean", "cls"]) -> torch.Tensor:
    """(n, D) float32 pooled rows of a chunk, without a Python loop per image for 'mean'."""
    n = len(chunk.keys)
    if n == 0:
        return torch.zeros(0, chunk.vectors.shape[1])
    v = chunk.vectors.float()
    if pool == "cls":
        starts = torch.cumsum(chunk.lengths, 0) - chunk.lengths
        return v[starts]
    if pool == "mean":
        seg = torch.repeat_interleave(torch.arange(n), chunk.lengths)
        sums = torch.zeros(n, v.shape[1]).index_add_(0, seg, v)
        return sums / chunk.lengths.clamp(min=1).unsqueeze(1).to(v.dtype)
    raise ValueError(f"unknown pooling {pool!r}; expected mean or cls")


def check_aligned(pre: Chunk, post: Chunk, where: str) -> None:
    """Pre and post chunks must describe the same images in the same order."""
    if pre.keys != post.keys:
        diff = sorted(set(pre.keys) ^ set(post.keys))[:5]
        raise UserError(
            f"{where}: pre/post keys do not line up "
            f"({len(pre.keys)} vs {len(post.keys)}; first differing: {diff or 'order differs'})"
        )
