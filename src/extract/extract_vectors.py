"""Stage: per-image E_pre (connector input) and E_post (connector output) for each VLM, by shard."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from src.data.extraction import ShardResult, check_identity, extract_shard
from src.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, list_images, select_shards
from src.data.io import is_complete, portable, read_manifest
from src.data.paths import vector_shard_dir
from src.errors import UserError
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
from src.stage import Stage


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
    identity = {
        "model": name,
        "model_id": portable(adapter.model_id),
        "revision": adapter.revision,
        "hook_point": adapter.hook_point,
    }
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
                    "image_root": args.root,
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


def model_names(args: argparse.Namespace) -> list[str]:
    names = list(MODEL_NAMES) if args.models == ["all"] else args.models
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown:
        known = ", ".join(MODEL_NAMES)
        raise UserError(f"--models: unknown model(s) {unknown}; registered: {known}")
    return names


def shards_of(args: argparse.Namespace) -> list[str]:
    """The shards this run covers: --shards as given (a job-array task, no listing), else the
    image root's (--shard_index picks one)."""
    if args.shards and args.shard_index is None:
        return list(args.shards)
    return select_shards(args.root, args.shards, args.shard_index)


def expected_identity(name: str, args: argparse.Namespace) -> dict:
    """What the manifests of finished shards must say for them to be reused."""
    ids = parse_assignments(args.model_id, "--model_id")
    revisions = parse_assignments(args.revision, "--revision")
    return {
        "model": name,
        "model_id": portable(ids.get(name) or adapter_class(name).default_model_id),
        "revision": revisions.get(name),
    }


def done(args: argparse.Namespace) -> bool:
    """Every (model, shard) folder complete, made by the model asked for (else UserError)."""
    shards = shards_of(args)
    for name in model_names(args):
        expected = expected_identity(name, args)
        for s in shards:
            folder = vector_shard_dir(args.out_dir, name, s)
            if not is_complete(folder):
                return False
            check_identity(folder, read_manifest(folder) or {}, expected)
    return True


def report_reused(args: argparse.Namespace) -> None:
    for name in model_names(args):
        print_summary(name, [reused_result(args.out_dir, name, s) for s in shards_of(args)], 0.0)


def run(args: argparse.Namespace) -> int:
    shards = select_shards(args.root, args.shards, args.shard_index)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    for name in model_names(args):
        identity = expected_identity(name, args)
        folders = [vector_shard_dir(args.out_dir, name, s) for s in shards]
        if args.skip_existing and all(is_complete(f) for f in folders):
            for f in folders:  # nothing to compute: check and report without loading the model
                check_identity(f, read_manifest(f) or {}, identity)
            print_summary(name, [reused_result(args.out_dir, name, s) for s in shards], 0.0)
            continue
        t0 = time.perf_counter()
        adapter = load_adapter(name, parse_assignments(args.model_id, "--model_id").get(name),
                               device=device, dtype=dtype, revision=identity["revision"],
                               trust_remote_code=args.trust_remote_code)  # fmt: skip
        load_s = time.perf_counter() - t0
        with torch.inference_mode():
            results = extract_model(adapter, name, shards, args)
        print_summary(name, results, load_s)
        del adapter
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 0


def _array_shards(args: argparse.Namespace) -> list[str]:
    # one shard asked for (--shard_index): one job, no array
    return [] if args.shard_index is not None else shards_of(args)


STAGE = Stage(
    name="extract_vectors",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root],
    outputs=lambda a: [a.out_dir / name for name in model_names(a)],
    done=done,
    shards=_array_shards,
    on_skip=report_reused,
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
