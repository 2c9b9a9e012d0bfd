"""Stage: write reconstructed E_pre shards (the vector layout, kind 'pre') from E_post chunks.

Shards are independent, so the launcher runs one job-array task per vector shard; the library
is src.recon.export.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.data.identity import add_override_arg
from src.data.paths import recon_dir, shard_dirs, vector_dir, vector_shard_dir
from src.recon.export import export_complete, export_shard
from src.recon.model import STATS_NAME, NormStats, load_recon, provenance
from src.runtime import csv_list, resolve_device
from src.stage import Stage

RECON_ROOT = Path("data/recon")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.export_recon",
        description="Reconstruct E_pre from every E_post chunk with a trained reconstructor; "
        "writes <out_base>/<embed_model>/<shard>/pre_vectors_<i>.pt plus manifest.json.",
    )
    p.add_argument("--embed_model", required=True, help="the model whose vectors to reconstruct")
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
        help=f"trained reconstructor folder (default {RECON_ROOT}/<embed_model>)",
    )
    p.add_argument("--shards", type=csv_list, help="only these shards (default: all)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--device", default="auto")
    add_override_arg(p, "use the reconstructor even if it was trained on another model's vectors")
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="keep finished shards and chunks made by the same reconstructor",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def _model_dir(a: argparse.Namespace) -> Path:
    return a.model_dir or recon_dir(RECON_ROOT, a.embed_model)


def _vectors(a: argparse.Namespace) -> Path:
    return vector_dir(a.vec_root, a.embed_model)


def _shards(a: argparse.Namespace) -> list[str]:
    """The vector shards to export (InputMissing until extract_vectors has made some)."""
    return [d.name for d in shard_dirs(_vectors(a), a.shards)]


def _identity(a: argparse.Namespace) -> dict:
    return provenance(_model_dir(a), _vectors(a), a.shards, override=a.override_model)


def _done(a: argparse.Namespace) -> bool:
    identity = _identity(a)
    return all(
        export_complete(vector_shard_dir(a.out_base, a.embed_model, s), identity)
        for s in _shards(a)
    )


def run(args: argparse.Namespace) -> int:
    identity = _identity(args)
    device = resolve_device(args.device)
    model, _ = load_recon(_model_dir(args), args.embed_model)
    stats = NormStats.load(_model_dir(args) / STATS_NAME)
    for src_dir in shard_dirs(_vectors(args), args.shards):
        t0 = time.perf_counter()
        n = export_shard(
            model.to(device),
            stats,
            src_dir,
            vector_shard_dir(args.out_base, args.embed_model, src_dir.name),
            identity=identity,
            record={"stage": "export_recon", "args": vars(args)},
            batch_size=args.batch_size,
            device=device,
            skip_existing=args.skip_existing,
            progress=not args.no_progress,
        )
        took = f"{time.perf_counter() - t0:.1f}s"
        print(
            f"  {src_dir.name}: "
            + ("complete, skipped" if n is None else f"{n} images reconstructed ({took})")
        )
    return 0


STAGE = Stage(
    name="export_recon",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [_vectors(a), _model_dir(a)],
    outputs=lambda a: [vector_dir(a.out_base, a.embed_model)],
    # Complete when every shard asked for (all, or --shards) has its manifest, made by this
    # reconstructor from these vectors; a job-array task is given --shards NAME.
    done=_done,
    shards=_shards,
    description="reconstructed E_pre shards",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
