"""Stage: every figure, the summary table and one HTML report, from a results folder."""

from __future__ import annotations

import argparse
import sys
import time

from src.data.io import write_manifest
from src.data.paths import plot_data_dir, report_path
from src.errors import UserError
from src.reporting.html import inputs_fingerprint, report_is_current
from src.reporting.tables import input_tables
from src.stage import Stage


def get_args_parser() -> argparse.ArgumentParser:
    from src.plot.common import add_plot_args

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


def run(args: argparse.Namespace) -> int:
    # matplotlib is imported here, not at module level: the launcher reads STAGE without it
    from src.reporting.figures import all_plots, save_plot
    from src.reporting.html import write_report
    from src.reporting.summary import write_summary
    from src.reporting.tables import MissingResults

    t0 = time.perf_counter()
    inputs = input_tables(args.results)
    if not inputs:
        raise UserError(f"no result tables under {args.results} (--results)")
    plots, notes = [], []
    for name, make in all_plots(args.results, args.models):
        try:
            plot = make()
        except MissingResults as e:
            notes.append(f"{name}: {e}")
            print(f"  skipped {name}: {e}")
            continue
        png, _ = save_plot(plot, args.figures, args.out, dpi=args.dpi)
        plot.figure.clear()  # the PNG is written; free the memory
        plots.append(plot)
        print(f"  {png}")
    summary, _, csv = write_summary(args.results, args.out)
    report = report_path(args.figures)
    write_report(report, plots, summary, results=args.results, data_dir=plot_data_dir(args.out),
                 summary_csv=csv, notes=notes)  # fmt: skip
    write_manifest(
        args.figures,
        stage="report",
        results=args.results,
        inputs_sha256=inputs_fingerprint(args.results),
        inputs=[str(p.relative_to(args.results)) for p in inputs],
        figures=[f"{p.name}.png" for p in plots],
        missing=notes,
        args=vars(args),
    )
    print(f"  {report}: {len(plots)} figures, {len(summary)} summary numbers "
          f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    return 0


STAGE = Stage(
    name="report",
    module=__name__,
    parser=get_args_parser,
    run=run,
    inputs=lambda a: [a.results],
    outputs=lambda a: [report_path(a.figures)],
    done=lambda a: report_is_current(a.results, a.figures),
    on_skip=lambda a: print(f"  {report_path(a.figures)} is up to date with {a.results}"),
)


def main(argv: list[str] | None = None) -> int:
    return STAGE.main(argv)


if __name__ == "__main__":
    sys.exit(main())
