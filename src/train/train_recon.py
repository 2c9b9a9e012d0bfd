"""Stage: train (or evaluate) a reconstructor E_post -> E_pre on one model's vectors.

Data streams chunk by chunk; the held-out split is a deterministic function of the image key;
normalisation statistics come from the training split only. accelerate places the model and
handles mixed precision, so the same command runs on CPU, one GPU or several (accelerate launch).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from src.data.io import (
    is_complete,
    load_torch,
    save_torch_atomic,
    write_json_atomic,
    write_manifest,
)
from src.data.paths import shard_dirs
from src.runtime import csv_list
from src.training.recon import (
    STATS_NAME,
    NormStats,
    ReconConfig,
    RunningMoments,
    build_recon,
    check_finite,
    iter_pairs,
    load_recon,
    pair_sources,
    save_recon,
)

CHECKPOINT = "checkpoint.pt"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_recon",
        description="Train a reconstructor from E_post back to E_pre (or --eval_only).",
    )
    p.add_argument(
        "--vec_dir",
        type=Path,
        required=True,
        help="a model's vector folder (data/vector/<model>) or one shard of it",
    )
    p.add_argument("--shards", type=csv_list, help="only these shards of --vec_dir")
    p.add_argument("--embed_model", required=True, help="model name, recorded and checked")
    p.add_argument(
        "--model_type",
        choices=["mlp", "transformer"],
        default="mlp",
        help="mlp: per-token map (same token count, or an integer multiple); "
        "transformer: learned E_pre queries attending to E_post (counts differ)",
    )
    p.add_argument("--num_layers", type=int, default=3)
    p.add_argument("--num_heads", type=int, default=8)
    p.add_argument("--hidden_size", type=int, default=1024)
    p.add_argument("--out_dir", type=Path, required=True)
    p.add_argument(
        "--normalize",
        action="store_true",
        help="standardise E_pre and E_post per channel (training-split statistics)",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision on GPU (bf16, else fp16)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    p.add_argument("--eval_only", action="store_true", help="evaluate out_dir's best model")
    p.add_argument(
        "--stop_after",
        type=int,
        help="end this run after N more epochs (checkpointed; continue with --resume), "
        "for time-limited jobs",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (accelerate places it)")
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="do nothing when out_dir already holds a finished run (its manifest)",
    )
    p.add_argument("--wandb", action="store_true", help="log to Weights & Biases (off by default)")
    p.add_argument("--no_progress", action="store_true")
    return p


def collate(items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict:
    """Pad a batch of (key, pre (T_pre, D), post (T_post, D)) to its longest item."""
    keys = [k for k, _, _ in items]
    pre = torch.nn.utils.rnn.pad_sequence([p.float() for _, p, _ in items], batch_first=True)
    post = torch.nn.utils.rnn.pad_sequence([q.float() for _, _, q in items], batch_first=True)
    pre_mask = torch.zeros(pre.shape[:2], dtype=torch.bool)
    post_mask = torch.zeros(post.shape[:2], dtype=torch.bool)
    for i, (_, p, q) in enumerate(items):
        pre_mask[i, : p.shape[0]] = True
        post_mask[i, : q.shape[0]] = True
    return {"keys": keys, "pre": pre, "post": post, "pre_mask": pre_mask, "post_mask": post_mask}


def batches(sources, args, split: str, epoch: int | None, rank: int = 0, world: int = 1):
    """Batches of one split; training batches are shuffled by (seed, epoch) and dealt to ranks."""
    seed = None if epoch is None else args.seed * 10_007 + epoch
    buf, j = [], 0
    for item in iter_pairs(
        sources,
        split=split,
        val_fraction=args.val_fraction,
        split_seed=args.seed,
        shuffle_seed=seed,
    ):
        buf.append(item)
        if len(buf) == args.batch_size:
            if j % world == rank:
                yield collate(buf)
            buf, j = [], j + 1
    if buf and j % world == rank:
        yield collate(buf)


def inspect_data(sources, args) -> tuple[ReconConfig, NormStats, int, int]:
    """One pass over the training split: shapes, token-count rule, NaN check, statistics."""
    pre_m, post_m = RunningMoments(), RunningMoments()
    t_pre, t_post, ratios = set(), set(), set()
    n_train = n_val = 0
    for split in ("train", "val"):
        for key, pre, post in iter_pairs(
            sources, split=split, val_fraction=args.val_fraction, split_seed=args.seed
        ):
            check_finite(key, pre, post)
            t_pre.add(pre.shape[0])
            t_post.add(post.shape[0])
            ratios.add(pre.shape[0] / post.shape[0])
            if split == "train":
                n_train += 1
                pre_m.update(pre)
                post_m.update(post)
            else:
                n_val += 1
            d_pre, d_post = pre.shape[1], post.shape[1]
    if n_train < 2 or n_val < 1:
        raise ValueError(
            f"need >= 2 training and >= 1 held-out images, got {n_train} and "
            f"{n_val} (--val_fraction {args.val_fraction})"
        )
    fixed_pre = t_pre.pop() if len(t_pre) == 1 else None
    fixed_post = t_post.pop() if len(t_post) == 1 else None
    expand = 1
    if args.model_type == "mlp":
        if len(ratios) != 1 or (r := ratios.pop()) != int(r) or r < 1:
            raise ValueError(
                "the mlp reconstructor needs E_pre tokens = k x E_post tokens for "
                "every image; use --model_type transformer"
            )
        expand = int(r)
    cfg = ReconConfig(
        model_type=args.model_type,
        d_post=d_post,
        d_pre=d_pre,
        t_post=fixed_post,
        t_pre=fixed_pre,
        expand=expand,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        normalize=args.normalize,
        embed_model=args.embed_model,
        val_fraction=args.val_fraction,
        split_seed=args.seed,
    )
    if args.normalize:
        stats = NormStats(*pre_m.result(), *post_m.result())
    else:
        stats = NormStats.identity(d_pre, d_post)
    return cfg, stats, n_train, n_val


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over real tokens: pred/target (B, T, D), mask (B, T)."""
    err = ((pred.float() - target.float()) ** 2).mean(-1)
    return (err * mask).sum() / mask.sum()


