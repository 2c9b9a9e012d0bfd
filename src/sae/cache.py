"""Residual-stream activations in and out: fp16 chunk files per layer (the vector layout's
flat rows + lengths), and the one iterator the measuring stages read, from the cache or streamed
from a live forward (nothing written: at cluster scale a full cache does not fit).

<out>/<model>/<shard>/L<layer>_<i>.pt holds, for chunk i of the shard's images:
    keys, captions: list[str] (the caption the control used)
    layer: int
    sets: {token set: {"vectors": (sum_i n_i, D) fp16, "lengths": (n,) int64}}
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from src.data.images import select_shards
from src.data.io import load_torch, read_manifest, save_torch_atomic
from src.data.paths import activation_chunk, activation_dir
from src.errors import InputMissing, UserError
from src.models.base import DEFAULT_PROMPT, VLMAdapter
from src.runtime import csv_list
from src.sae.residual import Acts, image_and_control, image_batches

TOKEN_SETS = ("image", "text", "control", "control_text")


def save_layer_chunk(
    shard_dir: Path,
    layer: int,
    index: int,
    keys: list[str],
    captions: list[str],
    sets: dict[str, list[torch.Tensor]],
) -> Path:
    packed = {
        name: {
            "vectors": torch.cat(rows).to(torch.float16).contiguous(),
            "lengths": torch.tensor([r.shape[0] for r in rows], dtype=torch.int64),
        }
        for name, rows in sets.items()
    }
    obj = {"keys": list(keys), "captions": list(captions), "layer": layer, "sets": packed}
    return save_torch_atomic(activation_chunk(shard_dir, layer, index), obj)


def load_layer_chunk(path: Path) -> tuple[list[str], list[str], dict[str, list[torch.Tensor]]]:
    d = load_torch(path)
    if not {"keys", "captions", "sets"} <= set(d):
        raise UserError(f"{path}: not an activation chunk")
    sets = {
        name: list(torch.split(v["vectors"].float(), v["lengths"].tolist()))
        for name, v in d["sets"].items()
    }
    return list(d["keys"]), list(d["captions"]), sets


def chunk_done(shard_dir: Path, layers: list[int], index: int) -> bool:
    return all(activation_chunk(shard_dir, layer, index).exists() for layer in layers)


def iter_cached(shard_dir: Path, layers: list[int]) -> Iterator[tuple[list[str], list[str], Acts]]:
    """(keys, captions, acts) per chunk, one chunk in memory at a time."""
    manifest = read_manifest(shard_dir)
    if manifest is None:
        raise InputMissing(f"{shard_dir} has no manifest.json: cache_activations has not finished")
    missing = sorted(set(layers) - set(manifest["layers"]))
    if missing:
        raise UserError(f"{shard_dir} holds layers {manifest['layers']}, not {missing}")
    for index in range(manifest["chunks"]):
        acts: Acts = {}
        for layer in layers:
            keys, captions, acts[layer] = load_layer_chunk(
                activation_chunk(shard_dir, layer, index)
            )
        yield keys, captions, acts


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Where a measuring stage's activations come from: --acts_dir (a cache) or, without it,
    a live forward over --image_dir (streamed, nothing written)."""
    p.add_argument("--acts_dir", type=Path, help="cache_activations' folder for this model")
    p.add_argument("--image_dir", type=Path, help="image root (the live forward; NLL)")
    p.add_argument("--shards", type=csv_list, help="image shards (default: all)")
    p.add_argument("--limit", type=int, help="images per shard (default: all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--prompt", default=DEFAULT_PROMPT)


def add_measure_args(p: argparse.ArgumentParser, extra: Callable[[], None]) -> None:
    """The flags both measuring stages (sae_reconstruction, sae_semantic) take; `extra` adds the
    stage's own flags after the activation source."""
    from src.data.paths import sae_results_dir
    from src.models import MODEL_NAMES
    from src.runtime import add_runtime_args

    p.add_argument("--model", choices=MODEL_NAMES, default="mini")
    p.add_argument("--vlm_id", help="hub id or local path (default: the adapter's default)")
    p.add_argument(
        "--sae_dir", type=Path, help="folder of layers.<l> SAEs (default data/sae/<model>)"
    )
    p.add_argument("--layers", type=lambda s: [int(x) for x in csv_list(s)], required=True)
    add_source_args(p)
    extra()
    p.add_argument("--out_dir", type=Path, default=sae_results_dir(Path("results")))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)


def measured_sae_dir(a: argparse.Namespace) -> Path:
    """--sae_dir, else data/sae/<model>."""
    from src.data.paths import sae_dir

    return a.sae_dir or sae_dir(Path("data/sae"), a.model)


def source_shards(args: argparse.Namespace, model: str) -> list[str]:
    if args.acts_dir is not None:
        root = Path(args.acts_dir)
        found = (
            sorted(p.name for p in root.iterdir() if (p / "manifest.json").exists())
            if root.is_dir()
            else []
        )
        if not found:
            raise InputMissing(f"no finished activation shards under {root}")
        return [s for s in found if not args.shards or s in args.shards]
    if args.image_dir is None:
        raise UserError("give --acts_dir (a cache) or --image_dir (stream from the model)")
    return select_shards(args.image_dir, args.shards)


def activation_batches(
    args: argparse.Namespace, adapter: VLMAdapter | None, layers: list[int], shard: str
) -> Iterator[tuple[list[str], list[str], Acts]]:
    """(keys, captions, acts) of one shard: from the cache when --acts_dir is given, else from
    the adapter's forward, batch by batch."""
    if args.acts_dir is not None:
        yield from iter_cached(Path(args.acts_dir) / shard, layers)
        return
    if adapter is None:
        raise UserError("streaming activations needs the model (no --acts_dir given)")
    for b in image_batches(args.image_dir, shard, args.batch_size, args.limit):
        yield b.keys, b.captions, image_and_control(adapter, b, layers, args.prompt)


def cache_folder(out_dir: Path, model: str) -> Path:
    return activation_dir(out_dir, model)
