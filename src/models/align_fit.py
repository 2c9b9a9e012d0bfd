"""Fitting a dual encoder's adapters (seed E, phase 1): cached frozen features of both towers,
MRL InfoNCE under accelerate, the checkpoint picked on a validation split, retrieval reported on
a held-out test split. The stage src/train/train_align parses flags and calls build_pairs,
train_adapters and write_outputs.

Resumable: a checkpoint every --checkpoint_every epochs (and after the last) holds the adapters,
the optimizer, the best state so far and the history; batches, captions and dropout are
functions of (seed, epoch), so a run killed at any moment and resumed from its last checkpoint
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from src.data.io import load_torch, save_torch_atomic
from src.errors import UserError
from src.metrics.contrastive import mrl_info_nce
from src.metrics.retrieval import retrieval_rows
from src.models.dual_encoder import DualAdapters, DualEncoderConfig

CHECKPOINT = "checkpoint.pt"


@dataclass
class AlignTrain:
    """The optimisation and the splits (train_align's training flags)."""

    epochs: int = field(default=40, metadata={"help": "passes over the training images"})
    batch_size: int = field(default=256, metadata={"help": "image-caption pairs per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak AdamW learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    warmup_frac: float = field(default=0.05, metadata={"help": "share of steps warming up"})
    val_fraction: float = field(
        default=0.1, metadata={"help": "images held out to pick the checkpoint"}
    )
    test_fraction: float = field(default=0.2, metadata={"help": "images held out to report on"})
    seed: int = field(default=0, metadata={"help": "initialisation, batches, captions, dropout"})
    split_seed: int = field(default=0, metadata={"help": "the hash split of image keys"})
    n_boot: int = field(default=1000, metadata={"help": "bootstrap resamples for the CIs"})
    checkpoint_every: int = field(
        default=5, metadata={"help": "epochs between checkpoints (and after the last one)"}
    )
    stop_after: int | None = field(
        default=None, metadata={"help": "stop after this many epochs of this run (resume later)"}
    )
    fresh: bool = field(default=False, metadata={"help": "ignore an existing checkpoint"})


@dataclass
class PairData:
    """Features of one split: images (N, D_v); captions' text features (M, D_t) with owner (M,)
    the row of each caption's image."""

    image: torch.Tensor
    text: torch.Tensor
    owner: torch.Tensor

    def caption_lists(self) -> list[torch.Tensor]:
        """Per image, the indices of its captions."""
        order = torch.argsort(self.owner, stable=True)
        counts = torch.bincount(self.owner, minlength=len(self.image)).tolist()
        return list(torch.split(order, counts))


def _lr(step: int, total: int, cfg: AlignTrain) -> float:
    warm = max(1, round(cfg.warmup_frac * total))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def embed(
    adapters: DualAdapters, data: PairData, radius: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit joint-space vectors (N, r), (M, r) of a split, adapters in eval mode."""
    was = adapters.training
    adapters.eval()
    with torch.no_grad():
        dev = next(adapters.parameters()).device
        zi, zt = adapters.image(data.image.to(dev)), adapters.text(data.text.to(dev))
    adapters.train(was)
    r = radius or zi.shape[1]
    return F.normalize(zi[:, :r].float().cpu(), dim=-1), F.normalize(
        zt[:, :r].float().cpu(), dim=-1
    )


def retrieval_table(
    adapters: DualAdapters, data: PairData, n_boot: int, seed: int = 0
) -> pd.DataFrame:
    """Both directions' R@1/5/10 and MRR per MRL radius, with CIs and chance levels."""
    rows = []
    for r in adapters.config.radii:
        zi, zt = embed(adapters, data, r)
        rows += [
            {"radius": r, **row}
            for row in retrieval_rows(zt @ zi.T, data.owner, n_boot=n_boot, seed=seed)
        ]
    return pd.DataFrame(rows)


def val_score(adapters: DualAdapters, data: PairData) -> float:
    """The checkpoint criterion: mean of R@1, R@5, R@10 over both directions, full width."""
    zi, zt = embed(adapters, data)
    rows = retrieval_rows(zt @ zi.T, data.owner, n_boot=0)
    return sum(r["value"] for r in rows if r["metric"] != "MRR") / 6


def _accelerator(device: str) -> Any:
    from accelerate import Accelerator

    from src.runtime import resolve_device

    return Accelerator(cpu=resolve_device(device).type == "cpu")


def _settings(cfg: AlignTrain, config: DualEncoderConfig) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it."""
    train = {
        k: v
        for k, v in asdict(cfg).items()
        if k not in ("stop_after", "fresh", "n_boot", "checkpoint_every")
    }
    arch = {k: v for k, v in asdict(config).items() if k != "training"}
    return {"train": train, "arch": arch}


@dataclass
class AlignResult:
    adapters: DualAdapters
    history: list[dict[str, float]]
    best_epoch: int
    finished: bool


def train_adapters(
    config: DualEncoderConfig,
    train: PairData,
    val: PairData,
    cfg: AlignTrain,
    *,
    work_dir: Path,
    device: str = "auto",
    progress: bool = True,
) -> AlignResult:
    """Train the adapters on `train`, keep the epoch with the best val_score; resumable from
    work_dir/checkpoint.pt. Returns the best adapters (eval mode) and the history."""
    acc = _accelerator(device)
    torch.manual_seed(cfg.seed)
    adapters = DualAdapters(config)
    opt = torch.optim.AdamW(adapters.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = len(train.image)
    if n < 2:
        raise UserError(f"{n} training image(s): contrastive training needs at least 2")
    per_epoch = max(1, n // cfg.batch_size) if n >= cfg.batch_size else 1
    total = per_epoch * cfg.epochs
    ckpt = Path(work_dir) / CHECKPOINT
    settings = _settings(cfg, config)
    start, history, best, best_state, best_epoch = 0, [], -1.0, None, 0
    if cfg.fresh:
        ckpt.unlink(missing_ok=True)
    if ckpt.exists():
        state = load_torch(ckpt)
        if state.get("settings") != settings:
            raise UserError(
                f"{ckpt} was made with other settings; pass --fresh or another --out_dir"
            )
        adapters.load_state_dict(state["adapters"])
        opt.load_state_dict(state["optimizer"])
        start, history, best = state["epoch"], state["history"], state["best"]
        best_state, best_epoch = state["best_state"], state["best_epoch"]
        print(f"  resumed from {ckpt} after epoch {start}", flush=True)
    adapters, opt = acc.prepare(adapters, opt)
    bare = acc.unwrap_model(adapters)
    captions = train.caption_lists()
    weights = config.weights()
    bar = tqdm(range(start, cfg.epochs), initial=start, total=cfg.epochs, desc="train_align",
               disable=not progress)  # fmt: skip
    for epoch in bar:
        if cfg.stop_after is not None and epoch - start >= cfg.stop_after:
            break
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout
        order = torch.randperm(n, generator=g)
        pick = torch.stack([c[torch.randint(len(c), (1,), generator=g)] for c in captions]).squeeze(
            1
        )
        adapters.train()
        losses = []
        for b in range(per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr(epoch * per_epoch + b, total, cfg)
            zi = adapters.image(train.image[idx].to(acc.device))
            zt = adapters.text(train.text[pick[idx]].to(acc.device))
            loss, _ = mrl_info_nce(zi, zt, bare.scale(), config.radii, weights)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            losses.append(loss.item())
        score = val_score(bare, val)
        history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                        "val_score": score, "logit_scale": bare.scale().item()})  # fmt: skip
        if score > best:
            best, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in bare.state_dict().items()}
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{score:.3f}")
        last = epoch + 1 == cfg.epochs or (
            cfg.stop_after is not None and epoch + 1 - start >= cfg.stop_after
        )
        if (epoch + 1) % cfg.checkpoint_every == 0 or last:
            inner = getattr(opt, "optimizer", opt)
            save_torch_atomic(ckpt, {"adapters": bare.state_dict(), "optimizer": inner.state_dict(),
                                     "epoch": epoch + 1, "history": history, "best": best,
                                     "best_state": best_state, "best_epoch": best_epoch,
                                     "settings": settings})  # fmt: skip
    finished = bool(history) and history[-1]["epoch"] >= cfg.epochs
    if best_state is not None:
        bare.load_state_dict(best_state)
    return AlignResult(bare.eval().requires_grad_(False), history, best_epoch, finished)


# --------------------------------------------------------------------------------------------
# The whole run: cached features, splits, training, the held-out test, files


@dataclass
class AlignData:
    """Where a dual encoder's data comes from (train_align's data flags)."""

    root: Path = field(
        default_factory=lambda: Path("data/sample"), metadata={"help": "captioned image root"}
    )
    shards: list[str] | None = field(default=None, metadata={"help": "only these shards"})
    vision_cache: Path | None = field(
        default=None,
        metadata={
            "help": "pooled vision features in extract_clip's layout (default "
            "<out_dir>/cache/vision; an extract_clip output of the same tower is reused)"
        },
    )
    text_cache: Path | None = field(
        default=None,
        metadata={
            "help": "another dual encoder's text-feature file (<its out_dir>/cache/text_<tower>"
            ".pt), reused when it holds the same tower and captions; never written"
        },
    )
    feature_batch_size: int = field(default=32, metadata={"help": "images per feature batch"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})


def build_pairs(
    data: AlignData,
    arch: Any,
    cfg: AlignTrain,
    out_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[dict[str, PairData], dict[str, Any]]:
    """{train, val, test} PairData and a record of the data (counts, skipped files, sources)."""
    from src.data.images import list_shards
    from src.data.pooled import captions_of, pooled_features, split_of, text_features

    shards = data.shards or list_shards(data.root)
    cache = data.vision_cache or out_dir / "cache" / "vision"
    pooled = pooled_features(data.root, shards, arch.vision, cache, pool=arch.vision_pool,
                             device=device, dtype=dtype, batch_size=data.feature_batch_size,
                             progress=not data.no_progress)  # fmt: skip
    caps, missing = captions_of(pooled)
    keep = [i for i, c in enumerate(caps) if c]
    texts = [t for i in keep for t in caps[i]]
    owner_all = torch.tensor([j for j, i in enumerate(keep) for _ in caps[i]], dtype=torch.long)
    text_cache = out_dir / "cache" / f"text_{arch.text.replace('/', '--')}.pt"
    tfeat = text_features(texts, arch.text, text_cache, device=device, dtype=dtype,
                          reuse=data.text_cache)  # fmt: skip
    split = [
        split_of(pooled.keys[i], cfg.val_fraction, cfg.test_fraction, cfg.split_seed) for i in keep
    ]
    out = {}
    for name in ("train", "val", "test"):
        rows = [j for j, s in enumerate(split) if s == name]
        remap = torch.full((len(keep),), -1, dtype=torch.long)
        remap[rows] = torch.arange(len(rows))
        sel = remap[owner_all] >= 0
        out[name] = PairData(
            pooled.features[[keep[j] for j in rows]], tfeat[sel], remap[owner_all[sel]]
        )
    record = {
        "shards": shards, "n_images": len(pooled.keys) + len(pooled.skipped),
        "n_pairs_images": len(keep), "n_captions": len(texts),
        "split": {k: {"images": len(v.image), "captions": len(v.text)} for k, v in out.items()},
        "skipped": pooled.skipped + missing, "vision_source": pooled.source,
        "dims": {"vision": int(pooled.features.shape[1]), "text": int(tfeat.shape[1])},
    }  # fmt: skip
    return out, record


def write_outputs(
    fit: AlignResult,
    test: PairData,
    cfg: AlignTrain,
    record: dict[str, Any],
    *,
    out_dir: Path,
    tables: Path,
    command: str,
    manifest: dict[str, Any],
    seconds: float,
) -> pd.Series:
    """Score the best adapters on the test split, write the tables (retrieval.csv per radius,
    history.csv), the dual encoder (its config's `training` records the command, data, best
    epoch and test numbers) and the manifest (skipped files by reason), last. Returns the
    full-width test numbers by (direction, metric)."""
    from src.data.io import atomic_write, write_manifest
    from src.models.dual_encoder import save_dual

    table = retrieval_table(fit.adapters, test, cfg.n_boot)
    tables.mkdir(parents=True, exist_ok=True)
    atomic_write(tables / "retrieval.csv", lambda tmp: table.to_csv(tmp, index=False))
    hist = pd.DataFrame(fit.history)
    atomic_write(tables / "history.csv", lambda tmp: hist.to_csv(tmp, index=False))
    config = fit.adapters.config
    full = table[table.radius == config.d_align].set_index(["direction", "metric"])["value"]
    config.training = {
        "command": command,
        "data": {k: v for k, v in record.items() if k != "skipped"},
        "n_skipped": len(record["skipped"]),
        "best_epoch": fit.best_epoch,
        "config": asdict(cfg),
        "test_full_radius": {f"{d} {m}": v for (d, m), v in full.items()},
        "seconds": round(seconds, 1),
    }
    save_dual(fit.adapters, out_dir)
    write_manifest(out_dir, **manifest, upstream=record["vision_source"], config=asdict(config),
                   skipped=record["skipped"], tables=tables)  # fmt: skip
    return full
