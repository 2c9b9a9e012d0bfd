"""Benchmark: greedy captions from stored E_post, transformers' generate against ours.

    .venv/bin/python -m bench.bench_generation --vec_dir data/vector/mini/synth_03 \
        [--n 48] [--batch_size 16] [--repeats 3] [--threads 1] [--compare TABLE.csv]

before: transformers' generate (every row decodes until the batch's longest caption ends);
after: ComposedVLM.generate (a finished caption leaves the batch). Both on the same batches of
--batch_size stored E_post, interleaved --repeats times; prints the medians, their ratio,
whether the captions are identical, and the load average. Also the perturbation stages' batch
(the original and three mask levels) as four calls against one call of four times the rows.
--compare checks the captions against a committed caption table (sample/results/captions/...).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from src.models import load_for_vectors
from src.models.base import DEFAULT_PROMPT
from src.models.captioning import iter_batches
from src.models.mini import ComposedVLM
from src.models.perturb import perturb


def hf_generate(model: ComposedVLM, post: torch.Tensor, max_new_tokens: int) -> list[str]:
    """ComposedVLM.generate as it was: transformers' generate from inputs_embeds."""
    embeds = model.embed_prompt(post, DEFAULT_PROMPT)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    out = model.lm.generate(inputs_embeds=embeds, attention_mask=mask,
                            max_new_tokens=max_new_tokens, do_sample=False,
                            eos_token_id=model.eos_id, pad_token_id=model.eos_id)  # fmt: skip
    return [t.strip() for t in model.tokenizer.batch_decode(out, skip_special_tokens=True)]


def compare(fns: dict[str, Callable[[], list[str]]], repeats: int) -> dict:
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, list[str]] = {}
    for r in range(repeats):
        for name in list(fns)[:: 1 if r % 2 == 0 else -1]:
            t0 = time.perf_counter()
            outs[name] = fns[name]()
            times[name].append(time.perf_counter() - t0)
    (a, b), med = list(fns), {k: statistics.median(v) for k, v in times.items()}
    return {f"{a}_s": round(med[a], 2), f"{b}_s": round(med[b], 2),
            "ratio": round(med[a] / med[b], 2), "identical": outs[a] == outs[b],
            "differ": sum(x != y for x, y in zip(outs[a], outs[b], strict=True)),
            "captions": len(outs[a]), "times": times, "_out": outs[b]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--vec_dir", type=Path, required=True, help="one shard of data/vector/mini")
    p.add_argument("--n", type=int, default=48)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (1 on a loaded shared machine)")
    p.add_argument("--compare", type=Path, help="a caption table with caption_post to match")
    p.add_argument("--skip_perturb", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    adapter, _ = load_for_vectors(args.vec_dir.parent, [args.vec_dir.name])
    model: ComposedVLM = adapter.model
    batches = [(k, torch.stack(v)) for k, v in iter_batches(args.vec_dir, args.batch_size, args.n)]
    keys = [k for ks, _ in batches for k in ks]
    gen = args.max_new_tokens

    def run(fn: Callable, bs: list) -> Callable[[], list[str]]:
        return lambda: [c for _, post in bs for c in fn(post, gen)]

    with torch.inference_mode():
        res = compare({"hf_generate": run(lambda x, m: hf_generate(model, x, m), batches),
                       "ours": run(lambda x, m: model.generate(x, DEFAULT_PROMPT, m), batches)},
                      args.repeats)  # fmt: skip
        ours = res.pop("_out")
        print(json.dumps({"step": "captions", **res}))
        if args.compare:
            table = pd.read_csv(args.compare, keep_default_na=False).set_index("key")
            want = table.loc[keys, "caption_post"].tolist()
            differ = sum(a != b for a, b in zip(ours, want, strict=True))
            print(json.dumps({"step": f"against {args.compare}", "identical": ours == want,
                              "differ": differ}))  # fmt: skip
        if not args.skip_perturb:
            levels = (0.25, 0.5, 0.75)

            def variants(ks: list[str], post: torch.Tensor) -> list[torch.Tensor]:
                pairs = list(zip(ks, post, strict=True))
                return [post] + [torch.stack([perturb(x, "mask", lv, k) for k, x in pairs])
                                 for lv in levels]  # fmt: skip

            four = [v for ks, post in batches for v in variants(ks, post)]
            joined = [torch.cat(variants(ks, post)) for ks, post in batches]
            res = compare({"four_calls": lambda: [c for v in four for c in
                                                  model.generate(v, DEFAULT_PROMPT, gen)],
                           "one_call": lambda: [c for v in joined for c in
                                                model.generate(v, DEFAULT_PROMPT, gen)]},
                          args.repeats)  # fmt: skip
            res.pop("_out")
            print(json.dumps({"step": "perturb mask, 4 variants", **res}))
    print(f"torch threads {torch.get_num_threads()}, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end (1-minute)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
