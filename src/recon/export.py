"""Reconstructed E_pre shards: every E_post chunk of a shard through a trained reconstructor,
written in the vector layout (kind 'pre'), with a manifest naming the reconstructor and the
vectors it came from (src.recon.model.provenance)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from src.data.extraction import OWNER_NAME, check_identity, prepare_folder
from src.data.io import is_complete, read_manifest, write_json_atomic, write_manifest
from src.data.paths import chunk_path, list_chunk_indices
from src.data.vectors import Chunk, load_chunk, save_chunk
from src.recon.data import check_finite
from src.recon.model import NormStats, reconstruct


def export_complete(out: Path, identity: dict[str, Any]) -> bool:
    """Is a shard's export finished? One made by another reconstructor is a UserError."""
    manifest = read_manifest(out)
    if manifest is None:
        return False
    check_identity(out, manifest, identity)
    return is_complete(out)


def export_shard(
    model: torch.nn.Module,
    stats: NormStats,
    src_dir: Path,
    out: Path,
    *,
    identity: dict[str, Any],
    record: dict[str, Any],
    batch_size: int,
    device: torch.device,
    skip_existing: bool,
    progress: bool = True,
) -> int | None:
    """Reconstruct one shard's E_post chunks into `out`, chunk by chunk (a killed run resumes
    at the first missing chunk with skip_existing). Returns the number of images, or None when
    the shard was complete already."""
    if prepare_folder(out, skip_existing=skip_existing, identity=identity):
        return None
    # Chunks written before the manifest belong to this reconstructor: a resumed run by
    # another one must not mix in with them (prepare_folder checks this owner record).
    write_json_atomic(out / OWNER_NAME, identity)
    indices = list_chunk_indices(src_dir, "post")
    n = 0
    for i in tqdm(indices, desc=src_dir.name, disable=not progress):
        if skip_existing and chunk_path(out, "pre", i).exists():
            continue
        path = chunk_path(src_dir, "post", i)
        post = load_chunk(path)
        check_finite(post, path)
        items = post.items()
        recon: list[torch.Tensor] = []
        for s in range(0, len(items), batch_size):
            recon += reconstruct(model, stats, items[s : s + batch_size], device)
        d_pre = identity["reconstructor"]["config"]["d_pre"]
        save_chunk(
            out, "pre", i, Chunk.from_items(post.keys, recon, post.skipped, post.notes, dim=d_pre)
        )
        n += len(items)
    write_manifest(out, **identity, **record, source=src_dir, chunks=len(indices))
    return n
