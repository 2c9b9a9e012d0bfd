"""The shard loop shared by every extraction stage: images in, resumable vector chunks out."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from src.data.images import ImageRecord, LoadedImage, image_loader
from src.data.io import MANIFEST_NAME, read_manifest, write_json_atomic, write_manifest
from src.data.paths import ChunkKind, chunk_path, list_chunk_indices
from src.data.vectors import Chunk, iter_chunks, save_chunk
from src.errors import UserError

OWNER_NAME = ".owner.json"  # identity of whoever writes chunks here, before the manifest exists

# encode(model inputs of the decoded images, those images' reports)
#     -> {kind: per-image (T_i, D) tensors, in order}
EncodeFn = Callable[[dict[str, Any], list[LoadedImage]], dict[ChunkKind, list[torch.Tensor]]]


@dataclass
class ShardResult:
    shard: str
    folder: Path
    n_images: int = 0
    n_ok: int = 0
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    reused: bool = False  # finished earlier, nothing recomputed
    shapes: dict[str, Any] = field(default_factory=dict)


def chunk_ranges(n: int, save_every: int) -> list[range]:
    """Image positions of each chunk: chunk i holds positions [i*save_every, (i+1)*save_every)."""
    return [range(s, min(s + save_every, n)) for s in range(0, n, save_every)]


def _chunk_batches(ranges: Sequence[range], batch_size: int) -> Iterator[list[int]]:
    """Batches that never cross a chunk boundary, so a resumed run sees the same batches (and,
    with deterministic kernels, writes the same bytes) as an uninterrupted one."""
    for r in ranges:
        for s in range(r.start, r.stop, batch_size):
            yield list(range(s, min(s + batch_size, r.stop)))


def prepare_folder(folder: Path, *, skip_existing: bool, identity: dict[str, Any]) -> bool:
    """Get an output folder ready. Returns True when it is already complete and can be reused.

    identity: manifest fields that must match for earlier work to be reused (model id, ...).
    Without skip_existing, earlier contents are removed so no stale chunk mixes in.
    """
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    if not skip_existing:
        for p in folder.iterdir():
            if p.name in (MANIFEST_NAME, OWNER_NAME) or p.suffix in (".pt", ".tmp"):
                p.unlink()
        return False
    if manifest is None:
        owner = folder / OWNER_NAME
        found = json.loads(owner.read_text(encoding="utf-8")) if owner.exists() else {}
        check_identity(folder, found, identity)
        return False
    check_identity(folder, manifest, identity)
    return True


def check_identity(folder: Path, found: dict[str, Any], identity: dict[str, Any]) -> None:
    for k, v in identity.items():
        if k in found and found[k] != v:
            raise UserError(
                f"{folder} holds output for {k}={found[k]!r}, not {v!r}; "
                "use another --out_dir or run without --skip_existing to overwrite it"
            )


def extract_shard(
    records: list[ImageRecord],
    folder: Path,
    *,
    encode: EncodeFn,
    preprocess: Callable[[list], dict[str, Any]],
    kinds: tuple[ChunkKind, ...],
    batch_size: int,
    num_workers: int,
    save_every: int,
    save_dtype: torch.dtype | None,
    skip_existing: bool,
    identity: dict[str, Any],
    manifest_fields: dict[str, Any],
    loader_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> ShardResult:
    """Encode one shard into chunk files of `save_every` images and finish with a manifest.

    Chunks already on disk (all kinds present) are kept and their images not recomputed, so a run
    killed at any moment continues where it stopped. Memory holds one chunk's vectors at most.
    """
    shard = records[0].shard if records else folder.name
    result = ShardResult(shard=shard, folder=folder, n_images=len(records))
    if prepare_folder(folder, skip_existing=skip_existing, identity=identity):
        result.reused = True
        return _summarise(result, folder, kinds)
    # Record who writes here before the first chunk, so a resume by another model is refused.
    write_json_atomic(folder / OWNER_NAME, identity)

    t0 = time.perf_counter()
    ranges = chunk_ranges(len(records), save_every)
    done = {i for i in range(len(ranges)) if _chunk_done(folder, kinds, i)}
    todo = [r for i, r in enumerate(ranges) if i not in done]
    positions = [p for batch in _chunk_batches(todo, batch_size) for p in batch]
    loader = image_loader(
        [records[p] for p in positions],
        preprocess,
        batches=list(_index_batches(todo, batch_size)),
        num_workers=num_workers,
        **(loader_kwargs or {}),
    )

    pending: dict[ChunkKind, list[torch.Tensor]] = {k: [] for k in kinds}
    keys: list[str] = []
    skipped: list[str] = []
    notes: list[str] = []
    current = todo[0] if todo else None
    bar = tqdm(total=len(positions), desc=f"{shard}", unit="img", disable=not progress)
    seen = 0
    for batch in loader:
        if batch.good:
            # The encoder may refuse an image (a text reference without caption) by setting
            # item.error; its entry in the returned lists is then ignored.
            encoded = encode(batch.inputs, batch.good)
            for k in kinds:
                if len(encoded[k]) != len(batch.good):
                    raise RuntimeError(
                        f"encoder returned {len(encoded[k])} {k} sets for {len(batch.good)} images"
                    )
            kept = [j for j, it in enumerate(batch.good) if it.error is None]
            for k in kinds:
                pending[k] += [_to_cpu(encoded[k][j], save_dtype) for j in kept]
            keys += [batch.good[j].record.key for j in kept]
        for it in batch.items:
            if it.error is not None:
                skipped.append(f"{it.record.key}: {it.error}")
            notes += [f"{it.record.key}: {w}" for w in it.warnings]
        seen += len(batch.items)
        bar.update(len(batch.items))
        assert current is not None
        if seen == current.stop - current.start:
            index = current.start // save_every
            for k in kinds:
                dim = pending[k][0].shape[-1] if pending[k] else 0
                save_chunk(
                    folder, k, index, Chunk.from_items(keys, pending[k], skipped, notes, dim=dim)
                )
            pending = {k: [] for k in kinds}
            keys, skipped, notes, seen = [], [], [], 0
            todo.pop(0)
            current = todo[0] if todo else None
    bar.close()
    result.seconds = time.perf_counter() - t0
    _summarise(result, folder, kinds)
    write_manifest(
        folder,
        **identity,
        **manifest_fields,
        shard=shard,
        kinds=list(kinds),
        save_every=save_every,
        n_images=result.n_images,
        n_ok=result.n_ok,
        n_skipped=len(result.skipped),
        skipped=result.skipped,
        notes=result.notes,
        chunks=len(ranges),
        shapes=result.shapes,
        seconds=round(result.seconds, 3),  # this run's shard loop (0 images when all reused)
        images_computed=len(positions),
    )
    return result


def _index_batches(ranges: Sequence[range], batch_size: int) -> Iterator[list[int]]:
    """_chunk_batches, renumbered as positions in the flattened list the dataset holds."""
    offset = 0
    for batch in _chunk_batches(ranges, batch_size):
        yield list(range(offset, offset + len(batch)))
        offset += len(batch)


def _chunk_done(folder: Path, kinds: tuple[ChunkKind, ...], index: int) -> bool:
    return all(chunk_path(folder, k, index).exists() for k in kinds)


def _to_cpu(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    t = t.detach()
    if dtype is not None:
        t = t.to(dtype)
    return t.cpu().contiguous()


def _summarise(result: ShardResult, folder: Path, kinds: tuple[ChunkKind, ...]) -> ShardResult:
    """Counts, reports and shapes read back from the chunk files on disk (the single truth)."""
    result.skipped, result.notes, result.n_ok = [], [], 0
    for kind in kinds:
        tokens: list[int] = []
        dim = None
        dtype = None
        for _, chunk in iter_chunks(folder, kind):
            tokens += chunk.lengths.tolist()
            if chunk.keys:
                dim, dtype = chunk.vectors.shape[1], str(chunk.vectors.dtype)
            if kind == kinds[0]:
                result.n_ok += len(chunk.keys)
                result.skipped += chunk.skipped
                result.notes += chunk.notes
        result.shapes[kind] = {
            "dim": dim,
            "dtype": dtype,
            "tokens_min": min(tokens) if tokens else None,
            "tokens_max": max(tokens) if tokens else None,
            "tokens_total": sum(tokens),
        }
    if kinds and not list_chunk_indices(folder, kinds[0]) and result.n_images:
        raise RuntimeError(f"{folder}: no chunk written")
    return result
