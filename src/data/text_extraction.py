"""The shard loop of extract_text: captions in, resumable per-layer text chunks out.

Each image's caption lines (src.data.images.read_captions) become one row each, so a chunk item
is (n_captions_i, D) in the ragged vector layout (src.data.vectors), keyed by the image stem like
E_pre / E_post. One folder per layer (paths.text_layer_dir) and shard; a chunk is skipped on
resume when every layer has it; the shard manifest is written last in each layer folder.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from src.data.extraction import OWNER_NAME, chunk_ranges, prepare_folder
from src.data.images import ImageRecord, read_captions
from src.data.io import write_json_atomic, write_manifest
from src.data.paths import chunk_path
from src.data.vectors import Chunk, save_chunk
from src.models.text_embed import Pool, TextEncoder, embed_texts

POOL_NOTES = {
    "mean": "mean over the caption's own tokens: padding and tokenizer-added special tokens "
    "(<bos>, [CLS], [SEP]) excluded",
    "last": "the caption's last own token (padding and tokenizer-added special tokens excluded)",
}


def extract_text_shard(
    enc: TextEncoder,
    records: list[ImageRecord],
    folders: dict[int, Path],
    *,
    pool: Pool,
    identity: dict[str, Any],
    manifest_fields: dict[str, Any],
    batch_size: int,
    save_every: int,
    skip_existing: bool,
    max_length: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Embed one shard's captions at every layer of `folders` ({layer: folder}). Returns counts."""
    ids = {lay: {**identity, "layer": lay} for lay in folders}
    reused = [
        prepare_folder(f, skip_existing=skip_existing, identity=ids[lay])
        for lay, f in folders.items()
    ]
    if all(reused):
        return {"reused": True, "n_images": len(records)}
    for lay, f in folders.items():
        write_json_atomic(f / OWNER_NAME, ids[lay])
    t0, skipped_all, n_ok, n_captions = time.perf_counter(), [], 0, 0
    ranges = chunk_ranges(len(records), save_every)
    bar = tqdm(
        total=len(records),
        desc=records[0].shard if records else "",
        unit="img",
        disable=not progress,
    )
    for index, r in enumerate(ranges):
        if all(chunk_path(f, "text", index).exists() for f in folders.values()):
            bar.update(len(r))
            continue
        keys, caps, skipped, notes = [], [], [], []
        for rec in (records[p] for p in r):
            lines = read_captions(rec.caption_path, notes)
            if lines:
                keys.append(rec.key)
                caps.append(lines)
            else:
                skipped.append(f"{rec.key}: no caption ({rec.path.with_suffix('.txt').name})")
        flat = [c for cs in caps for c in cs]
        emb = (
            embed_texts(
                enc, flat, list(folders), pool, batch_size=batch_size, max_length=max_length
            )
            if flat
            else {}
        )
        sizes = [len(cs) for cs in caps]
        for lay, f in folders.items():
            items = list(torch.split(emb[lay], sizes)) if flat else []
            save_chunk(
                f,
                "text",
                index,
                Chunk.from_items(keys, items, skipped, notes, dim=enc.base.config.hidden_size),
            )
        skipped_all += skipped
        n_ok, n_captions = n_ok + len(keys), n_captions + len(flat)
        bar.update(len(r))
    bar.close()
    seconds = round(time.perf_counter() - t0, 3)
    for lay, f in folders.items():
        write_manifest(
            f,
            **ids[lay],
            **manifest_fields,
            layer_index=enc.resolve_layer(lay),
            pool_note=POOL_NOTES[pool],
            kinds=["text"],
            chunks=len(ranges),
            save_every=save_every,
            n_images=len(records),
            images_computed=n_ok,
            n_captions_computed=n_captions,
            n_skipped=len(skipped_all),
            skipped=skipped_all,
            dim=enc.base.config.hidden_size,
            seconds=seconds,
        )
    return {
        "reused": False,
        "n_images": len(records),
        "n_ok": n_ok,
        "n_captions": n_captions,
        "skipped": len(skipped_all),
        "seconds": seconds,
    }
