"""Fitting a LLaVA-style connector: cached frozen vision tokens -> MLP -> frozen LM caption loss,
and the held-out check that the result names what it sees.

It lives beside src/models/connector.py because it trains that model and nothing else, and
writes its training record (command, data, metrics) into the connector's own config.json; the
stage src/train/train_connector only parses flags and calls fit_connector.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.data.extraction import extract_shard
from src.data.images import ImageRecord, list_images, read_captions, train_eval_shards
from src.data.io import (
    atomic_write,
    load_torch,
    save_torch_atomic,
    write_json_atomic,
    write_manifest,
    write_text_atomic,
)
from src.data.paths import connector_feature_dir
from src.data.sample import COLOURS, SHAPES, read_labels
from src.data.vectors import iter_chunks
from src.errors import UserError
from src.metrics.captions import attribute_accuracy, first_mention, majority_baseline
from src.models.connector import ConnectorArch, ConnectorConfig, MLPConnector, save_connector
from src.models.mini import ComposedVLM, build_composed

CHECKPOINT = "checkpoint.pt"  # in the work folder, beside the feature cache
EVAL_CSV, EVAL_JSON, LOSSES = "eval_captions.csv", "eval.json", "losses.txt"


@dataclass
class TrainConfig:
    """The optimisation of a connector (train_connector's training flags)."""

    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    batch_size: int = field(default=16, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at the last step"})
    warmup: int = field(default=30, metadata={"help": "linear warm-up steps, then cosine decay"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip"})
    seed: int = field(default=0, metadata={"help": "seeds initialisation, batches, captions"})
    checkpoint_every: int = field(
        default=50, metadata={"help": "steps between checkpoints (a killed run resumes there)"}
    )


@dataclass
class ConnectorRecipe:
    """What a connector is trained and judged on (train_connector's data and run flags)."""

    root: Path = field(
        default_factory=lambda: Path("data/sample"), metadata={"help": "captioned image root"}
    )
    train_shards: list[str] | None = field(
        default=None,
        metadata={"help": "shards to train on (default: all shards not in --eval_shards)"},
    )
    eval_shards: list[str] = field(default_factory=list, metadata={"help": "held-out shards"})
    eval_n: int = field(default=200, metadata={"help": "held-out images to caption"})
    hidden_dim: int | None = field(
        default=None, metadata={"help": "MLP hidden width (default: the LM's width)"}
    )
    max_new_tokens: int = field(default=24, metadata={"help": "longest held-out caption"})
    feature_batch_size: int = field(
        default=32, metadata={"help": "images per batch when caching the tower's features"}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "let transformers run code shipped with a hub model"}
    )
    fresh: bool = field(default=False, metadata={"help": "ignore an existing checkpoint"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.min_lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def batch_indices(n: int, step: int, cfg: TrainConfig) -> list[int]:
    """The examples of one step, a function of (seed, step) only, so a resumed run draws the
    same batches as an uninterrupted one."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    return torch.randperm(n, generator=g)[: cfg.batch_size].tolist()


def _settings(cfg: TrainConfig, connector: MLPConnector) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it (checkpoint_every aside, every
    setting changes the result)."""
    train = {k: v for k, v in asdict(cfg).items() if k != "checkpoint_every"}
    arch = {k: v for k, v in asdict(connector.config).items() if k != "training"}
    return {"train": train, "connector": arch}


def train_connector(
    model: ComposedVLM,
    features: torch.Tensor,
    captions: list[list[str]],
    cfg: TrainConfig,
    *,
    checkpoint: Path,
    progress: bool = True,
    on_checkpoint: Callable[[int], None] | None = None,
) -> list[float]:
    """Train model.connector in place on features (N, T, D_vision) and their captions.

    Resumes from `checkpoint` if it exists (weights, optimizer, step, losses); one made with
    other settings is a UserError. Returns the loss per step. The caption of an image with
    several reference lines is drawn per (seed, step).
    """
    if len(features) != len(captions):
        raise ValueError(f"{len(features)} feature rows but {len(captions)} caption lists")
    if any(not c for c in captions):
        raise ValueError("every training image needs at least one caption")
    connector = model.connector
    connector.train().requires_grad_(True)
    opt = torch.optim.AdamW(connector.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    settings = _settings(cfg, connector)
    losses: list[float] = []
    start = 0
    if checkpoint.exists():
        state = load_torch(checkpoint)
        old = state.get("settings") or {}
        differ = [
            f"{part}.{k}"
            for part, values in settings.items()
            for k, v in values.items()
            if (old.get(part) or {}).get(k) != v
        ]
        if differ:
            raise UserError(
                f"{checkpoint} was made by a run with other settings ({', '.join(differ)}); "
                "pass --fresh to start afresh, or another --work_dir"
            )
        connector.load_state_dict(state["connector"])
        opt.load_state_dict(state["optimizer"])
        start, losses = int(state["step"]), list(state["losses"])
    device = next(connector.parameters()).device
    dtype = next(connector.parameters()).dtype
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="train connector",
        disable=not progress,
    )
    t0 = time.perf_counter()
    for step in bar:
        idx = batch_indices(len(features), step, cfg)
        rng = random.Random(cfg.seed * 1_000_003 + step)
        caps = [captions[i][rng.randrange(len(captions[i]))] for i in idx]
        x = features[idx].to(device, dtype)  # (B, T, D_vision)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model.caption_loss(connector(x), caps, connector.config.prompt).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(connector.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(
            loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}",
            s_per_step=f"{(time.perf_counter() - t0) / (step + 1 - start):.2f}",
        )
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_torch_atomic(
                checkpoint,
                {
                    "connector": connector.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step + 1,
                    "losses": losses,
                    "settings": settings,
                },
            )
            if on_checkpoint is not None:
                on_checkpoint(step + 1)
    connector.eval().requires_grad_(False)
    return losses


# --------------------------------------------------------------------------------------------
# The whole run: frozen parts, cached features, training, held-out captions, files


def _compose(
    arch: ConnectorArch, recipe: ConnectorRecipe, device: torch.device, dtype: torch.dtype
) -> tuple[ComposedVLM, Any]:
    """The frozen tower and LM with a fresh connector sized from them, and the image transform."""
    placeholder = ConnectorConfig(**asdict(arch), in_dim=1, out_dim=1, hidden_dim=1)
    # Build the frozen parts once around a placeholder connector, then size the real one.
    model, transform = build_composed(
        MLPConnector(placeholder),
        device=device,
        dtype=dtype,
        trust_remote_code=recipe.trust_remote_code,
        check_dims=False,
    )
    out_dim = model.lm.config.hidden_size
    cfg = ConnectorConfig(
        **asdict(arch),
        in_dim=model.vision.dim,
        out_dim=out_dim,
        hidden_dim=recipe.hidden_dim or out_dim,
    )
    model.connector = MLPConnector(cfg).to(device=device, dtype=dtype)
    return model, transform


def cache_features(
    model: ComposedVLM,
    transform: Any,
    records: list[ImageRecord],
    folder: Path,
    recipe: ConnectorRecipe,
) -> tuple[list[str], torch.Tensor]:
    """Frozen tower features of `records`, computed once into vector chunks: keys, (N, T, D)."""

    def encode(inputs: dict, _items: list) -> dict:
        device = next(model.vision.parameters()).device
        dtype = next(model.vision.parameters()).dtype
        with torch.inference_mode():
            return {"pre": list(model.vision(inputs["pixel_values"].to(device, dtype)).unbind(0))}

    cfg = model.connector.config
    extract_shard(
        records,
        folder,
        encode=encode,
        preprocess=lambda images: {"pixel_values": transform(images)},
        kinds=("pre",),
        batch_size=recipe.feature_batch_size,
        num_workers=0,  # the transform is a closure; decoding 2k small images is not the cost
        save_every=1000,
        save_dtype=torch.float32,
        skip_existing=True,
        identity={"vision": cfg.vision, "grid": cfg.grid},
        manifest_fields={"stage": "train_connector features"},
        progress=not recipe.no_progress,
    )
    keys: list[str] = []
    rows = []
    for _, chunk in iter_chunks(folder, "pre"):
        keys += chunk.keys
        rows += chunk.items()
    return keys, torch.stack(rows) if rows else torch.zeros(0)


def load_split(
    model: ComposedVLM,
    transform: Any,
    recipe: ConnectorRecipe,
    shards: list[str],
    work_dir: Path,
) -> tuple[list[ImageRecord], torch.Tensor]:
    """The images of `shards` and their cached features (N, T, D_vision), in one order."""
    cfg = model.connector.config
    recs, feats = [], []
    for shard in shards:
        records = list_images(recipe.root, shard)
        folder = connector_feature_dir(work_dir, cfg.vision, cfg.grid, shard)
        keys, x = cache_features(model, transform, records, folder, recipe)
        by_key = {r.key: r for r in records}
        recs += [by_key[k] for k in keys]
        feats.append(x)
    return recs, torch.cat(feats)


def evaluate(
    model: ComposedVLM,
    records: list[ImageRecord],
    feats: torch.Tensor,
    train_records: list[ImageRecord],
    recipe: ConnectorRecipe,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Greedy captions of held-out scenes; colour / shape of the first object vs. labels."""
    rows = []
    labelled = [(r, f) for r, f in zip(records, feats, strict=True) if read_labels(r.path)]
    labelled = labelled[: recipe.eval_n]
    device = next(model.connector.parameters()).device
    dtype = next(model.connector.parameters()).dtype
    prompt = model.connector.config.prompt
    for s in tqdm(range(0, len(labelled), 16), desc="eval captions", disable=recipe.no_progress):
        part = labelled[s : s + 16]
        with torch.inference_mode():
            post = model.connector(torch.stack([f for _, f in part]).to(device, dtype))
            caps = model.generate(post, prompt, recipe.max_new_tokens)
        for (r, _), cap in zip(part, caps, strict=True):
            first = read_labels(r.path)["objects"][0]
            rows.append(
                {
                    "shard": r.shard,
                    "key": r.key,
                    "reference": " | ".join(read_captions(r.caption_path)),
                    "generated": cap,
                    "colour": first["colour"],
                    "shape": first["shape"],
                    "colour_said": first_mention(cap, COLOURS),
                    "shape_said": first_mention(cap, SHAPES),
                }
            )
    df = pd.DataFrame(rows)
    if df.empty:
        return df, {"n": 0, "note": "no labelled held-out scenes"}
    train_first = [lab["objects"][0] for r in train_records if (lab := read_labels(r.path))]
    summary: dict[str, Any] = {"n": len(df)}
    for attr, vocab in (("colour", COLOURS), ("shape", SHAPES)):
        value, base = majority_baseline([o[attr] for o in train_first], df[attr].tolist())
        summary[attr] = {
            "accuracy": attribute_accuracy(df["generated"].tolist(), df[attr].tolist(), vocab),
            "majority_value": value,
            "majority_baseline": base,
            "uniform_chance": 1 / len(vocab),
        }
    return df, summary


def fit_connector(
    arch: ConnectorArch,
    recipe: ConnectorRecipe,
    train: TrainConfig,
    *,
    out_dir: Path,
    work_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
    command: str,
    record: dict[str, Any],
) -> dict[str, Any]:
    """Train a connector for `arch` and save it to out_dir (connector.safetensors + config.json,
    whose `training` records `command`, the data and the held-out result); the feature cache,
    checkpoint, losses, held-out captions and the manifest (with `record`) go to work_dir.
    Returns the connector's training record."""
    t0 = time.perf_counter()
    train_shards, eval_shards = train_eval_shards(recipe.root, recipe.train_shards,
                                                 recipe.eval_shards)  # fmt: skip
    torch.manual_seed(train.seed)
    model, transform = _compose(arch, recipe, device, dtype)
    records, x = load_split(model, transform, recipe, train_shards, work_dir)
    captions = [read_captions(r.caption_path) for r in records]
    keep = [i for i, c in enumerate(captions) if c]
    if len(keep) < len(captions):
        print(f"note: {len(captions) - len(keep)} training images without caption are left out")
    records, x, captions = [records[i] for i in keep], x[keep], [captions[i] for i in keep]
    shape = tuple(x.shape[1:])
    print(f"training on {len(records)} images from {', '.join(train_shards)}; tokens {shape}")
    checkpoint = work_dir / CHECKPOINT
    if recipe.fresh:
        checkpoint.unlink(missing_ok=True)
    losses = train_connector(
        model, x, captions, train, checkpoint=checkpoint, progress=not recipe.no_progress
    )
    seconds = time.perf_counter() - t0
    heldout: dict[str, Any] = {}
    if eval_shards:
        eval_records, eval_x = load_split(model, transform, recipe, eval_shards, work_dir)
        df, heldout = evaluate(model, eval_records, eval_x, records, recipe)
        atomic_write(work_dir / EVAL_CSV, lambda tmp: df.to_csv(tmp, index=False))
    model.connector.config.training = {
        "command": command,
        "train_shards": train_shards,
        "eval_shards": eval_shards,
        "n_train": len(records),
        "config": asdict(train),
        "final_loss_mean_last_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "heldout": heldout,
        "seconds": round(seconds, 1),
    }
    save_connector(model.connector, out_dir)
    write_json_atomic(work_dir / EVAL_JSON, heldout)
    write_text_atomic(work_dir / LOSSES, "\n".join(f"{v:.5f}" for v in losses) + "\n")
    write_manifest(work_dir, **record, connector=out_dir, heldout=heldout)
    return model.connector.config.training


def report_lines(training: dict[str, Any], out_dir: Path) -> list[str]:
    """What a finished run prints: where the connector went, how it did on held-out scenes."""
    lines = [f"connector saved to {out_dir} ({training['seconds']:.0f}s)"]
    heldout = training["heldout"]
    for attr in ("colour", "shape") if heldout.get("n") else ():
        s = heldout[attr]
        lines.append(
            f"  held-out {attr}: {s['accuracy']:.1%} named right vs. majority baseline "
            f"{s['majority_baseline']:.1%} ({s['majority_value']!r}), n={heldout['n']}"
        )
    return lines
