"""Stage: per-image E_pre (connector input) and E_post (connector output) for each VLM, by shard."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from src.data.extraction import ShardResult, check_identity, extract_shard
from src.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, list_images, select_shards
from src.data.io import is_complete, read_manifest
from src.data.paths import vector_shard_dir
from src.models import MODEL_NAMES, adapter_class, load_adapter
from src.models.base import VLMAdapter
from src.runtime import (
    DTYPES,
    add_runtime_args,
    auto_workers,
    csv_list,
    parse_assignments,
    resolve_device,
    resolve_dtype,
)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.extract.extract_vectors",
        description=(
            "Extract E_pre (what the connector receives) and E_post (what it hands to the LLM) "
            "for every image of every shard, per model, into "
            "<out_dir>/<model>/<shard>/{pre,post}_vectors_<i>.pt plus manifest.json."
        ),
    )
    p.add_argument("--root", type=Path, required=True, help="image root: <root>/<shard>/<stem>.jpg")
    p.add_argument("--out_dir", type=Path, default=Path("data/vector"), help="vector root")
    p.add_argument(
        "--models",
        type=csv_list,
        default=["mini"],
        help=f"'all' or comma-separated names from: {', '.join(MODEL_NAMES)} (default: mini)",
    )
    p.add_argument(
        "--model_id",
        action="append",
        metavar="NAME=ID",
        help="hub id or local path for a model (repeatable), e.g. llava=/models/llava-1.5-7b-hf; "
        "for mini, a connector folder",
    )
    p.add_argument("--revision", action="append", metavar="NAME=REV", help="hub revision per model")
    p.add_argument("--shards", type=csv_list, help="only these shards (comma-separated)")
    p.add_argument(
        "--shard_index", type=int, help="only the i-th shard in sorted order (job-array task)"
    )
    p.add_argument("--max_images", type=int, help="only the first N images of each shard")
    add_runtime_args(p)
    p.add_argument(
        "--save_dtype",
        default="same",
        choices=["same", *DTYPES],
        help="dtype of the stored vectors; 'same' keeps the compute dtype",
    )
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument(
        "--num_workers",
        type=int,
        help="DataLoader decode workers (default: the cores torch's threads leave free on CPU, "
        "up to 8 on GPU)",
    )
    p.add_argument("--save_every", type=int, default=400, help="images per chunk file")
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="keep finished shards and chunks; compute only what is missing (resume)",
    )
    p.add_argument("--min_image_side", type=int, default=DEFAULT_MIN_SIDE)
    p.add_argument("--max_image_pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code from the hub")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def extract_model(
    adapter: VLMAdapter, name: str, shards: list[str], args: argparse.Namespace
) -> list[ShardResult]:
    def encode(inputs: dict, _items: list) -> dict:
        out = adapter.encode(inputs)
        return {"pre": out.pre, "post": out.post}

    save_dtype = None if args.save_dtype == "same" else DTYPES[args.save_dtype]
    identity = {"model": name, "model_id": adapter.model_id, "revision": adapter.revision}
    workers = auto_workers(adapter.device) if args.num_workers is None else args.num_workers
    results = []
    for shard in shards:
        records = list_images(args.root, shard)[: args.max_images]
        results.append(
            extract_shard(
                records,
                vector_shard_dir(args.out_dir, name, shard),
                encode=encode,
                preprocess=adapter.preprocessor,
                kinds=("pre", "post"),
                batch_size=args.batch_size,
                num_workers=workers,
                save_every=args.save_every,
                save_dtype=save_dtype,
                skip_existing=args.skip_existing,
                identity=identity,
                manifest_fields={
                    "stage": "extract_vectors",
                    "model_info": adapter.describe(),
                    "image_root": str(args.root),
                    "pooling": "none (all tokens stored)",
                    "args": vars(args),
                },
                loader_kwargs={
                    "min_side": args.min_image_side,
                    "max_pixels": args.max_image_pixels,
                },
                progress=not args.no_progress,
            )
        )
    return results


def reused_result(out_dir: Path, name: str, shard: str) -> ShardResult:
    folder = vector_shard_dir(out_dir, name, shard)
    m = read_manifest(folder) or {}
    return ShardResult(
        shard=shard,
        folder=folder,
        n_images=m.get("n_images", 0),
        n_ok=m.get("n_ok", 0),
        skipped=m.get("skipped", []),
        notes=m.get("notes", []),
        reused=True,
        shapes=m.get("shapes", {}),
    )


def print_summary(name: str, results: list[ShardResult], load_s: float) -> None:
    n_ok = sum(r.n_ok for r in results)
    n_img = sum(r.n_images for r in results)
    secs = sum(r.seconds for r in results)
    print(f"[{name}] {len(results)} shards, {n_ok}/{n_img} images encoded, load {load_s:.1f}s")
    for r in results:
        pre, post = r.shapes.get("pre", {}), r.shapes.get("post", {})
        how = "reused" if r.reused else f"{r.seconds:.1f}s"
        print(
            f"  {r.shard}: {r.n_ok} ok, {len(r.skipped)} skipped, {len(r.notes)} notes ({how}); "
            f"E_pre {pre.get('tokens_min')}-{pre.get('tokens_max')} tok x {pre.get('dim')}, "
            f"E_post {post.get('tokens_min')}-{post.get('tokens_max')} tok x {post.get('dim')}"
        )
        for s in r.skipped[:5]:
            print(f"    skipped {s}")
    if secs > 0:
        computed = sum(r.n_images for r in results if not r.reused)
        print(f"  {computed / secs:.1f} images/s over the shards computed now")


def run_model(
    name: str,
    shards: list[str],
    model_id: str | None,
    revision: str | None,
    device: torch.device,
    dtype: torch.dtype,
    args: argparse.Namespace,
) -> None:
    folders = [vector_shard_dir(args.out_dir, name, s) for s in shards]
    if args.skip_existing and all(is_complete(f) for f in folders):
        # Nothing to compute: report from the manifests without loading the model.
        expected = {"model": name, "model_id": model_id or adapter_class(name).default_model_id}
        for f in folders:
            check_identity(f, read_manifest(f) or {}, expected)
        print_summary(name, [reused_result(args.out_dir, name, s) for s in shards], 0.0)
        return
    t0 = time.perf_counter()
    adapter = load_adapter(
        name,
        model_id,
        device=device,
        dtype=dtype,
        revision=revision,
        trust_remote_code=args.trust_remote_code,
    )
    load_s = time.perf_counter() - t0
    with torch.inference_mode():
        results = extract_model(adapter, name, shards, args)
    print_summary(name, results, load_s)
    del adapter
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        names = list(MODEL_NAMES) if args.models == ["all"] else args.models
        unknown = sorted(set(names) - set(MODEL_NAMES))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; registered: {', '.join(MODEL_NAMES)}")
        ids = parse_assignments(args.model_id, "--model_id")
        revisions = parse_assignments(args.revision, "--revision")
        shards = select_shards(args.root, args.shards, args.shard_index)
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for name in names:
            run_model(name, shards, ids.get(name), revisions.get(name), device, dtype, args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
