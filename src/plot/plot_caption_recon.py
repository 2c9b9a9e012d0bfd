"""Stage: figure of captions from E_post vs from reconstructed E_pre (scores, chance levels)."""

from __future__ import annotations

import argparse
import sys

from src.plotting.cli import add_plot_args, run_plot
from src.plotting.figures import caption_recon_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_caption_recon",
        description="Caption scores from E_post and from the reconstruction, with chance levels, "
        "and how alike the two captions are (score_captions' tables): "
        "<figures>/caption_recon.png and <out>/plots/caption_recon.csv.",
    )
    add_plot_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    return run_plot(lambda: caption_recon_plot(args.results, args.models), args)


if __name__ == "__main__":
    sys.exit(main())
