"""Stage: write reconstructed E_pre shards (the vector layout, kind 'pre') from E_post chunks."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from src.data.extraction import prepare_folder
from src.data.io import write_manifest
from src.data.paths import chunk_path, list_chunk_indices, shard_dirs, vector_shard_dir
from src.data.vectors import Chunk, load_chunk, save_chunk
from src.runtime import csv_list, resolve_device
from src.training.recon import STATS_NAME, NormStats, load_recon, reconstruct


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.export_recon",
        description="Reconstruct E_pre from every E_post chunk with a trained reconstructor; "
        "writes <out_base>/<embed_model>/<shard>/pre_vectors_<i>.pt plus manifest.json.",
    )
    p.add_argument("--embed_model", required=True)
    p.add_argument("--out_base", type=Path, default=Path("data/vector_recon"))
    p.add_argument(
        "--vec_root",
        type=Path,
        default=Path("data/vector"),
        help="where <embed_model>/<shard>/post_vectors_<i>.pt are",
    )
    p.add_argument(
        "--model_dir",
        type=Path,
        help="trained reconstructor folder (default data/recon/<embed_model>)",
    )
    p.add_argument("--shards", type=csv_list)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip_existing", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    model_dir = args.model_dir or Path("data/recon") / args.embed_model
    try:
        device = resolve_device(args.device)
        model, cfg = load_recon(model_dir, args.embed_model)
        stats = NormStats.load(model_dir / STATS_NAME)
        dirs = shard_dirs(args.vec_root / args.embed_model, args.shards)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model.to(device)
    identity = {"embed_model": args.embed_model, "reconstructor": str(model_dir)}
    for src_dir in dirs:
        out = vector_shard_dir(args.out_base, args.embed_model, src_dir.name)
        if prepare_folder(out, skip_existing=args.skip_existing, identity=identity):
            print(f"  {src_dir.name}: complete, skipped")
            continue
        t0, n = time.perf_counter(), 0
        indices = list_chunk_indices(src_dir, "post")
        for i in tqdm(indices, desc=src_dir.name, disable=args.no_progress):
            if args.skip_existing and chunk_path(out, "pre", i).exists():
                continue
            post = load_chunk(chunk_path(src_dir, "post", i))
            items = post.items()
            recon = []
            for s in range(0, len(items), args.batch_size):
                recon += reconstruct(model, stats, items[s : s + args.batch_size], device)
            save_chunk(
                out,
                "pre",
                i,
                Chunk.from_items(post.keys, recon, post.skipped, post.notes, dim=cfg.d_pre),
            )
            n += len(items)
        write_manifest(
            out,
            **identity,
            stage="export_recon",
            source=str(src_dir),
            config=asdict(cfg),
            chunks=len(indices),
            args=vars(args),
        )
        print(f"  {src_dir.name}: {n} images reconstructed ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
