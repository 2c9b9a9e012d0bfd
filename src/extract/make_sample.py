"""Stage: write the sample data (photos, scenes, charts, tables, documents), deterministically."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from src.data.io import read_manifest, write_manifest
from src.data.sample import PHOTO_SHARD, file_count, write_photos, write_scenes
from src.data.sample_types import TYPE_SHARDS, write_typed
from src.errors import UserError
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.make_sample",
        description="Write the sample images: the colour photos that scikit-image and "
        "scikit-learn ship (captions from sample/photo_captions) into <out>/photos, "
        "captioned synthetic scenes into <out>/synth_XX, and charts, tables and documents "
        "rendered with matplotlib, each captioned from its own content, into <out>/charts, "
        "<out>/tables, <out>/documents. Every image has a <stem>.json label with its "
        "data_type. Same arguments, same bytes; existing files are kept; "
        "<out>/manifest.json, written last, records the arguments, and a rerun with the same "
        "ones does nothing.",
    )
    p.add_argument("--out", type=Path, default=Path("data/sample"))
    p.add_argument("--n_scenes", type=int, default=2000)
    p.add_argument("--shards", type=int, default=4, help="scene shards (synth_00, ...)")
    p.add_argument("--size", type=int, default=224, help="scene side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes rendering the scenes (default: the cores, at most 8; same bytes)",
    )
    p.add_argument("--no_photos", action="store_true")
    p.add_argument("--no_scenes", action="store_true")
    p.add_argument(
        "--n_per_type",
        type=int,
        default=50,
        help="charts, tables and documents each (0: none); --n_charts etc. override one type",
    )
    for data_type, shard in TYPE_SHARDS.items():
        p.add_argument(f"--n_{shard}", type=int, help=f"{data_type} images (default --n_per_type)")
    return p


def type_counts(args: argparse.Namespace) -> dict[str, int]:
    """How many charts, tables and documents: each type's own flag, else --n_per_type."""
    counts = {t: getattr(args, f"n_{shard}") for t, shard in TYPE_SHARDS.items()}
    return {t: args.n_per_type if n is None else n for t, n in counts.items()}


def sample_record(args: argparse.Namespace) -> dict:
    """What a finished sample folder's manifest records; equal records mean equal bytes."""
    keys = ("n_scenes", "shards", "size", "seed", "no_photos", "no_scenes")
    typed = {f"n_{TYPE_SHARDS[t]}": n for t, n in type_counts(args).items()}
    return {**{k: getattr(args, k) for k in keys}, **typed}


def is_sample_complete(args: argparse.Namespace) -> bool:
    """The folder holds a finished sample made with these arguments."""
    return (read_manifest(args.out) or {}).get("sample") == sample_record(args)


def run(args: argparse.Namespace) -> int:
    typed = type_counts(args)
    if args.n_scenes < 0 or args.shards < 1 or args.size < 32 or min(typed.values()) < 0:
        raise UserError("need --n_scenes, --n_per_type, --n_charts, ... >= 0, --shards >= 1, "
                        "--size >= 32")  # fmt: skip
    t0 = time.perf_counter()
    if not args.no_photos:
        write_photos(args.out)
    if not args.no_scenes and args.n_scenes:
        write_scenes(args.out, args.n_scenes, args.shards, args.size, args.seed, args.workers)
    for data_type, n in typed.items():
        write_typed(args.out, data_type, n, size=args.size, seed=args.seed)
    folders = sorted(p for p in args.out.iterdir() if p.is_dir()) if args.out.is_dir() else []
    counts = {p.name: file_count(p) for p in folders}
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"sample data in {args.out}: {shown} images ({time.perf_counter() - t0:.1f}s)")
    if not args.no_photos and not counts.get(PHOTO_SHARD):
        print("warning: no offline photo could be loaded", file=sys.stderr)
    if args.out.is_dir():
        os.sync()  # the files were written without an fsync each (write_if_missing)
        write_manifest(args.out, stage="make_sample", sample=sample_record(args), counts=counts)
    return 0


STAGE = Stage(
    name="make_sample",
    module=__name__,
    parser=get_args_parser,
    run=run,
    outputs=lambda a: [a.out],
    done=is_sample_complete,
    skip_flag=False,  # same arguments, same bytes: a finished folder is never redone
    on_skip=lambda a: print(f"sample data in {a.out}: complete (manifest.json), nothing to do"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
