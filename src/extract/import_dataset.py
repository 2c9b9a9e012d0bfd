"""Stage: import an image-caption dataset (hub id or local files) into the image shard layout."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from src.data.dataset_import import (
    FORMATS,
    ImportOptions,
    Source,
    choose_columns,
    import_dataset,
    open_source,
)
from src.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from src.data.io import is_complete, portable, read_manifest
from src.errors import UserError
from src.runtime import csv_list
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.import_dataset",
        description="Import an image-caption dataset with Hugging Face datasets into "
        "<out>/shard_XXXXX/row_<index>.jpg + .txt (one reference caption per line), "
        "--shard_size rows per shard, each shard with its manifest (skipped rows with their "
        "reason), <out>/manifest.json last. Hub ids stream; local parquet, arrow, imagefolder "
        "and save_to_disk folders are read without loading them into memory. JPEG bytes are "
        "kept as they are; other images become JPEG (quality 95).",
    )
    p.add_argument("--dataset", required=True, help="hub id (org/name) or a local file / folder")
    p.add_argument("--out", type=Path, required=True, help="image root to write, e.g. data/coco")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="auto",
        help="auto: a local path by its content (state.json: save_to_disk; "
        "*.parquet; *.arrow; image files: imagefolder), anything else a hub id",
    )
    p.add_argument("--split", help="split (default train; a save_to_disk Dataset has none)")
    p.add_argument("--config", help="hub dataset configuration (subset) name")
    p.add_argument("--revision", help="hub revision: branch, tag or commit (recorded resolved)")
    p.add_argument("--image_column", help="default: the one Image column, else 'image', 'img'")
    p.add_argument(
        "--caption_column",
        type=csv_list,
        help="column(s), comma-separated; a cell may be a string, a list of strings "
        "(several references) or a dict such as COCO's {'raw': ...} (default: "
        "caption, captions, text, sentences, ... whichever exists)",
    )
    p.add_argument("--max_items", type=int, help="only the first N rows")
    p.add_argument("--shard_size", type=int, default=1000, help="rows per shard")
    p.add_argument(
        "--keep_uncaptioned",
        action="store_true",
        help="write images whose caption is missing or empty (noted), not skip them",
    )
    p.add_argument("--min_image_side", type=int, default=DEFAULT_MIN_SIDE)
    p.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument(
        "--num_workers",
        type=int,
        help="threads that decode and encode images (default: up to 8 cores)",
    )
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="resume: keep complete shards, seek past their rows, write the rest",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def record(args: argparse.Namespace) -> dict:
    """The arguments that decide the output; a finished --out with the same record is done."""
    keys = (
        "format",
        "split",
        "config",
        "revision",
        "image_column",
        "caption_column",
        "max_items",
        "shard_size",
        "keep_uncaptioned",
        "min_image_side",
        "max_image_pixels",
    )
    return {"dataset": portable(args.dataset), **{k: getattr(args, k) for k in keys}}


def done(args: argparse.Namespace) -> bool:
    """Finished with these arguments: the top manifest matches and every shard it lists is whole
    (delete one shard folder and a rerun redoes that one)."""
    found = read_manifest(args.out) or {}
    return found.get("record") == record(args) and all(
        is_complete(args.out / s) for s in found.get("shards", [])
    )


def inputs(args: argparse.Namespace) -> list[Path]:
    """A local dataset is an input (the launcher orders steps by it); a hub id is not."""
    local = Path(args.dataset).expanduser()
    return [local] if args.format != "hub" and local.exists() else []


def options(args: argparse.Namespace, source: Source) -> ImportOptions:
    image_col, caption_cols = choose_columns(source, args.image_column, args.caption_column)
    return ImportOptions(
        image_col,
        caption_cols,
        shard_size=args.shard_size,
        max_items=args.max_items,
        keep_uncaptioned=args.keep_uncaptioned,
        min_side=args.min_image_side,
        max_pixels=args.max_image_pixels,
    )


def run(args: argparse.Namespace) -> int:
    if args.shard_size < 1 or (args.max_items is not None and args.max_items < 1):
        raise UserError("need --shard_size >= 1 and --max_items >= 1")
    source = open_source(
        args.dataset, fmt=args.format, split=args.split, config=args.config, revision=args.revision
    )
    opts = options(args, source)
    ident = source.identity
    print(
        f"[import] {ident['dataset']} ({ident['format']}, split {ident['split']}"
        f"{', revision ' + ident['revision'] if ident['revision'] else ''}): image column "
        f"{opts.image_column!r}, captions from {', '.join(map(repr, opts.caption_columns))}",
        flush=True,
    )
    workers = min(8, os.cpu_count() or 1) if args.num_workers is None else args.num_workers
    r = import_dataset(
        source,
        args.out,
        opts,
        skip_existing=args.skip_existing,
        num_workers=workers,
        progress=not args.no_progress,
        record=record(args),
    )
    reused = sum(s.reused for s in r.shards)
    print(
        f"[import] {args.out}: {r.n_images} images from {r.n_rows} rows in {len(r.shards)} "
        f"shards ({reused} kept from an earlier run), {r.n_skipped} rows skipped "
        "(reasons in each shard's manifest.json)"
    )
    return 0


STAGE = Stage(
    name="import_dataset",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=inputs,
    outputs=lambda a: [a.out],
    done=done,
    resume_add=("--skip_existing",),  # a requeued (preempted) import keeps its finished shards
    on_skip=lambda a: print(f"[import] {a.out}: complete (manifest.json), nothing to do"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
