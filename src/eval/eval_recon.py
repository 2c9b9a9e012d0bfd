"""Stage: per-image reconstruction quality of E_pre, next to two trivial baselines.

For each held-out image (the reconstructor's own split, by key): MSE in the standardised E_pre
space and token-averaged cosine in the original space, for (a) the learned reconstructor (its
exported shards), (b) the training mean of E_pre for every token, (c) a ridge linear map from
E_post tokens to E_pre tokens fitted on the training split (src.recon.score). A CSV row per
image and method, and a JSON summary with bootstrap CIs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from src.data.identity import add_override_arg
from src.data.io import atomic_write, read_manifest, write_json_atomic, write_manifest
from src.data.paths import (
    recon_dir,
    recon_results_dir,
    recon_table,
    shard_dirs,
    vector_dir,
    vector_shard_dir,
)
from src.errors import InputMissing, UserError
from src.recon.model import provenance, read_config
from src.recon.score import (
    Baselines,
    score_shard,
    summarize_scores,
    summary_lines,
    training_sources,
)
from src.runtime import csv_list
from src.stage import Stage

RECON_ROOT = Path("data/recon")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_recon",
        description="Per-image MSE (standardised) and cosine of reconstructed E_pre, against "
        "the training-mean and ridge baselines, with bootstrap CIs.",
    )
    p.add_argument("--embed_model", required=True, help="the model whose vectors to score")
    p.add_argument("--shards", type=csv_list, help="shards to evaluate (default: all)")
    p.add_argument("--vec_root", type=Path, default=Path("data/vector"))
    p.add_argument("--recon_root", type=Path, default=Path("data/vector_recon"))
    p.add_argument(
        "--model_dir", type=Path, help=f"reconstructor (default {RECON_ROOT}/<embed_model>)"
    )
    p.add_argument("--out_dir", type=Path, default=recon_results_dir(Path("results")))
    p.add_argument(
        "--split",
        choices=["val", "all"],
        default="val",
        help="val: only the reconstructor's held-out images (default); all: training images "
        "too, as rows marked split=train (the summary's headline stays held-out only)",
    )
    p.add_argument(
        "--ridge_alpha",
        type=float,
        default=1e-2,
        help="ridge penalty, relative to the mean eigenvalue of E_post's X^T X",
    )
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    add_override_arg(p, "use the reconstructor even if it was trained on another model's vectors")
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="do nothing when this model's result table exists (made by this reconstructor)",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def _model_dir(a: argparse.Namespace) -> Path:
    return a.model_dir or recon_dir(RECON_ROOT, a.embed_model)


def _identity(a: argparse.Namespace) -> dict:
    vectors = vector_dir(a.vec_root, a.embed_model)
    return provenance(_model_dir(a), vectors, a.shards, override=a.override_model)


def _done(a: argparse.Namespace) -> bool:
    summary = recon_table(a.out_dir, a.embed_model, ".json")
    if not summary.exists():
        return False
    made_by = json.loads(summary.read_text(encoding="utf-8")).get("reconstructor")
    if made_by != _identity(a)["reconstructor"]:
        raise UserError(
            f"{summary} was computed with another reconstructor than {_model_dir(a)}; "
            "run without --skip_existing to recompute it"
        )
    return True


def _check_export(folder: Path, identity: dict) -> None:
    """The exported shard must come from this reconstructor, or the scores mean nothing."""
    manifest = read_manifest(folder)
    if manifest is None:
        raise InputMissing(f"no exported reconstruction in {folder}; run src.train.export_recon")
    if manifest.get("reconstructor") != identity["reconstructor"]:
        raise UserError(
            f"{folder} was exported with another reconstructor; re-run src.train.export_recon "
            "without --skip_existing"
        )


def run(args: argparse.Namespace) -> int:
    identity = _identity(args)
    cfg = read_config(_model_dir(args))
    base = Baselines(training_sources(_model_dir(args)), cfg, args.ridge_alpha)
    rows = []
    for d in shard_dirs(vector_dir(args.vec_root, args.embed_model), args.shards):
        exported = vector_shard_dir(args.recon_root, args.embed_model, d.name)
        _check_export(exported, identity)
        rows += score_shard(d, exported, cfg, base, split=args.split, progress=not args.no_progress)
    df = pd.DataFrame(rows)
    summary = (
        summarize_scores(
            df,
            embed_model=args.embed_model,
            evaluated=args.split,
            bootstrap=args.bootstrap,
            seed=args.seed,
        )
        | identity
    )
    atomic_write(recon_table(args.out_dir, args.embed_model), lambda t: df.to_csv(t, index=False))
    write_json_atomic(recon_table(args.out_dir, args.embed_model, ".json"), summary)
    write_manifest(
        args.out_dir,
        stage="eval_recon",
        embed_model=args.embed_model,
        args=vars(args),
        **identity,
    )
    print("\n".join(summary_lines(summary)))
    return 0


def _print_summary(a: argparse.Namespace) -> None:
    summary = json.loads(recon_table(a.out_dir, a.embed_model, ".json").read_text("utf-8"))
    print("\n".join(summary_lines(summary)))


STAGE = Stage(
    name="eval_recon",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [
        vector_dir(a.vec_root, a.embed_model),
        _model_dir(a),
        vector_dir(a.recon_root, a.embed_model),
    ],
    outputs=lambda a: [
        recon_table(a.out_dir, a.embed_model),
        recon_table(a.out_dir, a.embed_model, ".json"),
    ],
    # Done when the summary (written after the table) exists and names this reconstructor.
    done=_done,
    on_skip=_print_summary,
    description="reconstruction quality per image, with baselines",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
