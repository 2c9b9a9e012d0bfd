"""Stage: train a LLaVA-style MLP connector between a frozen vision tower and a frozen LM.

Default: the `mini` connector (EfficientNet-Lite0 16 tokens -> MLP -> SmolLM2-135M-Instruct) on
the sample data. The frozen tower's features are cached once as vector chunks; training then
touches only the connector and the LM. Held-out synthetic scenes measure how often the greedy
caption names the first object's colour and shape, against the majority-class baseline.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.data.extraction import extract_shard
from src.data.images import ImageRecord, list_images, list_shards, read_captions
from src.data.io import write_json_atomic, write_manifest, write_text_atomic
from src.data.sample import COLOURS, SHAPES, read_labels
from src.data.vectors import iter_chunks
from src.metrics.captions import attribute_accuracy, first_mention, majority_baseline
from src.models.connector import ConnectorConfig, MLPConnector, save_connector
from src.models.mini import DEFAULT_CONNECTOR_DIR, build_composed
from src.models.towers import OFFLINE_LMS, SMOLLM2
from src.runtime import add_runtime_args, csv_list, resolve_device, resolve_dtype
from src.training.connector import TrainConfig, train_connector

FEATURES = "features"
CHECKPOINT = "checkpoint.pt"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.train.train_connector",
        description="Train an MLP connector (frozen vision tower, frozen LM, caption loss).",
    )
    p.add_argument("--root", type=Path, default=Path("data/sample"), help="captioned image root")
    p.add_argument(
        "--train_shards",
        type=csv_list,
        help="shards to train on (default: all shards not in --eval_shards)",
    )
    p.add_argument("--eval_shards", type=csv_list, default=[], help="held-out shards")
    p.add_argument("--eval_n", type=int, default=200, help="held-out images to caption")
    p.add_argument(
        "--out_dir",
        type=Path,
        default=DEFAULT_CONNECTOR_DIR,
        help="where connector.safetensors + config.json go",
    )
    p.add_argument(
        "--work_dir",
        type=Path,
        default=Path("data/train_connector"),
        help="feature cache, checkpoint and evaluation outputs",
    )
    p.add_argument(
        "--vision",
        default="efficientnet-lite0",
        help="efficientnet-lite0 (offline) or a hub id/path of a CLIP/SigLIP/DINOv2 tower",
    )
    p.add_argument("--grid", type=int, default=4, help="EfficientNet token grid (4 -> 16 tokens)")
    p.add_argument(
        "--lm",
        default=SMOLLM2,
        help=f"{' or '.join(OFFLINE_LMS)} (offline) or a causal LM hub id/path",
    )
    p.add_argument("--hidden_dim", type=int, help="MLP hidden width (default: the LM's width)")
    p.add_argument("--num_layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min_lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_every", type=int, default=50)
    p.add_argument("--prompt", default="Describe the image.")
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--feature_batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def cache_features(
    model, transform, records: list[ImageRecord], folder: Path, args: argparse.Namespace
) -> tuple[list[str], torch.Tensor]:
    """Frozen tower features of `records`, computed once into vector chunks: keys, (N, T, D)."""

    def encode(inputs: dict, _items: list) -> dict:
        device = next(model.vision.parameters()).device
        dtype = next(model.vision.parameters()).dtype
        with torch.inference_mode():
            return {"pre": list(model.vision(inputs["pixel_values"].to(device, dtype)).unbind(0))}

    extract_shard(
        records,
        folder,
        encode=encode,
        preprocess=lambda images: {"pixel_values": transform(images)},
        kinds=("pre",),
        batch_size=args.feature_batch_size,
        num_workers=0,  # the transform is a closure; decoding 2k small images is not the cost
        save_every=1000,
        save_dtype=torch.float32,
        skip_existing=True,
        identity={"vision": args.vision, "grid": args.grid},
        manifest_fields={"stage": "train_connector features"},
        progress=not args.no_progress,
    )
    keys: list[str] = []
    rows = []
    for _, chunk in iter_chunks(folder, "pre"):
        keys += chunk.keys
        rows += chunk.items()
    return keys, torch.stack(rows) if rows else torch.zeros(0)


def load_split(
    model, transform, root: Path, shards: list[str], args: argparse.Namespace
) -> tuple[list[ImageRecord], torch.Tensor]:
    feature_root = args.work_dir / FEATURES / f"{args.vision.replace('/', '--')}_g{args.grid}"
    recs, feats = [], []
    for shard in shards:
        records = list_images(root, shard)
        keys, x = cache_features(model, transform, records, feature_root / shard, args)
        by_key = {r.key: r for r in records}
        recs += [by_key[k] for k in keys]
        feats.append(x)
    return recs, torch.cat(feats)


def evaluate(model, records, feats, train_records, args) -> tuple[pd.DataFrame, dict]:
    """Greedy captions of held-out scenes; colour / shape of the first object vs. labels."""
    rows = []
    labelled = [(r, f) for r, f in zip(records, feats, strict=True) if read_labels(r.path)]
    labelled = labelled[: args.eval_n]
    device = next(model.connector.parameters()).device
    dtype = next(model.connector.parameters()).dtype
    for s in tqdm(range(0, len(labelled), 16), desc="eval captions", disable=args.no_progress):
        part = labelled[s : s + 16]
        with torch.inference_mode():
            post = model.connector(torch.stack([f for _, f in part]).to(device, dtype))
            caps = model.generate(post, args.prompt, args.max_new_tokens)
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
    summary: dict = {"n": len(df)}
    for attr, vocab in (("colour", COLOURS), ("shape", SHAPES)):
        value, base = majority_baseline([o[attr] for o in train_first], df[attr].tolist())
        summary[attr] = {
            "accuracy": attribute_accuracy(df["generated"].tolist(), df[attr].tolist(), vocab),
            "majority_value": value,
            "majority_baseline": base,
            "uniform_chance": 1 / len(vocab),
        }
    return df, summary


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        shards = list_shards(args.root)
        missing = sorted(set(args.eval_shards) - set(shards))
        if missing:
            raise ValueError(f"eval shard(s) {missing} not under {args.root}")
        train_shards = args.train_shards or [s for s in shards if s not in args.eval_shards]
        if not train_shards:
            raise ValueError(f"no training shards under {args.root}")
        device = resolve_device(args.device)
        dtype = resolve_dtype(args.dtype, device)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    probe = ConnectorConfig(
        in_dim=1,
        out_dim=1,
        hidden_dim=1,
        vision=args.vision,
        lm=args.lm,
        grid=args.grid,
        prompt=args.prompt,
    )
    # Build the frozen parts once with a placeholder connector, then size the real one.
    model, transform = build_composed(
        MLPConnector(probe),
        device=device,
        dtype=dtype,
        trust_remote_code=args.trust_remote_code,
        check_dims=False,
    )
    in_dim = model.vision.dim
    out_dim = model.lm.config.hidden_size
    cfg = ConnectorConfig(
        in_dim=in_dim,
        out_dim=out_dim,
        hidden_dim=args.hidden_dim or out_dim,
        num_layers=args.num_layers,
        vision=args.vision,
        lm=args.lm,
        grid=args.grid,
        prompt=args.prompt,
    )
    model.connector = MLPConnector(cfg).to(device=device, dtype=dtype)

    train_records, train_x = load_split(model, transform, args.root, train_shards, args)
    train_caps = [read_captions(r.caption_path) for r in train_records]
    keep = [i for i, c in enumerate(train_caps) if c]
    if len(keep) < len(train_caps):
        print(f"note: {len(train_caps) - len(keep)} training images without caption are left out")
    train_records = [train_records[i] for i in keep]
    train_x, train_caps = train_x[keep], [train_caps[i] for i in keep]
    print(
        f"training on {len(train_records)} images from {', '.join(train_shards)}; "
        f"tokens {tuple(train_x.shape[1:])}"
    )

    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup=args.warmup,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        prompt=args.prompt,
    )
    ckpt = args.work_dir / CHECKPOINT
    if args.fresh:
        ckpt.unlink(missing_ok=True)
    losses = train_connector(
        model, train_x, train_caps, tcfg, checkpoint=ckpt, progress=not args.no_progress
    )
    train_s = time.perf_counter() - t0

    summary: dict = {}
    if args.eval_shards:
        eval_records, eval_x = load_split(model, transform, args.root, args.eval_shards, args)
        df, summary = evaluate(model, eval_records, eval_x, train_records, args)
        df.to_csv(args.work_dir / "eval_captions.csv", index=False)
    cfg.training = {
        "command": "python -m src.train.train_connector " + shlex.join(argv or sys.argv[1:]),
        "train_shards": train_shards,
        "eval_shards": args.eval_shards,
        "n_train": len(train_records),
        "config": asdict(tcfg),
        "final_loss_mean_last_20": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "heldout": summary,
        "seconds": round(train_s, 1),
    }
    save_connector(model.connector, args.out_dir)
    write_json_atomic(args.work_dir / "eval.json", summary)
    write_text_atomic(args.work_dir / "losses.txt", "\n".join(f"{x:.5f}" for x in losses) + "\n")
    write_manifest(
        args.work_dir,
        stage="train_connector",
        connector=str(args.out_dir),
        args=vars(args),
        heldout=summary,
    )
    print(f"connector saved to {args.out_dir} ({train_s:.0f}s)")
    if summary.get("n"):
        for attr in ("colour", "shape"):
            s = summary[attr]
            print(
                f"  held-out {attr}: {s['accuracy']:.1%} named right vs. majority baseline "
                f"{s['majority_baseline']:.1%} ({s['majority_value']!r}), n={summary['n']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
