"""Stage: figure of caption scores against the perturbation level of E_post, for one mode."""

from __future__ import annotations

import argparse
import sys

from src.plot.common import add_plot_args, draw, plot_stage
from src.reporting.figures import LEVEL_AXIS, perturb_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_perturb",
        description="BERTScore to the unperturbed caption, caption NLL and the share of changed "
        "captions against the level (score_perturb's summary): <figures>/perturb_<mode>.png "
        "and <out>/plots/perturb_<mode>.csv.",
    )
    add_plot_args(p)
    p.add_argument("--perturb", choices=sorted(LEVEL_AXIS), required=True, help="the mode")
    return p


def run(args: argparse.Namespace) -> int:
    return draw(lambda: perturb_plot(args.results, args.perturb, args.models), args)


STAGE = plot_stage(__name__, get_args_parser, run, figure=lambda a: f"perturb_{a.perturb}")


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
