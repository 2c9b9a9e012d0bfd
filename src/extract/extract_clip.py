"""Stage: reference embeddings per image (a hub image encoder by id, or offline references)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from src.data.extraction import check_identity, extract_shard
from src.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, list_images, select_shards
from src.data.io import is_complete, portable, read_manifest
from src.data.paths import reference_shard_dir
from src.models.reference import OFFLINE_REFERENCES, load_reference
from src.runtime import add_runtime_args, auto_workers, csv_list, resolve_device, resolve_dtype
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.extract_clip",
        description=(
            "Reference embeddings, one vector per image, into "
            "<out_dir>/<shard>/ref_vectors_<i>.pt plus manifest.json. --model_id takes a CLIP, "
            "SigLIP, DINOv2, InternViT (--trust_remote_code) or PaliGemma hub id or local path "
            "(one --dtype for all), or an offline reference: "
            f"{', '.join(OFFLINE_REFERENCES)} (minilm embeds the caption, not the pixels)."
        ),
    )
    p.add_argument("--root", type=Path, required=True, help="image root: <root>/<shard>/<stem>.jpg")
    p.add_argument("--out_dir", type=Path, required=True, help="e.g. data/clip_ref/<name>")
    p.add_argument("--model_id", required=True, help="hub id, local path or offline name")
    p.add_argument("--revision", help="hub revision")
    p.add_argument(
        "--pool",
        choices=["cls", "mean"],
        default="cls",
        help="cls: the model's own image embedding (CLIP: projected CLS; SigLIP: its "
        "attention-pooling head; DINOv2, InternViT: CLS; PaliGemma's tower has none: the mean "
        "of patch tokens, recorded as such); mean: mean of last-layer patch tokens",
    )
    p.add_argument("--shards", type=csv_list, help="only these shards (comma-separated)")
    p.add_argument(
        "--shard_index", type=int, help="only the i-th shard in sorted order (job-array task)"
    )
    p.add_argument("--max_images", type=int, help="only the first N images of each shard")
    add_runtime_args(p)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument(
        "--num_workers",
        type=int,
        help="DataLoader decode workers (default: the cores torch's threads leave free on CPU, "
        "up to 8 on GPU)",
    )
    p.add_argument("--save_every", type=int, default=400, help="images per chunk file")
    p.add_argument("--skip_existing", action="store_true", help="resume; keep finished work")
    p.add_argument("--min_image_side", type=int, default=DEFAULT_MIN_SIDE)
    p.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run modelling code from the checkpoint (InternViT needs it; read the code first)",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def shards_of(args: argparse.Namespace) -> list[str]:
    if args.shards and args.shard_index is None:
        return list(args.shards)  # a job-array task: no listing
    return select_shards(args.root, args.shards, args.shard_index)


def identity(args: argparse.Namespace) -> dict:
    return {"reference": portable(args.model_id), "revision": args.revision, "pool": args.pool}


def done(args: argparse.Namespace) -> bool:
    folders = [reference_shard_dir(args.out_dir, s) for s in shards_of(args)]
    if not all(is_complete(f) for f in folders):
        return False
    for f in folders:
        check_identity(f, read_manifest(f) or {}, identity(args))
    return True


def run(args: argparse.Namespace) -> int:
    shards = select_shards(args.root, args.shards, args.shard_index)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    ref = load_reference(
        args.model_id,
        device=device,
        dtype=dtype,
        pool=args.pool,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"[{args.model_id}] loaded in {time.perf_counter() - t0:.1f}s")

    def encode(inputs: dict, items: list) -> dict:
        return {"ref": list(ref.encode(inputs, items).unsqueeze(1).unbind(0))}  # (1, D) each

    workers = auto_workers(device) if args.num_workers is None else args.num_workers
    for shard in shards:
        with torch.inference_mode():
            r = extract_shard(
                list_images(args.root, shard)[: args.max_images],
                reference_shard_dir(args.out_dir, shard),
                encode=encode, preprocess=ref.preprocessor, kinds=("ref",),
                batch_size=args.batch_size, num_workers=workers, save_every=args.save_every,
                save_dtype=torch.float32, skip_existing=args.skip_existing,
                identity=identity(args),
                manifest_fields={"stage": "extract_clip", "reference_info": ref.describe(),
                                 "image_root": args.root, "args": vars(args)},
                loader_kwargs={"min_side": args.min_image_side,
                               "max_pixels": args.max_image_pixels},
                progress=not args.no_progress,
            )  # fmt: skip
        how = "reused" if r.reused else f"{r.seconds:.1f}s"
        print(f"  {shard}: {r.n_ok}/{r.n_images} embedded ({r.shapes['ref']['dim']}-d), "
              f"{len(r.skipped)} skipped ({how})")  # fmt: skip
    return 0


STAGE = Stage(
    name="extract_clip",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root],
    outputs=lambda a: [a.out_dir],
    done=done,
    shards=lambda a: [] if a.shard_index is not None else shards_of(a),
    on_skip=lambda a: print(f"[{a.model_id}] every shard already complete in {a.out_dir}"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
