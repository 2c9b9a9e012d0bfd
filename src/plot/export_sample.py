"""Stage: copy the result tables that the figures and the summary read (with their manifests)
from a run's results folder into sample/results, so every plot regenerates on a fresh clone."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from src.data.io import MANIFEST_NAME
from src.errors import UserError
from src.reporting.tables import input_tables, pictures
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.export_sample",
        description="Copy a run's plotted tables (knn, recon, captions, perturb) and their "
        "manifests into --out (default sample/results), replacing an earlier export's tables.",
    )
    p.add_argument("--results", type=Path, default=Path("results"))
    p.add_argument("--out", type=Path, default=Path("sample/results"))
    p.add_argument(
        "--exclude",
        nargs="*",
        default=["spectra_per_image.csv"],
        help="file names not to copy (large per-image tables no figure reads)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    files = [p for p in input_tables(args.results) if p.name not in args.exclude]
    files += pictures(args.results)
    if not files:
        raise UserError(f"no result tables under {args.results} (--results)")
    files += sorted(
        {p.parent / MANIFEST_NAME for p in files if (p.parent / MANIFEST_NAME).exists()}
    )
    # Replace an earlier export's tables (so none goes stale) but touch nothing else in --out.
    for old in input_tables(args.out) + pictures(args.out):
        old.unlink()
        (old.parent / MANIFEST_NAME).unlink(missing_ok=True)
    for src in files:
        dst = args.out / src.relative_to(args.results)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"  {len(files)} files ({size / 1e6:.1f} MB) from {args.results} in {args.out}")
    return 0


STAGE = Stage(
    name="export_sample",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.results],
    outputs=lambda a: [a.out],
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
