"""Stage: text embeddings of each image's own caption(s) from an LLM or a sentence encoder, at
any layers, pooled (mean without special tokens, or last token), in the vector layout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.data.extraction import check_identity
from src.data.images import list_images, select_shards
from src.data.io import is_complete, portable, read_manifest
from src.data.paths import reference_shard_dir, text_layer_dir
from src.runtime import add_runtime_args, csv_list, resolve_device, resolve_dtype
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    from src.models.text_embed import OFFLINE_TEXT, SEED_LLMS

    p = argparse.ArgumentParser(
        prog="python -m src.extract.extract_text",
        description="Caption embeddings per image (one row per caption line) into "
        "<out_dir>/<pool>_L<layer>/<shard>/text_vectors_<i>.pt + manifest.json. --model: an "
        f"offline name ({', '.join(OFFLINE_TEXT)}), a seed A name "
        f"({', '.join(f'{k}={v}' for k, v in SEED_LLMS.items())}), or a hub id / local path.",
    )
    p.add_argument("--root", type=Path, required=True, help="image root with <stem>.txt captions")
    p.add_argument("--out_dir", type=Path, required=True, help="e.g. data/text/<model>")
    p.add_argument("--model", required=True, help="text model name, hub id or local path")
    p.add_argument("--revision", help="hub revision")
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-1],
        help="hidden-state indices (0 = embeddings, -1 = last layer)",
    )
    p.add_argument(
        "--pool",
        choices=["mean", "last"],
        default="mean",
        help="mean over the caption's own tokens (BOS / special tokens excluded), "
        "or its last token",
    )
    p.add_argument("--shards", type=csv_list, help="only these shards (comma-separated)")
    p.add_argument("--shard_index", type=int, help="only the i-th shard (job-array task)")
    p.add_argument("--max_images", type=int, help="only the first N images of each shard")
    add_runtime_args(p)
    p.add_argument("--batch_size", type=int, default=32, help="captions per forward")
    p.add_argument("--max_length", type=int, default=256, help="tokens kept per caption")
    p.add_argument("--save_every", type=int, default=400, help="images per chunk file")
    p.add_argument("--skip_existing", action="store_true", help="resume; keep finished work")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    return p


def shards_of(args: argparse.Namespace) -> list[str]:
    if args.shards and args.shard_index is None:
        return list(args.shards)
    return select_shards(args.root, args.shards, args.shard_index)


def identity(args: argparse.Namespace) -> dict:
    from src.models.text_embed import model_id_of

    return {
        "text_model": portable(model_id_of(args.model)),
        "revision": args.revision,
        "pool": args.pool,
        "max_images": args.max_images,
    }


def folders(args: argparse.Namespace, shard: str) -> dict[int, Path]:
    return {
        lay: reference_shard_dir(text_layer_dir(args.out_dir, args.pool, lay), shard)
        for lay in args.layers
    }


def done(args: argparse.Namespace) -> bool:
    found = [(lay, f) for s in shards_of(args) for lay, f in folders(args, s).items()]
    if not all(is_complete(f) for _, f in found):
        return False
    for lay, f in found:
        check_identity(f, read_manifest(f) or {}, {**identity(args), "layer": lay})
    return True


def run(args: argparse.Namespace) -> int:
    from src.data.text_extraction import extract_text_shard
    from src.models.text_embed import load_text_encoder

    shards = select_shards(args.root, args.shards, args.shard_index)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    enc = load_text_encoder(
        args.model,
        device,
        resolve_dtype(args.dtype, device),
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"[{args.model}] loaded in {time.perf_counter() - t0:.1f}s ({enc.n_layers} layers)")
    for shard in shards:
        r = extract_text_shard(
            enc,
            list_images(args.root, shard)[: args.max_images],
            folders(args, shard),
            pool=args.pool,
            identity=identity(args),
            batch_size=args.batch_size,
            manifest_fields={
                "stage": "extract_text",
                "text_info": enc.describe(),
                "image_root": args.root,
                "args": vars(args),
            },
            save_every=args.save_every,
            skip_existing=args.skip_existing,
            max_length=args.max_length,
            progress=not args.no_progress,
        )
        how = "reused" if r["reused"] else f"{r['n_captions']} captions, {r['seconds']:.1f}s"
        print(f"  {shard}: {r['n_images']} images ({how})")
    print(f"  text embeddings in {args.out_dir} (layers {args.layers}, pool {args.pool})")
    return 0


STAGE = Stage(
    name="extract_text",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root],
    outputs=lambda a: [text_layer_dir(a.out_dir, a.pool, lay) for lay in a.layers],
    done=done,
    shards=lambda a: [] if a.shard_index is not None else shards_of(a),
    on_skip=lambda a: print(f"[{a.model}] every shard already complete in {a.out_dir}"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
