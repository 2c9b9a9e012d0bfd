"""Benchmark: the efficientnet-lite0 reference stage after extraction, as the main job runs it.

    .venv/bin/python -m bench.bench_reference [--n 256] [--repeats 3] [--threads 1]

after: inside remember_pooled_features (src.pipeline.main), extraction's forward recorded each
image's global average pool and the reference stage reuses it; before: the reference stage runs
the network again (the record switched off for that run). Same images, interleaved, medians,
and whether the two reference folders hold the same vectors bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import src.models.towers as towers
from src.data.sample import write_scenes
from src.data.vectors import iter_chunks
from src.extract import extract_clip, extract_vectors


def reference(root: Path, out: Path) -> float:
    t0 = time.perf_counter()
    argv = ["--root", str(root), "--out_dir", str(out), "--model_id", "efficientnet-lite0",
            "--num_workers", "0", "--no_progress"]  # fmt: skip
    assert extract_clip.main(argv) == 0
    return time.perf_counter() - t0


def vectors(out: Path) -> dict:
    return {k: v for d in sorted(out.iterdir()) if d.is_dir()
            for _, c in iter_chunks(d, "ref") for k, v in c.by_key().items()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch threads (1 on a loaded shared machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench_reference_"))
    root = tmp / "images"
    write_scenes(root, args.n, n_shards=1)
    times: dict[str, list[float]] = {"before": [], "after": []}
    with towers.remember_pooled_features():
        assert extract_vectors.main(["--root", str(root), "--out_dir", str(tmp / "vector"),
                                     "--num_workers", "0", "--no_progress"]) == 0  # fmt: skip
        for r in range(args.repeats):
            for which in ("before", "after")[:: 1 if r % 2 == 0 else -1]:
                record = towers._POOLED
                if which == "before":
                    towers._POOLED = None  # the record off: the stage as it runs on its own
                try:
                    times[which].append(reference(root, tmp / f"{which}_{r}"))
                finally:
                    towers._POOLED = record
    a, b = vectors(tmp / "before_0"), vectors(tmp / "after_0")
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"step": "reference efficientnet-lite0", "images": args.n,
                      "before_s": round(med["before"], 2), "after_s": round(med["after"], 2),
                      "ratio": round(med["before"] / med["after"], 2), "identical": same,
                      "times": times}))  # fmt: skip
    print(f"torch threads {torch.get_num_threads()}, load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end (1-minute)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
