"""Benchmark: greedy captions per second from stored E_post at batch 1 vs batch 16 (`mini`).

    .venv/bin/python -m bench.bench_captions [--n 48] [--max_new_tokens 24]

Same images, same E_post, same prompt; also checks that both batch sizes give the same
captions (the prefix has a fixed length, so batched generation needs no padding).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from src.data.sample import make_scene, render_scene
from src.models import load_adapter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--out", type=Path, default=Path("results/bench_captions.json"))
    args = p.parse_args(argv)
    images: list[Image.Image] = [render_scene(make_scene(np.random.default_rng([7, i])))
                                 for i in range(args.n)]  # fmt: skip
    adapter = load_adapter("mini")
    inputs = adapter.preprocessor(images, "Describe the image.")
    post = adapter.encode(inputs).post
    result: dict = {"images": args.n, "max_new_tokens": args.max_new_tokens,
                    "torch_threads": torch.get_num_threads()}  # fmt: skip
    captions = {}
    for bs in (1, 16):
        adapter.generate(
            {**inputs, "pixel_values": inputs["pixel_values"][:1]}, post[:1], max_new_tokens=4
        )  # warm-up
        t0 = time.perf_counter()
        out = []
        for s in range(0, args.n, bs):
            out += adapter.generate(inputs, post[s : s + bs], max_new_tokens=args.max_new_tokens)
        secs = time.perf_counter() - t0
        captions[bs] = out
        result[f"batch_{bs}_captions_per_s"] = round(args.n / secs, 2)
    result["same_captions"] = captions[1] == captions[16]
    result["speedup_16_vs_1"] = round(result["batch_16_captions_per_s"]
                                      / result["batch_1_captions_per_s"], 2)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
