"""Stage: the study's headline numbers from every stage's tables, as one tidy table + JSON."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.data.paths import summary_table
from src.reporting.summary import write_summary
from src.stage import Stage


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


def run(args: argparse.Namespace) -> int:
    table, notes, csv = write_summary(args.results, args.out)
    for n in notes:
        print(f"  note: {n}")
    print(f"  {csv}: {len(table)} numbers from {args.results}")
    return 0


STAGE = Stage(
    name="compute_summary",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.results],
    outputs=lambda a: [summary_table(a.out)],
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
