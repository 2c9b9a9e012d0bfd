"""Benchmark: TopK SAE training on one LLM layer of `mini` (SmolLM2-135M): our loop over cached
text activations (src/sae/train.py, sparsify's SparseCoder) against sparsify's own Trainer,
which runs the LM forward itself on token ids.

    .venv/bin/python -m bench.bench_sae [--texts 256] [--layer 11] [--epochs 10] [--target_fvu 0.2]

Reports activations (tokens) per second of SAE training, the peak resident memory, the time to
reach --target_fvu (training FVU), and the load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from src.data.images import list_images, read_captions
from src.models import load_adapter
from src.sae.runs import text_activations
from src.sae.train import SAEConfig, train_sparse_coder


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _captions(root: Path, shard: str, n: int) -> list[str]:
    out: list[str] = []
    for rec in list_images(root, shard):
        out += read_captions(rec.caption_path) if rec.caption_path else []
        if len(out) >= n:
            break
    return out[:n]


def ours(adapter, texts, args) -> dict:
    t0 = time.perf_counter()
    x = text_activations(adapter, texts, [args.layer], "Describe the image.", 32, False)
    x = x[args.layer]
    t_acts = time.perf_counter() - t0
    cfg = SAEConfig(expansion_factor=args.expansion, k=args.k, epochs=args.epochs)
    res = train_sparse_coder(x, cfg, adapter.device)
    reach = next((i + 1 for i, f in enumerate(res.fvu_per_epoch) if f <= args.target_fvu), None)
    per_epoch = res.seconds / len(res.fvu_per_epoch)
    return {"tokens": x.shape[0], "seconds_activations": round(t_acts, 2),
            "seconds_training": round(res.seconds, 2),
            "activations_per_s": round(x.shape[0] * len(res.fvu_per_epoch) / res.seconds, 1),
            "final_fvu": round(res.fvu_per_epoch[-1], 4),
            "seconds_to_target": None if reach is None else round(reach * per_epoch, 2),
            "epochs_to_target": reach}  # fmt: skip


def sparsify_trainer(lm, tok, texts, args) -> dict:
    """sparsify's Trainer on the same texts as plain documents (it tokenises nothing itself:
    a datasets.Dataset of input_ids rows of one length)."""
    from datasets import Dataset
    from sparsify import SaeConfig, TrainConfig, Trainer

    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = min(len(i) for i in ids)
    rows = [i[:width] for i in ids] * args.epochs  # the Trainer makes one pass
    ds = Dataset.from_dict({"input_ids": rows}).with_format("torch")
    with tempfile.TemporaryDirectory() as d:
        cfg = TrainConfig(SaeConfig(expansion_factor=args.expansion, k=args.k),
                          batch_size=max(1, 256 // width), layers=[args.layer],
                          log_to_wandb=False, save_dir=d, save_every=10**9, optimizer="adam",
                          lr=2e-3, lr_warmup_steps=0)  # fmt: skip
        trainer = Trainer(cfg, ds, lm)
        t0 = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - t0
    tokens = len(rows) * width
    return {"tokens_seen": tokens, "seconds": round(seconds, 2),
            "activations_per_s_including_lm_forward": round(tokens / seconds, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=Path, default=Path("data/sample"))
    p.add_argument("--shard", default="synth_00")
    p.add_argument("--texts", type=int, default=256)
    p.add_argument("--layer", type=int, default=11)
    p.add_argument("--expansion", type=int, default=4)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--target_fvu", type=float, default=0.2)
    p.add_argument("--skip_trainer", action="store_true", help="only our loop")
    p.add_argument("--out", type=Path, default=Path("results/bench_sae.json"))
    args = p.parse_args(argv)
    texts = _captions(args.images, args.shard, args.texts)
    adapter = load_adapter("mini")
    result = {"load_before": os.getloadavg(), "torch_threads": torch.get_num_threads(),
              "texts": len(texts), "layer": args.layer, "features": 576 * args.expansion,
              "k": args.k, "epochs": args.epochs, "target_fvu": args.target_fvu}  # fmt: skip
    result["ours"] = ours(adapter, texts, args)
    result["peak_rss_mib_after_ours"] = round(_peak_mib(), 1)
    if not args.skip_trainer:
        result["sparsify_trainer"] = sparsify_trainer(adapter.model.lm, adapter.text_tokenizer(),
                                                      texts, args)  # fmt: skip
        result["peak_rss_mib_after_trainer"] = round(_peak_mib(), 1)
    result["load_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
