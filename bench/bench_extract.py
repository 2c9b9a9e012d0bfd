"""Benchmark: extract_vectors stage throughput vs. the model's forward alone, and peak memory.

    .venv/bin/python -m bench.bench_extract [--n 2000] [--small 500] [--batch_size 32]

1. Throughput: the whole stage (decode in workers, preprocessing, forward, chunk writes,
   manifest) against adapter.encode alone on the very same preprocessed batches, in one process.
   Goal: stage overhead under 15% of forward time.
2. Memory: peak RSS (main process + DataLoader workers, sampled every 50 ms) of the stage run as a
   subprocess on --small and on --n images. Goal: flat (chunks are flushed every --save_every).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

from src.data.images import list_images, load_image
from src.data.sample import write_scenes
from src.extract import extract_vectors
from src.models import load_adapter
from src.models.connector import ConnectorConfig, MLPConnector, save_connector
from src.models.mini import DEFAULT_CONNECTOR_DIR

REPO = Path(__file__).resolve().parents[1]


def connector_dir(tmp: Path) -> Path:
    """The committed mini connector, or a random one of the same shape (speed is the same)."""
    if (DEFAULT_CONNECTOR_DIR / "config.json").exists():
        return DEFAULT_CONNECTOR_DIR
    save_connector(MLPConnector(ConnectorConfig(in_dim=1280, out_dim=576, hidden_dim=576)), tmp)
    return tmp


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """Run cmd; return (peak RSS in MiB of it and its children, wall seconds)."""
    t0 = time.perf_counter()
    proc = psutil.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        try:
            procs = [proc, *proc.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed with {proc.returncode}")
    return peak / 2**20, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--small", type=int, default=500)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, help="default: the stage's automatic choice")
    p.add_argument("--save_every", type=int, default=400)
    p.add_argument("--out", type=Path, default=Path("results/bench_extract.json"))
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    root = tmp / "images"
    write_scenes(root, n=args.n, n_shards=1, size=224, seed=0)
    shard = next(p.name for p in root.iterdir() if p.is_dir())
    conn = connector_dir(tmp / "connector")

    workers = [] if args.num_workers is None else ["--num_workers", str(args.num_workers)]
    common = [
        *workers,
        "--root",
        str(root),
        "--model_id",
        f"mini={conn}",
        "--batch_size",
        str(args.batch_size),
        "--save_every",
        str(args.save_every),
        "--no_progress",
    ]

    # 1. stage vs forward alone, same process, same batches
    adapter = load_adapter("mini", str(conn))
    records = list_images(root, shard)
    batches = [
        adapter.preprocessor([load_image(r).image for r in records[s : s + args.batch_size]])
        for s in range(0, len(records), args.batch_size)
    ]
    with torch.inference_mode():
        adapter.encode(batches[0])  # warm-up
        t0 = time.perf_counter()
        for b in batches:
            adapter.encode(b)
        forward_s = time.perf_counter() - t0
    del adapter
    t0 = time.perf_counter()
    assert extract_vectors.main([*common, "--out_dir", str(tmp / "vec_inproc")]) == 0
    stage_total_s = time.perf_counter() - t0
    manifest = json.loads((tmp / "vec_inproc" / "mini" / shard / "manifest.json").read_text())
    assert manifest["n_ok"] == args.n
    # The stage's own summary separates model load from the shard loop; time it the same way.
    stage_s = _shard_seconds(tmp / "vec_inproc" / "mini" / shard)
    overhead = stage_s / forward_s - 1

    # 2. peak memory at two dataset sizes
    mem = {}
    for n in (args.small, args.n):
        cmd = [
            sys.executable,
            "-m",
            "src.extract.extract_vectors",
            *common,
            "--out_dir",
            str(tmp / f"vec_{n}"),
            "--max_images",
            str(n),
        ]
        mem[n] = peak_rss_of(cmd)

    result = {
        "images": args.n,
        "batch_size": args.batch_size,
        "num_workers": "auto" if args.num_workers is None else args.num_workers,
        "torch_threads": torch.get_num_threads(),
        "forward_only_s": round(forward_s, 2),
        "forward_only_img_per_s": round(args.n / forward_s, 1),
        "stage_loop_s": round(stage_s, 2),
        "stage_img_per_s": round(args.n / stage_s, 1),
        "stage_total_s_incl_model_load": round(stage_total_s, 2),
        "stage_overhead_vs_forward": round(overhead, 3),
        "peak_rss_mib": {str(n): round(m, 1) for n, (m, _) in mem.items()},
        "subprocess_wall_s": {str(n): round(w, 1) for n, (_, w) in mem.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(
        f"stage overhead {overhead:+.1%} of forward time (goal < 15%); peak RSS "
        f"{mem[args.small][0]:.0f} MiB at {args.small} vs {mem[args.n][0]:.0f} MiB at {args.n}"
    )
    return 0


def _shard_seconds(folder: Path) -> float:
    from src.data.io import read_manifest

    m = read_manifest(folder) or {}
    return float(m["seconds"])


if __name__ == "__main__":
    sys.exit(main())
