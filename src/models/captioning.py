"""Captions from stored (and modified) E_post, shard by shard: the loop the caption stages share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from src.data.images import list_images, load_image
from src.data.vectors import iter_chunks
from src.errors import UserError
from src.models.base import VLMAdapter

# variant(keys, stored E_post per image, model inputs) -> E_post to caption from, per image
Variant = Callable[[list[str], list[torch.Tensor], dict], list[torch.Tensor]]


def iter_batches(
    shard_dir: Path, batch_size: int, limit: int | None = None
) -> Iterator[tuple[list[str], list[torch.Tensor]]]:
    """(keys, E_post per image) in shard order, batch_size at a time, the first `limit` images."""
    seen = 0
    for _, chunk in iter_chunks(shard_dir, "post"):
        items = chunk.items()
        for s in range(0, len(items), batch_size):
            if limit is not None and seen >= limit:
                return
            take = len(items[s : s + batch_size])
            if limit is not None:
                take = min(take, limit - seen)
            yield chunk.keys[s : s + take], items[s : s + take]
            seen += take


def caption_shard(
    adapter: VLMAdapter,
    shard_dir: Path,
    image_root: Path,
    variants: dict[str, Variant],
    *,
    prompt: str,
    max_new_tokens: int,
    batch_size: int,
    limit: int | None = None,
    amp: bool = False,
    progress: bool = True,
) -> list[dict]:
    """One row per image: shard, key, reference captions, and caption_<variant> for each variant.

    The images are re-read because the HF models' prompts depend on them (token counts, crops);
    the E_post they caption from is the stored one, or a variant's modification of it.
    """
    shard = shard_dir.name
    records = {r.key: r for r in list_images(image_root, shard)}
    autocast = (
        torch.autocast(adapter.device.type, dtype=torch.bfloat16)
        if amp and adapter.device.type == "cuda"
        else nullcontext()
    )
    rows = []
    bar = tqdm(desc=f"captions {shard}", unit="img", disable=not progress)
    for keys, posts in iter_batches(shard_dir, batch_size, limit):
        missing = [k for k in keys if k not in records]
        if missing:
            raise UserError(
                f"images {missing[:3]} of {shard_dir} are not in {image_root}/{shard}: point "
                "--image_dir at the images the vectors were made from"
            )
        loaded = [load_image(records[k]) for k in keys]
        bad = [(k, it.error) for k, it in zip(keys, loaded, strict=True) if it.image is None]
        if bad:
            raise UserError(f"{image_root}/{shard}: cannot read {bad[0][0]} ({bad[0][1]})")
        inputs = adapter.preprocessor([it.image for it in loaded], prompt)
        with torch.inference_mode(), autocast:
            modified = {name: variant(keys, posts, inputs) for name, variant in variants.items()}
            if adapter.generates_from_post_alone:
                # Every variant in one batch: a decoding step of 64 rows costs far less than four
                # of 16 (bench/bench_generation.py: 1.35x for four variants), and the captions
                # came out the same as the committed sample's (bench_generation --compare).
                texts = adapter.generate(
                    inputs, [p for v in modified.values() for p in v], max_new_tokens=max_new_tokens
                )
                out = {name: texts[i * len(keys) : (i + 1) * len(keys)]
                       for i, name in enumerate(modified)}  # fmt: skip
            else:
                out = {name: adapter.generate(inputs, post, max_new_tokens=max_new_tokens)
                       for name, post in modified.items()}  # fmt: skip
        for i, (k, it) in enumerate(zip(keys, loaded, strict=True)):
            row = {"shard": shard, "key": k, "reference": " | ".join(it.captions)}
            row.update({f"caption_{name}": texts[i] for name, texts in out.items()})
            rows.append(row)
        bar.update(len(keys))
    bar.close()
    return rows


def stored(keys: list[str], posts: list[torch.Tensor], inputs: dict) -> list[torch.Tensor]:
    """The E_post the model made at extraction time."""
    return posts
