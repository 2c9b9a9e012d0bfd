"""The main job: sample data -> vectors -> references on the embedded `mini` model, resumable.

Every step runs a stage's own main() with --skip_existing, so a second run only checks the
manifests and ends in seconds. Later stages (geometry, reconstruction, captions, figures) join
this list as they land.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from src.data import make_sample
from src.data.io import read_manifest
from src.data.paths import list_vector_shards, vector_shard_dir
from src.extract import extract_clip, extract_vectors

Step = tuple[str, Callable[[list[str]], int], list[str]]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.pipeline",
        description="Run the sample study on the embedded default model (mini), resumably.",
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="where every output goes")
    p.add_argument("--n_scenes", type=int, default=2000, help="synthetic scenes to generate")
    p.add_argument("--shards", type=int, default=4, help="synthetic scene shards")
    p.add_argument("--models", default="mini", help="models for extract_vectors (default mini)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--no_progress", action="store_true")
    return p


def plan(args: argparse.Namespace) -> list[Step]:
    images = args.data / "sample"
    common = [
        "--device",
        args.device,
        "--batch_size",
        str(args.batch_size),
        "--num_workers",
        str(args.num_workers),
        "--skip_existing",
    ]
    if args.no_progress:
        common.append("--no_progress")
    steps: list[Step] = [
        (
            "sample data",
            make_sample.main,
            ["--out", str(images), "--n_scenes", str(args.n_scenes), "--shards", str(args.shards)],
        ),
        (
            "E_pre / E_post",
            extract_vectors.main,
            [
                "--root",
                str(images),
                "--out_dir",
                str(args.data / "vector"),
                "--models",
                args.models,
                *common,
            ],
        ),
    ]
    for ref in ("efficientnet-lite0", "minilm"):
        steps.append(
            (
                f"reference {ref}",
                extract_clip.main,
                [
                    "--root",
                    str(images),
                    "--out_dir",
                    str(args.data / "clip_ref" / ref),
                    "--model_id",
                    ref,
                    *common,
                ],
            )
        )
    return steps


def summarise(args: argparse.Namespace) -> None:
    """What is on disk now, read from the manifests."""
    root = args.data / "vector"
    for model in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        shards = list_vector_shards(root / model)
        ms = [read_manifest(vector_shard_dir(root, model, s)) or {} for s in shards]
        n_ok = sum(m.get("n_ok", 0) for m in ms)
        n_skip = sum(m.get("n_skipped", 0) for m in ms)
        shapes = ms[0].get("shapes", {}) if ms else {}
        pre, post = shapes.get("pre", {}), shapes.get("post", {})
        print(
            f"  vectors/{model}: {n_ok} images in {len(shards)} shards ({n_skip} skipped); "
            f"E_pre {pre.get('tokens_max')} x {pre.get('dim')}, "
            f"E_post {post.get('tokens_max')} x {post.get('dim')} ({post.get('dtype')})"
        )


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    t_all = time.perf_counter()
    timings = []
    for title, stage_main, stage_argv in plan(args):
        print(f"== {title}", flush=True)
        t0 = time.perf_counter()
        rc = stage_main(stage_argv)
        timings.append((title, time.perf_counter() - t0))
        if rc != 0:
            print(f"step '{title}' failed with exit code {rc}", file=sys.stderr)
            return rc
    print(
        f"== done in {time.perf_counter() - t_all:.0f}s "
        f"({', '.join(f'{t}: {s:.0f}s' for t, s in timings)})"
    )
    summarise(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
