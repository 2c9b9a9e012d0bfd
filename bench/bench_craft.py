"""Benchmark: CRAFT VGG16-BN trunk (`craft-vgg16`) load time, images/s and MACs per input size.

    .venv/bin/python -m bench.bench_craft [--sizes 224,160] [--batch_size 16] [--batches 3]

Times the token path (slice1-4, what the tower and the reference run) on random pixels after
one warm-up batch; counts conv multiply-accumulates per image with forward hooks (FLOPs = 2 x
MACs); records the load average, since other processes share these cores.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from src.models.craft import CraftDetector, CraftTokens


def conv_macs(model: torch.nn.Module, x: torch.Tensor, **kw: object) -> int:
    """Multiply-accumulates of every Conv2d in one forward of x (1, 3, H, W)."""
    total = 0

    def hook(m: torch.nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw_ = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw_

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(x, **kw)
    for h in handles:
        h.remove()
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="224,160")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument(
        "--contiguous", action="store_true", help="NCHW instead of the tower's channels_last"
    )
    p.add_argument("--out", type=Path, default=Path("results/bench_craft.json"))
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    tokens = CraftTokens(grid=None)
    result: dict = {
        "load_s": round(time.perf_counter() - t0, 2),
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": os.getloadavg(),
        "batch_size": args.batch_size,
        "channels_last": not args.contiguous,
        "sizes": {},
    }
    trunk = tokens.net
    run = tokens
    if args.contiguous:  # the same trunk in NCHW, bypassing the tower's channels_last input
        trunk.to(memory_format=torch.contiguous_format)

        def run(px: torch.Tensor) -> torch.Tensor:
            return trunk(px, fc7=False).conv5_2.flatten(2).transpose(1, 2)

    for size in [int(s) for s in args.sizes.split(",")]:
        one = torch.randn(1, 3, size, size)
        x = torch.randn(args.batch_size, 3, size, size)
        with torch.inference_mode():
            run(x)  # warm-up
            t, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.batches):
                out = run(x)
            dt, cpu = time.perf_counter() - t, time.process_time() - cpu
        n = args.batch_size * args.batches
        result["sizes"][size] = {
            "tokens": list(out.shape[1:]),
            "images_per_s": round(n / dt, 2),
            # CPU seconds per image over all threads: on a loaded machine wall time overstates
            # the cost; threads / cpu_s_per_image bounds the images/s of an idle one.
            "cpu_s_per_image": round(cpu / n, 3),
            "gmacs_tokens": round(conv_macs(trunk, one, fc7=False) / 1e9, 2),
            "gmacs_with_fc7": round(conv_macs(trunk, one) / 1e9, 2),
            "gmacs_detector": round(conv_macs(CraftDetector(), one) / 1e9, 2),
        }
        print(size, result["sizes"][size], flush=True)
    result["loadavg_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
