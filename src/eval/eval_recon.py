"""Stage: per-image reconstruction quality of E_pre, next to two trivial baselines.

For each held-out image (the reconstructor's own split, by key): MSE in the standardised E_pre
space (per-channel statistics of the training split) and token-averaged cosine in the original
space, for (a) the learned reconstructor (its exported shards), (b) the training mean of E_pre
for every token, (c) a ridge linear map from E_post tokens to E_pre tokens fitted on the
training split. A CSV row per image and method, and a JSON summary with bootstrap CIs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.data.io import atomic_write, read_manifest, write_json_atomic, write_manifest
from src.data.paths import (
    chunk_path,
    list_chunk_indices,
    recon_table,
    shard_dirs,
    vector_shard_dir,
)
from src.data.vectors import check_aligned, load_chunk
from src.metrics.recon import fit_ridge, token_cosine, token_mse
from src.metrics.stats import summarize
from src.runtime import csv_list
from src.training.recon import (
    NormStats,
    RunningMoments,
    is_validation,
    iter_pairs,
    load_recon,
    pair_sources,
)

METHODS = ("reconstructor", "train_mean", "ridge")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_recon",
        description="Per-image MSE (standardised) and cosine of reconstructed E_pre, against "
        "the training-mean and ridge baselines, with bootstrap CIs.",
    )
    p.add_argument("--embed_model", required=True)
    p.add_argument("--shards", type=csv_list, help="shards to evaluate (default: all)")
    p.add_argument("--batch_size", type=int, default=32, help="images per scoring batch")
    p.add_argument("--vec_root", type=Path, default=Path("data/vector"))
    p.add_argument("--recon_root", type=Path, default=Path("data/vector_recon"))
    p.add_argument("--model_dir", type=Path, help="reconstructor (default data/recon/<model>)")
    p.add_argument("--out_dir", type=Path, default=Path("results/recon"))
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
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="do nothing when this model's result table exists",
    )
    p.add_argument("--no_progress", action="store_true")
    return p


def fit_baselines(train_sources, cfg, stats_pre: RunningMoments | None, alpha: float):
    """One pass over the training split: E_pre moments and the ridge normal equations."""
    xtx = xty = None
    pre_m = stats_pre or RunningMoments()
    for _, pre, post in iter_pairs(
        train_sources, split="train", val_fraction=cfg.val_fraction, split_seed=cfg.split_seed
    ):
        x, y = ridge_design(pre, post, cfg.expand)
        xtx = x.T @ x if xtx is None else xtx + x.T @ x
        xty = x.T @ y if xty is None else xty + x.T @ y
        pre_m.update(pre)
    if xtx is None:
        raise ValueError("no training images to fit the baselines on")
    scale = torch.diagonal(xtx)[:-1].mean()
    return pre_m.result(), fit_ridge(xtx, xty, alpha * float(scale))


def ridge_design(pre: torch.Tensor, post: torch.Tensor, expand: int):
    """Rows of the per-token regression: x = [post token, 1] (T_post, D_post + 1) and
    y = the `expand` pre tokens it came from, flattened (T_post, expand * D_pre).
    Connectors that change the token count otherwise map the mean post token to the mean pre
    token (T = 1)."""
    if pre.shape[0] == post.shape[0] * expand:
        x, y = post.double(), pre.double().reshape(post.shape[0], -1)
    else:
        x, y = post.double().mean(0, keepdim=True), pre.double().mean(0, keepdim=True)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1), y


def ridge_predict(w: torch.Tensor, pre: torch.Tensor, post: torch.Tensor, expand: int):
    x, _ = ridge_design(pre, post, expand)
    y = (x @ w).float()
    if pre.shape[0] == post.shape[0] * expand:
        return y.reshape(pre.shape)
    return y.expand(pre.shape[0], -1)  # the same mean token everywhere


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    model_dir = args.model_dir or Path("data/recon") / args.embed_model
    summary_path = recon_table(args.out_dir, args.embed_model, ".json")
    if args.skip_existing and summary_path.exists():
        print_summary(json.loads(summary_path.read_text(encoding="utf-8")))
        return 0
    try:
        _, cfg = load_recon(model_dir, args.embed_model)
        train_manifest = read_manifest(model_dir) or {}
        train_vec = Path(train_manifest.get("vec_dir", args.vec_root / args.embed_model))
        train_shards = (train_manifest.get("args") or {}).get("shards")
        train_sources = pair_sources(shard_dirs(train_vec, train_shards))
        eval_dirs = shard_dirs(args.vec_root / args.embed_model, args.shards)
        (pre_mean, pre_std), w = fit_baselines(train_sources, cfg, None, args.ridge_alpha)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    std = NormStats(pre_mean, pre_std, torch.zeros(1), torch.ones(1))
    rows = []
    for d in eval_dirs:
        recon_dir = vector_shard_dir(args.recon_root, args.embed_model, d.name)
        if not (recon_dir / "manifest.json").exists():
            print(
                f"error: no exported reconstruction in {recon_dir}; run "
                "src.train.export_recon first",
                file=sys.stderr,
            )
            return 2
        for i in tqdm(list_chunk_indices(d, "pre"), desc=d.name, disable=args.no_progress):
            pre = load_chunk(chunk_path(d, "pre", i))
            post = load_chunk(chunk_path(d, "post", i))
            rec = load_chunk(chunk_path(recon_dir, "pre", i))
            check_aligned(pre, post, str(d))
            check_aligned(pre, rec, f"{d} vs {recon_dir}")
            for key, e_pre, e_post, e_rec in zip(
                pre.keys, pre.items(), post.items(), rec.items(), strict=True
            ):
                split = "val" if is_validation(key, cfg.val_fraction, cfg.split_seed) else "train"
                if args.split == "val" and split == "train":
                    continue
                target = e_pre.float().unsqueeze(0)
                preds = {
                    "reconstructor": e_rec.float(),
                    "train_mean": pre_mean.expand_as(e_pre),
                    "ridge": ridge_predict(w, e_pre, e_post, cfg.expand),
                }
                for method, pred in preds.items():
                    pred = pred.unsqueeze(0)
                    rows.append(
                        {
                            "shard": d.name,
                            "key": key,
                            "split": split,
                            "method": method,
                            "mse_standardised": float(
                                token_mse(std.norm_pre(pred), std.norm_pre(target))[0]
                            ),
                            "cosine": float(token_cosine(pred, target)[0]),
                        }
                    )
    df = pd.DataFrame(rows)
    if df.empty:
        print("error: no images to evaluate (check --split and --shards)", file=sys.stderr)
        return 2
    held_out = df[df["split"] == "val"]
    if held_out.empty:
        print("error: none of these images is in the reconstructor's held-out split",
              file=sys.stderr)  # fmt: skip
        return 2
    # The headline is always the held-out split: training images flatter the reconstructor.
    summary = {
        "embed_model": args.embed_model,
        "split": "val",
        "evaluated": args.split,
        "n_images": int(held_out["key"].nunique()),
        "methods": {},
    }
    for method in METHODS:
        part = held_out[held_out["method"] == method]
        summary["methods"][method] = {
            metric: summarize(
                torch.tensor(part[metric].to_numpy()), n_boot=args.bootstrap, seed=args.seed
            )
            for metric in ("mse_standardised", "cosine")
        }
    # Per shard too: one out-of-distribution shard (photos among synthetic scenes) can dominate
    # a pooled mean of squared errors.
    summary["by_shard"] = {
        shard: {
            method: {m: float(g[g["method"] == method][m].mean())
                     for m in ("mse_standardised", "cosine")} | {"n": int(g["key"].nunique())}
            for method in METHODS
        }
        for shard, g in held_out.groupby("shard")
    }  # fmt: skip
    summary["by_split"] = {
        split: {method: {m: float(g[g["method"] == method][m].mean())
                         for m in ("mse_standardised", "cosine")} | {"n": int(g["key"].nunique())}
                for method in METHODS}
        for split, g in df.groupby("split")
    }  # fmt: skip
    out = args.out_dir
    atomic_write(recon_table(out, args.embed_model), lambda tmp: df.to_csv(tmp, index=False))
    write_json_atomic(summary_path, summary)
    write_manifest(
        out,
        stage="eval_recon",
        embed_model=args.embed_model,
        args=vars(args),
        reconstructor=str(model_dir),
    )
    print_summary(summary)
    return 0


def print_summary(summary: dict) -> None:
    print(
        f"[{summary['embed_model']}] E_pre recovered from E_post, {summary['n_images']} "
        f"{summary['split']} images, mean [95% bootstrap CI]:"
    )
    for method, m in summary["methods"].items():
        c, e = m["cosine"], m["mse_standardised"]
        print(
            f"  {method:14s} cosine {c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]  "
            f"MSE(std) {e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
        )
    for shard, by in summary.get("by_shard", {}).items():
        parts = ", ".join(f"{m} {v['cosine']:.3f}" for m, v in by.items())
        print(f"    {shard} (n={by['reconstructor']['n']}): cosine {parts}")


if __name__ == "__main__":
    sys.exit(main())
