"""Stage: figure of per-image E_pre reconstruction quality against caption change."""

from __future__ import annotations

import argparse
import sys

from src.plot.common import add_plot_args, draw, plot_stage
from src.reporting.figures import caption_recon_pre_plot


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.plot_caption_recon_pre",
        description="Per captioned image: token cosine of the reconstructed E_pre (eval_recon) "
        "against BERTScore of its caption vs E_post's caption (score_captions), with "
        "Spearman's rho and a bootstrap CI: <figures>/caption_recon_pre.png and "
        "<out>/plots/caption_recon_pre.csv.",
    )
    add_plot_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    return draw(lambda: caption_recon_pre_plot(args.results, args.models), args)


STAGE = plot_stage(__name__, get_args_parser, run, figure=lambda a: "caption_recon_pre")


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
