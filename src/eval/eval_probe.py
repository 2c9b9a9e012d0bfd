"""Stage: CLIP_benchmark's protocols on local labelled data: zero-shot classification (a joint
text tower: a train_align dual encoder, or CLIP / SigLIP by id), a linear probe on cached
normalised features of any vision tower, and retrieval both directions; every number with a
bootstrap CI and its chance level. Labels: the synthetic scenes' attributes, the sample's data
types, a chart's type, or `folder` (an image folder whose subfolders are classes).

Tables: <results>/probe/<name>/{zero_shot,linear_probe,retrieval}.csv + manifest.json. The
test split is train_align's hash split (same defaults): held out from the dual encoder too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

from src.data.images import list_shards
from src.data.io import atomic_write, write_manifest
from src.data.paths import probe_results_dir
from src.metrics.probe import DEFAULT_C_GRID
from src.runtime import add_runtime_args, csv_list, parse_assignments, resolve_device, resolve_dtype
from src.stage import Stage

TABLES = ("zero_shot", "linear_probe", "retrieval")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.eval.eval_probe",
        description="Zero-shot, linear probe and retrieval on local labelled images.",
    )
    p.add_argument("--root", type=Path, required=True, help="image root: <root>/<shard>/<stem>.jpg")
    p.add_argument("--shards", type=csv_list, help="only these shards (comma-separated)")
    p.add_argument("--name", default="probe", help="tables go to <results>/probe/<name>")
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--vision", type=csv_list, default=["efficientnet-lite0"],
                   help="linear-probed towers: names, hub ids or folders (a dual encoder folder: "
                   "its joint space), comma-separated")  # fmt: skip
    p.add_argument("--text", help="joint model for zero-shot and retrieval: a train_align "
                   "folder or a CLIP / SigLIP id (none: linear probe only)")  # fmt: skip
    p.add_argument("--radius", type=int, help="MRL radius of a dual encoder (default: full)")
    p.add_argument("--labels", type=csv_list, default=["colour", "shape", "size", "count",
                   "data_type"], help="label families (src.data.labels.LABELERS)")  # fmt: skip
    p.add_argument("--cache_dir", type=Path, default=Path("data/probe_cache"),
                   help="pooled feature caches, a folder per tower")  # fmt: skip
    p.add_argument("--vision_cache", action="append", metavar="TOWER=DIR",
                   help="an existing pooled cache of a tower (an extract_clip output)")  # fmt: skip
    p.add_argument("--val_fraction", type=float, default=0.1)
    p.add_argument("--test_fraction", type=float, default=0.2)
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--c_grid", type=lambda s: [float(v) for v in csv_list(s)],
                   default=list(DEFAULT_C_GRID), help="linear probe's C grid")  # fmt: skip
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--skip_existing", action="store_true", help="do nothing when finished")
    p.add_argument("--no_progress", action="store_true")
    add_runtime_args(p)
    return p


def _out(a: argparse.Namespace) -> Path:
    return probe_results_dir(a.results, a.name)


def run(args: argparse.Namespace) -> int:
    from src.models import probing
    from src.models.joint import load_joint

    t0 = time.perf_counter()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    shards = args.shards or list_shards(args.root)
    caches = parse_assignments(args.vision_cache, "--vision_cache")
    kw = dict(device=device, dtype=dtype, batch_size=args.batch_size, progress=not args.no_progress)
    tables: dict[str, list[dict]] = {t: [] for t in TABLES}
    sources, skipped = {}, []
    for name in args.vision:
        pooled = probing.vision_features(name, args.root, shards, caches, args.cache_dir, **kw)
        split = probing.splits(pooled, args.val_fraction, args.test_fraction, args.split_seed)
        rows = probing.linear(pooled.features, split, pooled, args.labels, args.c_grid, args.n_boot)
        tables["linear_probe"] += [{"model": name, **r} for r in rows]
        sources[name], skipped = pooled.source, skipped + pooled.skipped
    if args.text:
        joint = load_joint(args.text, device=device, dtype=dtype, radius=args.radius)
        cache = Path(caches.get(joint.vision) or args.cache_dir / probing.cache_name(joint.vision))
        pooled = joint.image_features(args.root, shards, cache, batch_size=args.batch_size,
                                      progress=not args.no_progress)  # fmt: skip
        split = probing.splits(pooled, args.val_fraction, args.test_fraction, args.split_seed)
        zs = probing.zero_shot(joint, pooled.features, split, pooled, args.labels, args.n_boot)
        rt = probing.retrieval(joint, pooled.features, split, pooled, args.n_boot)
        tables["zero_shot"] = [{"model": args.text, **r} for r in zs]
        tables["retrieval"] = [{"model": args.text, **r} for r in rt]
        sources[args.text] = {**pooled.source, **joint.describe()}
    out = _out(args)
    out.mkdir(parents=True, exist_ok=True)
    for t, rows in tables.items():
        atomic_write(out / f"{t}.csv", lambda tmp, r=rows: pd.DataFrame(r).to_csv(tmp, index=False))
    write_manifest(out, stage="eval_probe", args=vars(args), upstream=sources, skipped=skipped,
                   seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
    print(f"[eval_probe] {sum(map(len, tables.values()))} rows to {out} "
          f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return 0


STAGE = Stage(
    name="eval_probe",
    module=__name__,
    parser=get_args_parser,
    run=run,
    # tower names that are not folders never match another step's output: harmless here
    inputs=lambda a: [a.root, *map(Path, a.vision)] + ([Path(a.text)] if a.text else []),
    outputs=lambda a: [_out(a)],
    description="zero-shot / linear probe / retrieval (CLIP_benchmark's protocols)",
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
