"""Stage: figure of kNN overlap against k (CIs, chance) and CKA against its permutation null."""

from __future__ import annotations

import argparse
import sys

from src.plot.common import add_plot_args, draw, plot_stage
from src.reporting.figures import knn_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_knn",
        description="kNN overlap (pre->post, references) against k and CKA, from extract_knn's "
        "tables: <figures>/knn.png and <out>/plots/knn.csv.",
    )
    add_plot_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    return draw(lambda: knn_plot(args.results, args.models), args)


STAGE = plot_stage(__name__, get_args_parser, run, figure=lambda a: "knn")


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
