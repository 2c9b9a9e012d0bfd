"""Stage: write the sample data (offline photos + synthetic scenes), deterministically."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.data.io import read_manifest, write_manifest
from src.data.sample import PHOTO_SHARD, file_count, write_photos, write_scenes
from src.errors import UserError
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.make_sample",
        description="Write the sample images: the colour photos that scikit-image and "
        "scikit-learn ship (captions from sample/photo_captions) into <out>/photos, and "
        "captioned synthetic scenes (with <stem>.json labels) into <out>/synth_XX. Same "
        "arguments, same bytes; existing files are kept; <out>/manifest.json, written last, "
        "records the arguments, and a rerun with the same ones does nothing.",
    )
    p.add_argument("--out", type=Path, default=Path("data/sample"))
    p.add_argument("--n_scenes", type=int, default=2000)
    p.add_argument("--shards", type=int, default=4, help="scene shards (synth_00, ...)")
    p.add_argument("--size", type=int, default=224, help="scene side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_photos", action="store_true")
    p.add_argument("--no_scenes", action="store_true")
    return p


def sample_record(args: argparse.Namespace) -> dict:
    """What a finished sample folder's manifest records; equal records mean equal bytes."""
    keys = ("n_scenes", "shards", "size", "seed", "no_photos", "no_scenes")
    return {k: getattr(args, k) for k in keys}


def is_sample_complete(args: argparse.Namespace) -> bool:
    """The folder holds a finished sample made with these arguments."""
    return (read_manifest(args.out) or {}).get("sample") == sample_record(args)


def run(args: argparse.Namespace) -> int:
    if args.n_scenes < 0 or args.shards < 1 or args.size < 32:
        raise UserError("need --n_scenes >= 0, --shards >= 1, --size >= 32")
    t0 = time.perf_counter()
    if not args.no_photos:
        write_photos(args.out)
    if not args.no_scenes and args.n_scenes:
        write_scenes(args.out, args.n_scenes, args.shards, args.size, args.seed)
    folders = sorted(p for p in args.out.iterdir() if p.is_dir()) if args.out.is_dir() else []
    counts = {p.name: file_count(p) for p in folders}
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"sample data in {args.out}: {shown} images ({time.perf_counter() - t0:.1f}s)")
    if not args.no_photos and not counts.get(PHOTO_SHARD):
        print("warning: no offline photo could be loaded", file=sys.stderr)
    if args.out.is_dir():
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
