"""Fitting a reconstructor: the epoch loop under accelerate, per-epoch checkpoints that a resumed
run continues to the same result as an uninterrupted one, the best held-out model, and the
run's summary and manifest (written last)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from src.data.io import (
    MANIFEST_NAME,
    load_torch,
    save_torch_atomic,
    write_json_atomic,
    write_manifest,
)
from src.errors import UserError
from src.recon.data import PairSource, batches, survey
from src.recon.model import (
    BEST,
    STATS_NAME,
    NormStats,
    ReconConfig,
    ReconOptions,
    build_recon,
    load_recon,
    save_recon,
)
from src.runtime import resolve_device

CHECKPOINT = "checkpoint.pt"
SUMMARY = "train_summary.json"
# A resumed run continues the same schedule and shuffling only if these are unchanged.
RESUME_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "seed")


@dataclass
class FitConfig:
    """How a reconstructor is trained (train_recon's optimisation flags)."""

    epochs: int = field(default=20, metadata={"help": "passes over the training split"})
    batch_size: int = field(default=32, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate (one-cycle schedule)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    seed: int = field(
        default=0,
        metadata={"help": "seeds initialisation and shuffling (the split has --split_seed)"},
    )
    amp: bool = field(default=False, metadata={"help": "mixed precision on GPU (bf16, else fp16)"})
    device: str = field(
        default="auto", metadata={"help": "auto, cpu or cuda (accelerate places the model)"}
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from out_dir/checkpoint.pt (the same result as an uninterrupted run)"
        },
    )
    stop_after: int | None = field(
        default=None,
        metadata={
            "help": "end this run after N more epochs (checkpointed; continue with --resume), "
            "for time-limited jobs"
        },
    )
    wandb: bool = field(
        default=False, metadata={"help": "log to Weights & Biases (off by default)"}
    )
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})


@dataclass
class FitResult:
    config: ReconConfig
    best_val_mse: float
    history: list[dict[str, float]]
    finished: bool  # False: stopped by --stop_after, continue with --resume


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens: pred/target (B, T, D), mask (B, T)."""
    err = ((pred.float() - target.float()) ** 2).mean(-1)
    return (err * mask).sum() / mask.sum()


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    sources: list[PairSource],
    stats: NormStats,
    split: ReconOptions,
    batch_size: int,
    device: torch.device,
) -> float:
    """Token-weighted MSE on the held-out images, in the (standardised) training space."""
    model.eval()
    total, count = 0.0, 0
    for b in batches(sources, split, split="val", batch_size=batch_size):
        pred = model(stats.norm_post(b["post"].to(device)), b["post_mask"].to(device))
        mask = b["pre_mask"].to(device)
        n = int(mask.sum())
        total += float(masked_mse(pred, stats.norm_pre(b["pre"].to(device)), mask)) * n
        count += n
    model.train()
    return total / max(count, 1)


def held_out_mse(
    sources: list[PairSource], folder: Path, embed_model: str, batch_size: int
) -> dict[str, Any]:
    """The saved best model's held-out MSE, on the split it was trained with."""
    model, cfg = load_recon(folder, embed_model)
    stats = NormStats.load(folder / STATS_NAME)
    val = validate(model, sources, stats, cfg, batch_size, torch.device("cpu"))
    return {"embed_model": cfg.embed_model, "val_mse": val}


def _accelerator(fit: FitConfig) -> Any:
    from accelerate import Accelerator

    cpu = resolve_device(fit.device).type == "cpu"  # a bad --device fails here, clearly
    precision = "no"
    if fit.amp and not cpu:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(cpu=cpu, mixed_precision=precision, log_with="wandb" if fit.wandb else None)


def _schedule(fit: FitConfig) -> dict[str, Any]:
    return {k: getattr(fit, k) for k in RESUME_KEYS}