@torch.no_grad()
def validate(model, sources, stats: NormStats, args, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for b in batches(sources, args, "val", None):
        pred = model(stats.norm_post(b["post"].to(device)), b["post_mask"].to(device))
        n = int(b["pre_mask"].sum())
        total += (
            float(masked_mse(pred, stats.norm_pre(b["pre"].to(device)), b["pre_mask"].to(device)))
            * n
        )
        count += n
    model.train()
    return total / max(count, 1)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if args.skip_existing and not args.eval_only and is_complete(args.out_dir):
        print(f"[{args.embed_model}] {args.out_dir} already holds a finished reconstructor")
        return 0
    try:
        sources = pair_sources(shard_dirs(args.vec_dir, args.shards))
        if args.eval_only:
            return eval_only(args, sources)
        cfg, stats, n_train, n_val = inspect_data(sources, args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    cpu = args.device == "cpu" or not torch.cuda.is_available()
    precision = "no"
    if args.amp and not cpu:
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    acc = Accelerator(cpu=cpu, mixed_precision=precision, log_with="wandb" if args.wandb else None)
    set_seed(args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out_dir / CHECKPOINT
    if acc.is_main_process:
        stats.save(args.out_dir / STATS_NAME)
    model = build_recon(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, math.ceil(n_train / args.batch_size))
    # Built before any state is loaded: the scheduler's constructor resets the optimizer's lr.
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, pct_start=0.1, total_steps=args.epochs * steps_per_epoch + 1
    )
    start_epoch, best, history = 0, math.inf, []
    if args.resume and ckpt_path.exists():
        state = load_torch(ckpt_path)
        if state["config"] != asdict(cfg):
            print(
                f"error: {ckpt_path} was made for another model/config "
                f"({state['config'].get('embed_model')!r}, d_pre {state['config']['d_pre']}); "
                "use another --out_dir or drop --resume",
                file=sys.stderr,
            )
            return 2
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best, history = state["epoch"], state["best"], list(state["history"])
        print(f"  resumed from {ckpt_path} after epoch {start_epoch}", flush=True)
    elif ckpt_path.exists():
        ckpt_path.unlink()
    model, opt = acc.prepare(model, opt)
    if args.wandb:
        acc.init_trackers("bridgescope-recon", config=asdict(cfg))
    print(
        f"[{args.embed_model}] {cfg.model_type}: E_post {cfg.t_post} x {cfg.d_post} -> "
        f"E_pre {cfg.t_pre} x {cfg.d_pre}; {n_train} train / {n_val} held-out images"
    )
    t0 = time.perf_counter()
    bar = tqdm(
        range(start_epoch, args.epochs),
        initial=start_epoch,
        total=args.epochs,
        desc="epochs",
        disable=args.no_progress or not acc.is_main_process,
    )
    for epoch in bar:
        if args.stop_after is not None and epoch - start_epoch >= args.stop_after:
            break
        model.train()
        run, n = 0.0, 0
        for b in batches(sources, args, "train", epoch, acc.process_index, acc.num_processes):
            post = stats.norm_post(b["post"].to(acc.device))
            target = stats.norm_pre(b["pre"].to(acc.device))
            with acc.autocast():
                loss = masked_mse(
                    model(post, b["post_mask"].to(acc.device)), target, b["pre_mask"].to(acc.device)
                )
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            acc.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            run, n = run + loss.item(), n + 1
        val = validate(acc.unwrap_model(model), sources, stats, args, acc.device)
        history.append({"epoch": epoch + 1, "train_mse": run / max(n, 1), "val_mse": val})
        bar.set_postfix(train=f"{run / max(n, 1):.4f}", val=f"{val:.4f}")
        if args.wandb:
            acc.log(history[-1], step=epoch + 1)
        if acc.is_main_process:
            if val < best:
                best = val
                save_recon(acc.unwrap_model(model), cfg, args.out_dir, "best_model")
            save_torch_atomic(
                ckpt_path,
                {
                    "model": acc.unwrap_model(model).state_dict(),
                    "optimizer": opt.optimizer.state_dict()
                    if hasattr(opt, "optimizer")
                    else opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "history": history,
                    "config": asdict(cfg),
                },
            )
        acc.wait_for_everyone()
    if history and history[-1]["epoch"] < args.epochs:
        print(
            f"  stopped after epoch {history[-1]['epoch']} of {args.epochs}; continue with --resume"
        )
        acc.end_training()
        return 0
    if acc.is_main_process:
        save_recon(acc.unwrap_model(model), cfg, args.out_dir, "last_model")
        summary = {
            "embed_model": args.embed_model,
            "n_train": n_train,
            "n_val": n_val,
            "best_val_mse_standardised" if args.normalize else "best_val_mse": best,
            "history": history,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json_atomic(args.out_dir / "train_summary.json", summary)
        write_manifest(
            args.out_dir,
            stage="train_recon",
            config=asdict(cfg),
            vec_dir=str(args.vec_dir),
            args=vars(args),
            best_val_mse=best,
        )
        print(
            f"  best held-out MSE {best:.4f} ({'standardised' if args.normalize else 'raw'}); "
            f"saved to {args.out_dir}"
        )
    acc.end_training()
    return 0


def eval_only(args, sources) -> int:
    model, cfg = load_recon(args.out_dir, args.embed_model)
    args.val_fraction, args.seed = cfg.val_fraction, cfg.split_seed
    stats = NormStats.load(args.out_dir / STATS_NAME)
    val = validate(model, sources, stats, args, torch.device("cpu"))
    print(json.dumps({"embed_model": cfg.embed_model, "val_mse": val}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
