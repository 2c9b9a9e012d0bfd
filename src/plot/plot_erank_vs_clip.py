"""Stage: figure of effective rank against agreement (kNN overlap) with each reference space."""

from __future__ import annotations

import argparse
import sys

from src.plot.common import add_plot_args, draw, plot_stage
from src.reporting.figures import MEASURE_NAMES, erank_vs_ref_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_erank_vs_clip",
        description="Per model, E_pre and E_post as points: effective rank per image against "
        "kNN overlap with each reference space (CLIP, or the offline references): "
        "<figures>/erank_vs_ref.png and <out>/plots/erank_vs_ref.csv.",
    )
    add_plot_args(p)
    p.add_argument("--k", type=int, default=10, help="neighbourhood size of the overlap")
    p.add_argument("--measure", choices=sorted(MEASURE_NAMES), default="erank_energy")
    p.add_argument("--variant", choices=["raw", "standardised"], default="raw")
    return p


def run(args: argparse.Namespace) -> int:
    return draw(
        lambda: erank_vs_ref_plot(args.results, args.models, args.k, args.measure, args.variant),
        args,
    )


STAGE = plot_stage(__name__, get_args_parser, run, figure=lambda a: "erank_vs_ref")


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
