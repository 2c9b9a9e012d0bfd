"""Stage: figure of captions from E_post vs from reconstructed E_pre (scores, chance levels)."""

from __future__ import annotations

import argparse
import sys

from src.plot.common import add_plot_args, draw, plot_stage
from src.reporting.figures import caption_recon_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_caption_recon",
        description="Caption scores from E_post and from the reconstruction, with chance levels, "
        "and how alike the two captions are (score_captions' tables): "
        "<figures>/caption_recon.png and <out>/plots/caption_recon.csv.",
    )
    add_plot_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    return draw(lambda: caption_recon_plot(args.results, args.models), args)


STAGE = plot_stage(__name__, get_args_parser, run, figure=lambda a: "caption_recon")


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
