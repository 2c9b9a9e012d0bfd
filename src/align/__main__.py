"""`python -m src.align <command>`: seed A's CLI (compare, coral, multi-llm, speed, attention,
embedding, elas, e2e, all) with its flags, running our stages on our layout."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from src.align.commands import (
    COMMANDS,
    DEFAULT_ENCODERS,
    OFFLINE_LLMS,
    Plan,
    select_shards,
)
from src.errors import UserError


def get_args_parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {name:<10} {what}" for name, (what, _) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="python -m src.align",
        description=f"Seed A's alignment suite on our stages.\n\ncommands:\n{table}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=list(COMMANDS))
    p.add_argument(
        "--encoders",
        nargs="+",
        default=list(DEFAULT_ENCODERS),
        help="vision spaces: offline references (efficientnet-lite0, craft-vgg16), "
        "<vlm>.pre / <vlm>.post, seed names (clip siglip dinov2 internvit "
        "paligemma) or hub ids",
    )
    p.add_argument(
        "--llms",
        nargs="+",
        default=list(OFFLINE_LLMS),
        help="text models: smollm2 gemma3-270m minilm, seed names (llama llama3.1 "
        "qwen gemma3 internlm) or hub ids",
    )
    p.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=[-6, -1],
        help="LLM hidden-state indices (-1 = last)",
    )
    p.add_argument(
        "--n-samples", dest="n_samples", type=int, default=30, help="images per data type"
    )
    p.add_argument(
        "--data-root",
        dest="data_root",
        type=Path,
        default=Path("data/sample"),
        help="image root (<shard>/<stem>.jpg + .txt captions + .json labels)",
    )
    p.add_argument("--data", type=Path, default=Path("data"), help="where vectors go")
    p.add_argument(
        "--output-dir",
        dest="output_dir",
        type=Path,
        default=Path("results/align"),
        help="where tables go (one folder per stage)",
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--permutations", type=int, default=200)
    p.add_argument("--projectors", nargs="+", default=["linear", "mlp", "mlp2"])
    # speed / attention / embedding flags (their stages plug into COMMANDS)
    p.add_argument("--batch-sizes", dest="batch_sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--image", type=Path, nargs="+", help="attention: image files")
    p.add_argument("--text", nargs="+", help="attention: the texts to attend with")
    p.add_argument(
        "--joint",
        help="attention: a train_align dual-encoder folder or a CLIP / SigLIP id (default: the "
        "main job's data/align/efficientnet-lite0_minilm)",
    )
    p.add_argument("--method", choices=["tsne", "umap"], default="tsne", help="embedding map")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    shards = select_shards(args.data_root, args.n_samples)
    plan = Plan(
        args.data_root,
        args.data / "align" / f"n{args.n_samples}",
        args.output_dir,
        shards,
        args.n_samples,
        args.device,
        args.no_progress,
        args.layers,
    )
    try:
        steps = COMMANDS[args.command][1](args, plan)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_all = time.perf_counter()
    for title, stage_main, stage_argv in steps:
        print(f"== {title}", flush=True)
        rc = stage_main(stage_argv)
        if rc != 0:
            print(f"step '{title}' failed with exit code {rc}", file=sys.stderr)
            return rc
    print(
        f"== done in {time.perf_counter() - t_all:.0f}s: vectors in {plan.work}, "
        f"tables in {args.output_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
