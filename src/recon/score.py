"""Per-image reconstruction quality of E_pre, next to two trivial baselines a reader needs to
judge it: the training mean of E_pre for every token, and a ridge linear map from E_post tokens
to E_pre tokens, both fitted on the reconstructor's own training split.

MSE in the standardised E_pre space (per-channel statistics of the training split), cosine in
the original space, token-averaged (src.metrics.recon).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.data.io import local_path, read_manifest
from src.data.paths import chunk_path, list_chunk_indices, shard_dirs
from src.data.vectors import check_aligned, load_chunk
from src.errors import InputMissing, UserError
from src.metrics.recon import fit_ridge, token_cosine, token_mse
from src.metrics.stats import summarize
from src.recon.data import PairSource, RunningMoments, is_validation, iter_pairs, pair_sources
from src.recon.model import NormStats, ReconConfig

METHODS = ("reconstructor", "train_mean", "ridge")
METRICS = ("mse_standardised", "cosine")


def training_sources(model_dir: Path) -> list[PairSource]:
    """The vectors a reconstructor was trained on, as its manifest records them."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        raise InputMissing(f"{model_dir} has no manifest.json: train_recon has not finished it")
    if "vec_dir" not in manifest:
        raise UserError(
            f"{model_dir}/manifest.json records no vec_dir: retrain it with train_recon"
        )
    return pair_sources(shard_dirs(local_path(manifest["vec_dir"]), manifest.get("shards")))


