"""Stage: figure of kNN overlap against k (CIs, chance) and CKA against its permutation null."""

from __future__ import annotations

import argparse
import sys

from src.plotting.cli import add_plot_args, run_plot
from src.plotting.figures import knn_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_knn",
        description="kNN overlap (pre->post, references) against k and CKA, from extract_knn's "
        "tables: <figures>/knn.png and <out>/plots/knn.csv.",
    )
    add_plot_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_plot(lambda: knn_plot(args.results, args.models), args)


if __name__ == "__main__":
    sys.exit(main())