def _resume(
    path: Path, cfg: ReconConfig, fit: FitConfig, model: Any, opt: Any, sched: Any
) -> tuple[int, float, list[dict[str, float]]]:
    """(epochs done, best held-out MSE, history) from the checkpoint, or a fresh start."""
    if not fit.resume:
        path.unlink(missing_ok=True)  # a fresh run must not be continued from an older one
        return 0, math.inf, []
    if not path.exists():
        return 0, math.inf, []
    state = load_torch(path)
    if state["config"] != asdict(cfg):
        raise UserError(
            f"{path} was made for another model/config ({state['config'].get('embed_model')!r}, "
            f"d_pre {state['config'].get('d_pre')}); use another --out_dir or drop --resume"
        )
    if state.get("schedule") != _schedule(fit):
        raise UserError(
            f"{path} was made with {state.get('schedule')}, not {_schedule(fit)}; pass the same "
            "flags to resume it, or drop --resume to start afresh"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    print(f"  resumed from {path} after epoch {state['epoch']}", flush=True)
    return state["epoch"], state["best"], list(state["history"])


def _train_epoch(
    model: Any,
    opt: Any,
    sched: Any,
    acc: Any,
    data: list[PairSource],
    stats: NormStats,
    cfg: ReconConfig,
    fit: FitConfig,
    epoch: int,
) -> float:
    """One pass over this rank's share of the training batches; the mean batch loss."""
    model.train()
    total, n = 0.0, 0
    # Shuffled by (seed, epoch) only, so a resumed run draws the batches an uninterrupted one would.
    for b in batches(
        data,
        cfg,
        split="train",
        batch_size=fit.batch_size,
        shuffle_seed=fit.seed * 10_007 + epoch,
        rank=acc.process_index,
        world=acc.num_processes,
    ):
        post = stats.norm_post(b["post"].to(acc.device))
        target = stats.norm_pre(b["pre"].to(acc.device))
        with acc.autocast():
            pred = model(post, b["post_mask"].to(acc.device))
            loss = masked_mse(pred, target, b["pre_mask"].to(acc.device))
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        acc.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        total, n = total + loss.item(), n + 1
    return total / max(n, 1)


def fit_recon(
    sources: list[PairSource],
    options: ReconOptions,
    fit: FitConfig,
    out_dir: Path,
    *,
    embed_model: str,
    record: dict[str, Any],
) -> FitResult:
    """Train a reconstructor on `sources` into out_dir: norm_stats, best_model (best held-out
    epoch), checkpoint.pt after every epoch; when all epochs are done also last_model,
    train_summary.json and the manifest (with `record`'s fields), written last."""
    from accelerate.utils import set_seed

    data = survey(sources, options, embed_model)
    cfg, stats = data.config, data.stats
    acc = _accelerator(fit)
    set_seed(fit.seed)
    model = build_recon(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=fit.lr, weight_decay=fit.weight_decay)
    steps_per_epoch = max(1, math.ceil(data.n_train / fit.batch_size))
    # Built before any state is loaded: the scheduler's constructor resets the optimizer's lr.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=fit.lr, pct_start=0.1, total_steps=fit.epochs * steps_per_epoch + 1
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / CHECKPOINT
    start, best, history = _resume(ckpt, cfg, fit, model, opt, sched)
    if acc.is_main_process:
        # The folder is being rewritten: it is incomplete until the new manifest is written.
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        stats.save(out_dir / STATS_NAME)
    model, opt = acc.prepare(model, opt)
    if fit.wandb:
        acc.init_trackers("bridgescope-recon", config=asdict(cfg))
    print(
        f"[{embed_model}] {cfg.model_type}: E_post {cfg.t_post} x {cfg.d_post} -> "
        f"E_pre {cfg.t_pre} x {cfg.d_pre}; {data.n_train} train / {data.n_val} held-out images"
    )
    t0 = time.perf_counter()
    bar = tqdm(
        range(start, fit.epochs),
        initial=start,
        total=fit.epochs,
        desc="epochs",
        disable=fit.no_progress or not acc.is_main_process,
    )
    for epoch in bar:
        if fit.stop_after is not None and epoch - start >= fit.stop_after:
            break
        train_mse = _train_epoch(model, opt, sched, acc, sources, stats, cfg, fit, epoch)
        bare = acc.unwrap_model(model)
        val = validate(bare, sources, stats, cfg, fit.batch_size, acc.device)
        history.append({"epoch": epoch + 1, "train_mse": train_mse, "val_mse": val})
        bar.set_postfix(train=f"{train_mse:.4f}", val=f"{val:.4f}")
        if fit.wandb:
            acc.log(history[-1], step=epoch + 1)
        if acc.is_main_process:
            if val < best:
                best = val
                save_recon(bare, cfg, out_dir, BEST)
            inner = getattr(opt, "optimizer", opt)  # accelerate wraps the optimizer
            save_torch_atomic(
                ckpt,
                {
                    "model": bare.state_dict(),
                    "optimizer": inner.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "history": history,
                    "config": asdict(cfg),
                    "schedule": _schedule(fit),
                },
            )
        acc.wait_for_everyone()
    result = FitResult(
        cfg, best, history, finished=not history or history[-1]["epoch"] >= fit.epochs
    )
    if not result.finished:
        print(
            f"  stopped after epoch {history[-1]['epoch']} of {fit.epochs}; continue with --resume"
        )
    elif acc.is_main_process:
        save_recon(acc.unwrap_model(model), cfg, out_dir, "last_model")
        best_key = "best_val_mse_standardised" if cfg.normalize else "best_val_mse"
        write_json_atomic(
            out_dir / SUMMARY,
            {
                "embed_model": embed_model,
                "n_train": data.n_train,
                "n_val": data.n_val,
                best_key: best,
                "history": history,
                "seconds": round(time.perf_counter() - t0, 1),
            },
        )
        write_manifest(out_dir, **record, config=asdict(cfg), fit=asdict(fit), best_val_mse=best)
        print(
            f"  best held-out MSE {best:.4f} ({'standardised' if cfg.normalize else 'raw'}); "
            f"saved to {out_dir}"
        )
    acc.end_training()
    return result
