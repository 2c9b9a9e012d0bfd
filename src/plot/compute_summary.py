"""Stage: the study's headline numbers from every stage's tables, as one tidy table + JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.plotting.summary import write_summary
from src.plotting.tables import MissingResults


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.compute_summary",
        description="Headline numbers (geometry, spectra, reconstruction, captions, "
        "perturbations) with CIs and the chance level or baseline beside each: "
        "<out>/summary.csv and <out>/summary.json.",
    )
    p.add_argument("--results", type=Path, default=Path("sample/results"))
    p.add_argument("--out", type=Path, default=Path("results"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        table, notes, csv = write_summary(args.results, args.out)
    except MissingResults as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"  note: {n}")
    print(f"  {csv}: {len(table)} numbers from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
