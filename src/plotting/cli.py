"""Flags and the save step that every plotting stage shares."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from src.plotting.figures import Plot, save_plot
from src.plotting.tables import MissingResults


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


def plot_data_dir(out: Path) -> Path:
    """<out>/plots: one CSV of plotted values per figure."""
    return Path(out) / "plots"


def run_plot(make: Callable[[], Plot], args: argparse.Namespace) -> int:
    """Draw one figure, write its PNG and its values' CSV; a missing table is a clear error."""
    try:
        plot = make()
    except MissingResults as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    png, csv = save_plot(plot, args.figures, plot_data_dir(args.out), dpi=args.dpi)
    print(f"  {png} ({len(plot.data)} plotted values in {csv})")
    return 0
