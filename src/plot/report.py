"""Stage: every figure, the summary table and one HTML report, from a results folder."""

from __future__ import annotations

import argparse
import sys
import time

from src.data.io import write_manifest
from src.plotting.cli import add_plot_args, plot_data_dir
from src.plotting.figures import all_plots, save_plot
from src.plotting.report import (
    inputs_fingerprint,
    report_is_current,
    report_path,
    write_report,
)
from src.plotting.summary import write_summary
from src.plotting.tables import MissingResults, input_tables


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src.plot.report",
        description="Draw every figure the result tables allow, compute the summary and write "
        "<figures>/report.html (figures beside it, plotted values in <out>/plots/, the summary "
        "in <out>/summary.csv).",
    )
    add_plot_args(p)
    p.add_argument(
        "--skip_existing",
        action="store_true",
        help="nothing to do when the report was made from tables identical to these",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    t0 = time.perf_counter()
    inputs = input_tables(args.results)
    if not inputs:
        print(f"error: no result tables under {args.results}", file=sys.stderr)
        return 2
    stamp = inputs_fingerprint(args.results)  # read once: to skip, and for the manifest
    report = report_path(args.figures)
    if args.skip_existing and report_is_current(args.results, args.figures, stamp):
        print(f"  {report} is up to date with {args.results}; nothing to do")
        return 0
    plots, notes = [], []
    for name, make in all_plots(args.results, args.models):
        try:
            plot = make()
        except MissingResults as e:
            notes.append(f"{name}: {e}")
            print(f"  skipped {name}: {e}")
            continue
        png, _ = save_plot(plot, args.figures, plot_data_dir(args.out), dpi=args.dpi)
        plot.figure.clear()  # the PNG is written; free the memory
        plots.append(plot)
        print(f"  {png}")
    try:
        summary, _, csv = write_summary(args.results, args.out)
    except MissingResults as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_report(
        report,
        plots,
        summary,
        results=args.results,
        data_dir=plot_data_dir(args.out),
        summary_csv=csv,
        notes=notes,
    )
    write_manifest(
        args.figures,
        stage="report",
        results=str(args.results),
        inputs_sha256=stamp,
        inputs=[str(p.relative_to(args.results)) for p in inputs],
        figures=[f"{p.name}.png" for p in plots],
        missing=notes,
        args=vars(args),
    )
    print(
        f"  {report}: {len(plots)} figures, {len(summary)} summary numbers "
        f"({time.perf_counter() - t0:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
