"""Flags, the draw step and the declaration that every single-figure stage shares (not a stage)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from src.data.paths import figure_png, figure_values
from src.stage import Stage

if TYPE_CHECKING:  # matplotlib stays out of the launcher, which reads STAGE only
    from src.reporting.figures import Plot


def add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results",
        type=Path,
        default=Path("sample/results"),
        help="result tables to draw from (default: the committed sample/results)",
    )
    p.add_argument("--figures", type=Path, default=Path("figures"), help="where PNGs go")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results"),
        help="where tables go: the plotted values as <out>/plots/<figure>.csv",
    )
    p.add_argument("--models", type=lambda s: s.split(","), help="only these models")
    p.add_argument("--dpi", type=int, default=130)


def draw(make: Callable[[], Plot], args: argparse.Namespace) -> int:
    """Draw one figure, write its PNG and its values' CSV (a missing table: MissingResults,
    a UserError naming the stage that makes it)."""
    from src.reporting.figures import save_plot

    plot = make()
    png, csv = save_plot(plot, args.figures, args.out, dpi=args.dpi)
    print(f"  {png} ({len(plot.data)} plotted values in {csv})")
    return 0


def plot_stage(
    module: str,
    parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
    figure: Callable[[argparse.Namespace], str],
) -> Stage:
    """The declaration of a stage that draws one figure named figure(args) from --results."""
    return Stage(
        name=module.rsplit(".", 1)[-1],
        module=module,
        parser=parser,
        run=run,
        inputs=lambda a: [a.results],
        outputs=lambda a: [figure_png(a.figures, figure(a)), figure_values(a.out, figure(a))],
    )