def ridge_design(
    pre: torch.Tensor, post: torch.Tensor, expand: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the per-token regression: x = [post token, 1] (T_post, D_post + 1) and
    y = the `expand` pre tokens it came from, flattened (T_post, expand * D_pre).
    Connectors that change the token count otherwise map the mean post token to the mean pre
    token (T = 1)."""
    if pre.shape[0] == post.shape[0] * expand:
        x, y = post.double(), pre.double().reshape(post.shape[0], -1)
    else:
        x, y = post.double().mean(0, keepdim=True), pre.double().mean(0, keepdim=True)
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1), y


def ridge_predict(
    w: torch.Tensor, pre: torch.Tensor, post: torch.Tensor, expand: int
) -> torch.Tensor:
    x, _ = ridge_design(pre, post, expand)
    y = (x @ w).float()
    if pre.shape[0] == post.shape[0] * expand:
        return y.reshape(pre.shape)
    return y.expand(pre.shape[0], -1)  # the same mean token everywhere


class Baselines:
    """The training split's E_pre statistics and the ridge map, from one pass over it."""

    def __init__(self, train: list[PairSource], cfg: ReconConfig, alpha: float) -> None:
        xtx = xty = None
        pre_m = RunningMoments()
        for _, pre, post in iter_pairs(
            train, split="train", val_fraction=cfg.val_fraction, split_seed=cfg.split_seed
        ):
            x, y = ridge_design(pre, post, cfg.expand)
            xtx = x.T @ x if xtx is None else xtx + x.T @ x
            xty = x.T @ y if xty is None else xty + x.T @ y
            pre_m.update(pre)
        if xtx is None or xty is None:
            raise UserError("no training images to fit the baselines on")
        # alpha is relative to the mean eigenvalue of X^T X, so it means the same at any scale
        scale = torch.diagonal(xtx)[:-1].mean()
        self.w = fit_ridge(xtx, xty, alpha * float(scale))
        self.pre_mean, pre_std = pre_m.result()
        self.std = NormStats(self.pre_mean, pre_std, torch.zeros(1), torch.ones(1))
        self.expand = cfg.expand

    def predictions(self, pre: torch.Tensor, post: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "train_mean": self.pre_mean.expand_as(pre),
            "ridge": ridge_predict(self.w, pre, post, self.expand),
        }


def score_shard(
    vec_dir: Path,
    recon_dir: Path,
    cfg: ReconConfig,
    base: Baselines,
    *,
    split: Literal["val", "all"],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """A row per image and method of one shard: shard, key, split, method, the two metrics.
    split="val": only the reconstructor's held-out images; "all": training images too."""
    rows = []
    for i in tqdm(list_chunk_indices(vec_dir, "pre"), desc=vec_dir.name, disable=not progress):
        pre = load_chunk(chunk_path(vec_dir, "pre", i))
        post = load_chunk(chunk_path(vec_dir, "post", i))
        rec_path = chunk_path(recon_dir, "pre", i)
        if not rec_path.exists():
            raise InputMissing(f"{rec_path} not found: export_recon has not finished {recon_dir}")
        rec = load_chunk(rec_path)
        check_aligned(pre, post, str(vec_dir))
        check_aligned(pre, rec, f"{vec_dir} vs {recon_dir}")
        for key, e_pre, e_post, e_rec in zip(
            pre.keys, pre.items(), post.items(), rec.items(), strict=True
        ):
            part = "val" if is_validation(key, cfg.val_fraction, cfg.split_seed) else "train"
            if split == "val" and part == "train":
                continue
            target = e_pre.float().unsqueeze(0)
            preds = {"reconstructor": e_rec.float(), **base.predictions(e_pre, e_post)}
            for method, pred in preds.items():
                pred = pred.unsqueeze(0)
                mse = token_mse(base.std.norm_pre(pred), base.std.norm_pre(target))
                rows.append(
                    {
                        "shard": vec_dir.name,
                        "key": key,
                        "split": part,
                        "method": method,
                        "mse_standardised": float(mse[0]),
                        "cosine": float(token_cosine(pred, target)[0]),
                    }
                )
    return rows


def _means(g: pd.DataFrame) -> dict[str, dict[str, float]]:
    return {
        method: {m: float(g[g["method"] == method][m].mean()) for m in METRICS}
        | {"n": int(g["key"].nunique())}
        for method in METHODS
    }


def summarize_scores(
    df: pd.DataFrame, *, embed_model: str, evaluated: str, bootstrap: int, seed: int
) -> dict[str, Any]:
    """The held-out headline (mean, median, std, 95% bootstrap CI per method and metric), and
    means per shard and per split."""
    if df.empty:
        raise UserError("no images to evaluate (check --split and --shards)")
    held_out = df[df["split"] == "val"]
    if held_out.empty:
        raise UserError("none of these images is in the reconstructor's held-out split")
    # The headline is always the held-out split: training images flatter the reconstructor.
    return {
        "embed_model": embed_model,
        "split": "val",
        "evaluated": evaluated,
        "n_images": int(held_out["key"].nunique()),
        "methods": {
            method: {
                metric: summarize(
                    torch.tensor(held_out[held_out["method"] == method][metric].to_numpy()),
                    n_boot=bootstrap,
                    seed=seed,
                )
                for metric in METRICS
            }
            for method in METHODS
        },
        # Per shard too: one out-of-distribution shard (photos among synthetic scenes) can
        # dominate a pooled mean of squared errors.
        "by_shard": {shard: _means(g) for shard, g in held_out.groupby("shard")},
        "by_split": {split: _means(g) for split, g in df.groupby("split")},
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        f"[{summary['embed_model']}] E_pre recovered from E_post, {summary['n_images']} "
        f"{summary['split']} images, mean [95% bootstrap CI]:"
    ]
    for method, m in summary["methods"].items():
        c, e = m["cosine"], m["mse_standardised"]
        lines.append(
            f"  {method:14s} cosine {c['mean']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}]  "
            f"MSE(std) {e['mean']:.3f} [{e['ci_low']:.3f}, {e['ci_high']:.3f}]"
        )
    for shard, by in summary.get("by_shard", {}).items():
        parts = ", ".join(f"{m} {v['cosine']:.3f}" for m, v in by.items())
        lines.append(f"    {shard} (n={by['reconstructor']['n']}): cosine {parts}")
    return lines
