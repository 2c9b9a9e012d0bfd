"""The LLM's residual stream at hook_resid_post (the output of decoder block l, which HF returns
as hidden_states[l + 1]), read and replaced by forward hooks on the adapter's blocks.

Hooks rather than output_hidden_states: only the chosen layers are kept, and the last block's
entry in hidden_states has the final norm applied (transformers' decoders replace it), which is
not what an SAE at hook_resid_post of the last layer was trained on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from src.data.images import list_images, load_image
from src.metrics.text import token_nll
from src.models.base import LMSequences, VLMAdapter

# layer -> token set -> per image (n_i, D) rows
Acts = dict[int, dict[str, list[torch.Tensor]]]


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture_resid(blocks: torch.nn.ModuleList, layers: list[int]) -> Iterator[dict[int, Any]]:
    """{layer: (B, L, D) block output} filled by the forward run inside the block."""
    store: dict[int, Any] = {}

    def keep(layer: int) -> Callable:
        def hook(_m: torch.nn.Module, _a: tuple, out: Any) -> None:
            store[layer] = _hidden(out)

        return hook

    handles = [blocks[layer].register_forward_hook(keep(layer)) for layer in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def splice_resid(
    blocks: torch.nn.ModuleList,
    layer: int,
    positions: list[torch.Tensor],
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[None]:
    """Replace block `layer`'s output rows positions[b] of row b by fn(rows) (n_b, D) -> (n_b, D)
    during the block: the rest of the sequence and the other layers run as they are."""

    def hook(_m: torch.nn.Module, _a: tuple, out: Any) -> Any:
        h = _hidden(out).clone()
        for b, pos in enumerate(positions):
            pos = pos.to(h.device)
            h[b, pos] = fn(h[b, pos]).to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def gather(hidden: torch.Tensor, spans: list[torch.Tensor]) -> list[torch.Tensor]:
    """hidden (B, L, D), spans[b] (n_b,) -> [(n_b, D)] float32 on the CPU."""
    return [hidden[b, pos.to(hidden.device)].float().cpu() for b, pos in enumerate(spans)]


@torch.no_grad()
def residuals(
    adapter: VLMAdapter, seq: LMSequences, layers: list[int]
) -> tuple[Acts, torch.Tensor]:
    """The token sets of seq at each layer's hook_resid_post, and the logits (B, L, V)."""
    with capture_resid(adapter.lm_blocks(), layers) as store:
        logits = adapter.run_lm(seq)
    acts = {
        layer: {name: gather(store[layer], spans) for name, spans in seq.spans.items()}
        for layer in layers
    }
    return acts, logits


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean NLL of the labelled positions of each row: logits (B, L, V), labels (B, L) -> (B,).

    Per position as ComposedVLM.caption_loss computes it (token_nll)."""
    return token_nll(logits, labels).sum(1) / (labels != -100).sum(1)


@dataclass
class ImageBatch:
    keys: list[str]
    captions: list[str]  # each image's first reference caption
    images: list[Any]  # PIL images


def image_batches(
    root: Path, shard: str, batch_size: int, limit: int | None = None, skipped: list | None = None
) -> Iterator[ImageBatch]:
    """The first `limit` usable images of a shard (decodable, with a caption), in order."""
    batch = ImageBatch([], [], [])
    seen = 0
    for rec in list_images(root, shard):
        if limit is not None and seen >= limit:
            break
        it = load_image(rec)
        if it.image is None or not it.captions:
            if skipped is not None:
                skipped.append(f"{rec.key}: {it.error or 'no caption'}")
            continue
        batch.keys.append(rec.key)
        batch.captions.append(it.captions[0])
        batch.images.append(it.image)
        seen += 1
        if len(batch.keys) == batch_size:
            yield batch
            batch = ImageBatch([], [], [])
    if batch.keys:
        yield batch


def image_and_control(
    adapter: VLMAdapter, batch: ImageBatch, layers: list[int], prompt: str
) -> Acts:
    """Token sets image / text (the image sequence) and control / control_text (the same prompt
    with the image replaced by its caption) at each layer, per image."""
    inputs = adapter.preprocessor(batch.images, prompt)
    acts, _ = residuals(adapter, adapter.image_sequences(inputs), layers)
    ctrl, _ = residuals(adapter, adapter.control_sequences(batch.captions, prompt), layers)
    for layer in layers:
        acts[layer].update(ctrl[layer])
    return acts
