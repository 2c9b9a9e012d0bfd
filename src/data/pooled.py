"""Pooled frozen features of an image root, cached once in extract_clip's layout
(<cache>/<shard>/ref_vectors_<i>.pt + manifest.json), captions' text features, and the
train / validation / test split by image key. Shared by train_align and eval_probe.

An extract_clip output folder of the same tower is a valid cache (same identity, same files), so
the main job's references are reused instead of recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from src.data.extraction import check_identity, extract_shard
from src.data.images import list_images, read_captions
from src.data.io import is_complete, load_torch, portable, read_manifest, save_torch_atomic
from src.data.paths import reference_shard_dir
from src.data.vectors import iter_chunks
from src.recon.data import is_validation

Split = Literal["train", "val", "test"]


@dataclass
class Pooled:
    """One pooled vector per decoded image, in shard then file order."""

    shards: list[str]
    keys: list[str]  # '<shard>/<stem>': unique over the root
    paths: list[Path]
    features: torch.Tensor  # (N, D)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}
    source: dict[str, Any] = field(default_factory=dict)  # the cache folders' identity


def image_identity(tower: str, pool: str, revision: str | None = None) -> dict[str, Any]:
    """What extract_clip records for a reference folder (so its output is a valid cache)."""
    return {"reference": portable(tower), "revision": revision, "pool": pool}


def pooled_features(
    root: Path,
    shards: list[str],
    tower: str,
    cache: Path,
    *,
    pool: str = "cls",
    revision: str | None = None,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 32,
    progress: bool = True,
) -> Pooled:
    """Pooled features of every image of `shards` under `tower`, computed once into `cache`
    (loaded only when some shard is not cached). Undecodable images are listed in `skipped`
    with file and reason, never replaced."""
    ident = image_identity(tower, pool, revision)
    todo = [s for s in shards if not is_complete(reference_shard_dir(cache, s))]
    for s in shards:
        folder = reference_shard_dir(cache, s)
        if s not in todo:
            check_identity(folder, read_manifest(folder) or {}, ident)
    if todo:
        from src.models.reference import load_reference

        ref = load_reference(tower, device=device, dtype=dtype, pool=pool, revision=revision)

        def encode(inputs: dict, items: list) -> dict:
            return {"ref": list(ref.encode(inputs, items)[:, None].unbind(0))}  # (1, D) each

        for s in todo:
            with torch.inference_mode():
                extract_shard(
                    list_images(root, s), reference_shard_dir(cache, s),
                    encode=encode,
                    preprocess=ref.preprocessor, kinds=("ref",), batch_size=batch_size,
                    num_workers=0, save_every=1000, save_dtype=torch.float32,
                    skip_existing=True, identity=ident,
                    manifest_fields={"stage": "pooled features", "reference_info": ref.describe(),
                                     "image_root": root},
                    progress=progress,
                )  # fmt: skip
    out = Pooled(list(shards), [], [], torch.zeros(0), source={**ident, "cache": portable(cache)})
    rows = []
    for s in shards:
        by_stem = {r.key: r for r in list_images(root, s)}
        for _, chunk in iter_chunks(reference_shard_dir(cache, s), "ref"):
            for k, v in zip(chunk.keys, chunk.items(), strict=True):
                if k in by_stem:  # an image since removed from the root is left out
                    out.keys.append(f"{s}/{k}")
                    out.paths.append(by_stem[k].path)
                    rows.append(v.reshape(-1))
            for entry in chunk.skipped:
                stem, _, reason = entry.partition(": ")
                file = by_stem[stem].path if stem in by_stem else Path(s) / stem
                out.skipped.append({"file": portable(file), "reason": reason})
    out.features = torch.stack(rows) if rows else torch.zeros(0, 0)
    return out


def captions_of(pooled: Pooled) -> tuple[list[list[str]], list[dict[str, str]]]:
    """Each image's caption lines (<stem>.txt, one caption a line), and the images without any,
    reported as skipped (file, reason)."""
    caps, missing = [], []
    for p in pooled.paths:
        lines = read_captions(p.with_suffix(".txt")) if p.with_suffix(".txt").exists() else []
        caps.append(lines)
        if not lines:
            missing.append(
                {"file": portable(p), "reason": "no caption (<stem>.txt missing or empty)"}
            )
    return caps, missing


def text_features(
    texts: list[str],
    tower: str,
    cache: Path,
    *,
    device: torch.device,
    dtype: torch.dtype,
    reuse: Path | None = None,
) -> torch.Tensor:
    """(len(texts), D_t) text tower features, cached in one file keyed by tower and texts.
    reuse: another such file, read (never written) when it holds the same tower and texts."""
    for path in (p for p in (reuse, cache) if p is not None and p.exists()):
        saved = load_torch(path)
        if saved.get("tower") == tower and saved.get("texts") == texts:
            return saved["vectors"]
    from src.models.text_towers import load_text_tower

    vectors = load_text_tower(tower, device=device, dtype=dtype).embed(texts).float()
    save_torch_atomic(cache, {"tower": tower, "texts": texts, "vectors": vectors})
    return vectors


def split_of(key: str, val_fraction: float, test_fraction: float, seed: int = 0) -> Split:
    """Deterministic split by image key ('<shard>/<stem>'), whatever the order or chunking: the
    test share first, then the validation share of one hash (src.recon.data.is_validation)."""
    if is_validation(key, test_fraction, seed):
        return "test"
    if is_validation(key, test_fraction + val_fraction, seed):
        return "val"
    return "train"
