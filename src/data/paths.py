"""The one place that builds output paths: every writer and every reader calls these."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

ChunkKind = Literal["pre", "post", "ref"]
_CHUNK_RE = re.compile(r"^(pre|post|ref)_vectors_(\d+)\.pt$")


def vector_shard_dir(out_dir: Path, model: str, shard: str) -> Path:
    """data/vector/<model>/<shard>: one model's vectors for one image shard."""
    return Path(out_dir) / model / shard


def reference_shard_dir(out_dir: Path, shard: str) -> Path:
    """data/clip_ref/<shard>: one reference encoder's embeddings for one image shard."""
    return Path(out_dir) / shard


def chunk_path(shard_dir: Path, kind: ChunkKind, index: int) -> Path:
    """<shard_dir>/<kind>_vectors_<index>.pt"""
    return Path(shard_dir) / f"{kind}_vectors_{index}.pt"


def list_chunk_indices(shard_dir: Path, kind: ChunkKind) -> list[int]:
    """Indices of the finished chunks of one kind, in numeric order (temp files are ignored)."""
    found = []
    for p in Path(shard_dir).glob(f"{kind}_vectors_*.pt"):
        m = _CHUNK_RE.match(p.name)
        if m:
            found.append(int(m.group(2)))
    return sorted(found)


def list_vector_shards(model_dir: Path) -> list[str]:
    """Shard names under a model's (or a reference's) vector folder, sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in model_dir.iterdir()
        if p.is_dir() and any(_CHUNK_RE.match(c.name) for c in p.iterdir())
    )


def shard_dirs(folder: Path, shards: list[str] | None = None) -> list[Path]:
    """Shard folders of a vector folder: a folder holding chunk files is itself one shard;
    otherwise its sub-folders with chunks are (only `shards`, when given)."""
    folder = Path(folder)
    if any(_CHUNK_RE.match(p.name) for p in folder.glob("*_vectors_*.pt")):
        return [folder]
    names = list_vector_shards(folder)
    if shards:
        missing = sorted(set(shards) - set(names))
        if missing:
            raise ValueError(f"shard(s) {missing} not in {folder}")
        names = [n for n in names if n in shards]
    if not names:
        raise ValueError(f"no vector chunks under {folder}")
    return [folder / n for n in names]
