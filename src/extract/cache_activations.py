"""Stage: the LLM's residual stream at hook_resid_post of chosen layers, for the image tokens,
the prompt's text tokens after them, and a text-only control (the image replaced by its caption).

Per shard: <out_dir>/<model>/<shard>/L<layer>_<i>.pt (fp16, src/sae/cache.py) and a manifest,
chunk by chunk (memory holds one chunk), resumable with --skip_existing. Token sets:
image, text (the image sequence), control (the caption where the image was), control_text
(the prompt after it). The control never contains the answer beyond that caption.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.data.images import select_shards
from src.data.io import is_complete, write_manifest
from src.data.paths import activation_dir
from src.models import MODEL_NAMES
from src.models.base import DEFAULT_PROMPT
from src.runtime import add_runtime_args, csv_list
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.cache_activations",
        description="Cache hook_resid_post activations of image tokens, prompt tokens and a "
        "caption-for-image text control, per layer (fp16 shards + manifest).",
    )
    p.add_argument("--image_dir", type=Path, required=True, help="image root (with captions)")
    p.add_argument("--model", choices=MODEL_NAMES, default="mini")
    p.add_argument("--vlm_id", help="hub id or local path (default: the adapter's default)")
    p.add_argument(
        "--layers",
        type=lambda s: [int(x) for x in csv_list(s)],
        required=True,
        help="decoder blocks, comma-separated (0-based)",
    )
    p.add_argument("--out_dir", type=Path, default=Path("data/activations"))
    p.add_argument("--shards", type=csv_list, help="image shards (default: all)")
    p.add_argument("--limit", type=int, help="images per shard (default: all)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--save_every", type=int, default=64, help="images per chunk file")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def _folder(a: argparse.Namespace) -> Path:
    return activation_dir(a.out_dir, a.model)


def run(args: argparse.Namespace) -> int:
    from src.sae.runs import cache_shard, load_named_adapter

    adapter = load_named_adapter(args)
    for shard in select_shards(args.image_dir, args.shards):
        folder = _folder(args) / shard
        if args.skip_existing and is_complete(folder):
            print(f"[cache_activations] {shard}: complete")
            continue
        t0 = time.perf_counter()
        stats = cache_shard(adapter, args, shard, folder)
        write_manifest(
            folder,
            stage="cache_activations",
            model=args.model,
            **{k: v for k, v in adapter.describe().items() if k != "adapter"},
            hook="hook_resid_post (decoder block output = hidden_states[l + 1])",
            shard=shard,
            layers=args.layers,
            token_sets=list(stats["sets"]),
            dtype_saved="float16",
            prompt=args.prompt,
            args=vars(args),
            seconds=round(time.perf_counter() - t0, 2),
            **{k: v for k, v in stats.items() if k != "sets"},
        )
        print(f"[cache_activations] {shard}: {stats['n_images']} images, {stats['tokens']}")
    return 0


STAGE = Stage(
    name="cache_activations",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.image_dir],
    outputs=lambda a: [_folder(a) / s for s in (a.shards or [])] or [_folder(a)],
    done=lambda a: bool(a.shards) and all(is_complete(_folder(a) / s) for s in a.shards),
    description="residual-stream activations (image, text, caption control) per layer",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
