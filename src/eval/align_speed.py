"""Stage: speed of each vision encoder, LLM and projector per batch size (seed A's `speed`).

For every component and --batch_sizes value: --warmup untimed runs, then --iters timed runs of
the forward on inputs already on the device (latency p50 / p95, throughput at the median), and
the peak memory of those runs NET OF THE WEIGHTS (src/speed.py: RSS over the post-load baseline
on CPU, the allocator's peak on CUDA, timed with CUDA events after synchronisation there). Image
preprocessing (decode to pixels, resize, normalise) is timed apart, on the CPU where it runs.

  encoder    the vision tower's token forward: (B, 3, H, W) -> (B, T, D)
  preprocess the encoder's image transform on B PIL images (component 'preprocess')
  llm        one prefill forward over B sequences of --seq_len tokens (no cache, no sampling)
  projector  a connector (default mini's MLP) on B x its grid^2 tokens

Writes <out_dir>/speed.csv (one row per component and batch size), speed_runs.csv (every timed
run) and manifest.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from src.data.images import list_images, load_image, select_shards
from src.data.io import atomic_write, write_manifest
from src.data.paths import align_speed_dir, align_table
from src.errors import UserError
from src.models.craft import CRAFT
from src.models.towers import EFFICIENTNET, GEMMA3, SMOLLM2, suspend_pooled_features
from src.runtime import add_runtime_args, resolve_device, resolve_dtype
from src.speed import measure, weights_bytes
from src.stage import Stage

CPU = torch.device("cpu")
# mini's connector folder (src.models.mini.DEFAULT_CONNECTOR_DIR; not imported: the plan is
# read without model code)
MINI_CONNECTOR = Path(__file__).resolve().parents[1] / "models" / "weights" / "mini"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.align_speed",
        description="Latency p50/p95, throughput and peak memory net of weights of vision "
        "encoders, LLMs and projectors per batch size; preprocessing timed apart.",
    )
    p.add_argument("--out_dir", type=Path, default=align_speed_dir(Path("results")))
    p.add_argument("--encoders", nargs="*", default=[EFFICIENTNET, CRAFT],
                   help="offline towers (efficientnet-lite0, craft-vgg16) or hub ids/paths of "
                   "CLIP / SigLIP / DINOv2 towers")  # fmt: skip
    p.add_argument("--llms", nargs="*", default=[SMOLLM2, GEMMA3],
                   help="offline LMs (smollm2-135m-instruct, gemma3-270m) or causal LM "
                   "ids")  # fmt: skip
    p.add_argument("--projectors", nargs="*", type=Path, default=[MINI_CONNECTOR],
                   help="connector folders (default: mini's)")  # fmt: skip
    p.add_argument("--batch_sizes", "--batch-sizes", nargs="+", type=int, default=[1, 4])
    p.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed runs before timing (>= 1: the first makes the weights resident)",
    )
    p.add_argument("--iters", type=int, default=10, help="timed runs per batch size")
    p.add_argument("--seq_len", type=int, default=32, help="LLM prefill length in tokens")
    p.add_argument("--grid", type=int, default=4, help="offline tower token grid per side")
    p.add_argument("--root", type=Path,
                   help="images to preprocess (default: seeded noise, 320 x 240)")  # fmt: skip
    add_runtime_args(p)
    p.add_argument("--trust_remote_code", action="store_true")
    p.add_argument("--skip_existing", action="store_true", help="keep a finished table")
    return p


@dataclass
class Bench:
    """One component: make(B) builds its inputs (untimed) and returns the call to time."""

    component: str  # encoder, preprocess, llm, projector
    name: str
    unit: str  # what one item of the batch is
    device: torch.device
    weights: int  # bytes
    load_s: float
    make: Callable[[int], Callable[[], Any]]


def sample_images(root: Path | None, n: int) -> list[Image.Image]:
    """n images: the first ones under root (cycled), or seeded noise images of 320 x 240."""
    if root is None:
        g = np.random.default_rng(0)
        return [Image.fromarray(g.integers(0, 256, (240, 320, 3), dtype=np.uint8))
                for _ in range(n)]  # fmt: skip
    recs = [r for s in select_shards(root, None, None) for r in list_images(root, s)][:n]
    if not recs:
        raise UserError(f"no images under {root}")
    return [load_image(recs[i % len(recs)]).image for i in range(n)]


def encoder_benches(name: str, args: argparse.Namespace, device, dtype, images) -> list[Bench]:
    from src.models.connector import ConnectorConfig
    from src.models.mini import build_vision

    t0 = time.perf_counter()
    spec = ConnectorConfig(vision=name, grid=args.grid, in_dim=0, out_dim=0, hidden_dim=0)
    tower, transform = build_vision(spec, trust_remote_code=args.trust_remote_code)
    tower = tower.to(device, dtype).eval()
    load_s = time.perf_counter() - t0

    def forward(b: int) -> Callable[[], Any]:
        px = transform(images[:b]).to(device, dtype)
        return lambda: tower(px)

    def preprocess(b: int) -> Callable[[], Any]:
        return lambda: transform(images[:b])

    return [Bench("encoder", name, "image", device, weights_bytes(tower), load_s, forward),
            Bench("preprocess", name, "image", CPU, 0, 0.0, preprocess)]  # fmt: skip


def llm_bench(name: str, args: argparse.Namespace, device, dtype) -> Bench:
    from src.models.towers import load_causal_lm

    t0 = time.perf_counter()
    lm, _ = load_causal_lm(name, device, dtype, trust_remote_code=args.trust_remote_code)
    load_s = time.perf_counter() - t0
    vocab = lm.config.get_text_config().vocab_size

    def forward(b: int) -> Callable[[], Any]:
        g = torch.Generator().manual_seed(b)
        ids = torch.randint(10, vocab, (b, args.seq_len), generator=g).to(device)
        return lambda: lm(input_ids=ids, use_cache=False)

    return Bench("llm", name, f"sequence of {args.seq_len} tokens", device, weights_bytes(lm),
                 load_s, forward)  # fmt: skip


def projector_bench(folder: Path, device, dtype) -> Bench:
    from src.models.connector import load_connector

    t0 = time.perf_counter()
    conn = load_connector(folder).to(device, dtype).eval()
    load_s, cfg = time.perf_counter() - t0, conn.config
    tokens = cfg.grid**2

    def forward(b: int) -> Callable[[], Any]:
        x = torch.randn(b, tokens, cfg.in_dim, generator=torch.Generator().manual_seed(b))
        x = x.to(device, dtype)
        return lambda: conn(x)

    name = Path(folder).name
    return Bench("projector", name, f"image ({tokens} tokens of {cfg.in_dim})", device,
                 weights_bytes(conn), load_s, forward)  # fmt: skip


def bench_rows(bench: Bench, args: argparse.Namespace, dtype) -> tuple[list[dict], list[dict]]:
    """One summary row per batch size, and every timed run."""
    rows, runs = [], []
    for b in sorted(set(args.batch_sizes)):
        with torch.inference_mode():
            m = measure(bench.make(b), bench.device, warmup=args.warmup, iters=args.iters)
        rows.append({"component": bench.component, "name": bench.name, "batch_size": b,
                     "unit": bench.unit, "device": str(bench.device),
                     "dtype": str(dtype).removeprefix("torch."), "warmup": args.warmup,
                     "iters": args.iters, **m.summary(b), "memory_measure": m.memory_measure,
                     "weights_mb": bench.weights / 2**20, "load_s": bench.load_s})  # fmt: skip
        runs += [{"component": bench.component, "name": bench.name, "batch_size": b, "run": i,
                  "seconds": s} for i, s in enumerate(m.seconds)]  # fmt: skip
    return rows, runs


def benches(args: argparse.Namespace, device, dtype) -> list[Callable[[], list[Bench]]]:
    """Each component built only when its turn comes (one set of weights loaded at a time)."""
    images = sample_images(args.root, max(args.batch_sizes))
    out: list[Callable[[], list[Bench]]] = []
    for e in args.encoders:
        out.append(lambda e=e: encoder_benches(e, args, device, dtype, images))
    for name in args.llms:
        out.append(lambda name=name: [llm_bench(name, args, device, dtype)])
    for folder in args.projectors:
        out.append(lambda folder=folder: [projector_bench(folder, device, dtype)])
    return out


def write_tables(out_dir: Path, rows: list[dict], runs: list[dict]) -> pd.DataFrame:
    table = pd.DataFrame(rows)
    for name, df in (("speed", table), ("speed_runs", pd.DataFrame(runs))):
        atomic_write(align_table(out_dir, name), lambda tmp, df=df: df.to_csv(tmp, index=False))
    return table


def run(args: argparse.Namespace) -> int:
    if min(args.batch_sizes) < 1 or args.iters < 1 or args.warmup < 1:
        raise UserError("--batch_sizes, --iters and --warmup must be >= 1")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    rows, runs = [], []
    with suspend_pooled_features():  # time the network, not the main job's pooled-vector cache
        for build in benches(args, device, dtype):
            for bench in build():
                r, t = bench_rows(bench, args, dtype)
                rows, runs = rows + r, runs + t
    table = write_tables(args.out_dir, rows, runs)
    write_manifest(args.out_dir, stage="align_speed", args=vars(args), device=str(device),
                   device_name=torch.cuda.get_device_name(device) if device.type == "cuda"
                   else platform.processor() or platform.machine(),
                   torch_threads=torch.get_num_threads(), n_rows=len(table))  # fmt: skip
    show = ["component", "name", "batch_size", "latency_ms_p50", "latency_ms_p95",
            "throughput_per_s", "peak_mem_net_mb", "weights_mb"]  # fmt: skip
    print(table[show].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"[align_speed] {len(table)} rows -> {align_table(args.out_dir, 'speed')}")
    return 0


STAGE = Stage(
    name="align_speed",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.root] if a.root else [],
    outputs=lambda a: [a.out_dir],
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
