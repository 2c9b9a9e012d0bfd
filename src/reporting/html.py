"""One self-contained HTML page: every figure with what it shows, and the summary tables."""

from __future__ import annotations

import html
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from src.data.io import code_version, fingerprint, read_manifest, write_text_atomic
from src.data.paths import report_path
from src.reporting.tables import input_tables

if TYPE_CHECKING:  # figures import matplotlib; the launcher reads report_is_current without it
    from src.reporting.figures import Plot

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1180px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.95em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:nth-child(-n+4) { text-align: left; }
.meta { color: #666; font-size: 0.9em; } .note { color: #a33; }
"""


def inputs_fingerprint(results: Path) -> str | None:
    """Fingerprint of every table a report reads from `results` (None: there are none)."""
    inputs = input_tables(results)
    return fingerprint(inputs, Path(results)) if inputs else None


def report_is_current(results: Path, figures: Path, stamp: str | None = None) -> bool:
    """A report exists in `figures` and was made from tables identical to those in `results`
    (`stamp`: their inputs_fingerprint, when the caller has it already)."""
    made = (read_manifest(figures) or {}).get("inputs_sha256")
    if made is None or not report_path(figures).exists():
        return False
    return made == (stamp or inputs_fingerprint(results))


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def summary_html(summary: pd.DataFrame) -> str:
    """The summary table, one HTML table per section."""
    parts = []
    for section, g in summary.groupby("section", sort=False):
        g = g.drop(columns="section").dropna(axis=1, how="all")
        head = "".join(f"<th>{html.escape(c)}</th>" for c in g.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
            for row in g.itertuples(index=False)
        )
        parts.append(f"<h3>{html.escape(str(section))}</h3>\n<table><tr>{head}</tr>{body}</table>")
    return "\n".join(parts)


def write_report(
    path: Path,
    plots: list[Plot],
    summary: pd.DataFrame,
    *,
    results: Path,
    data_dir: Path,
    summary_csv: Path,
    notes: list[str] = (),
) -> Path:
    """Write the report to `path`; figures are expected beside it (<name>.png) and each figure's
    data under data_dir (<name>.csv), linked relatively so the folder can be moved whole."""
    path = Path(path)

    def rel(p: Path) -> str:
        return html.escape(os.path.relpath(p, path.parent))

    sections = []
    for p in plots:
        sections.append(
            f'<h2 id="{p.name}">{html.escape(p.title)}</h2>\n<figure>'
            f'<img src="{html.escape(p.name)}.png" alt="{html.escape(p.title)}">'
            f"<figcaption>{html.escape(p.caption)} "
            f'<a href="{rel(Path(data_dir) / f"{p.name}.csv")}">Plotted values (CSV)</a>.'
            "</figcaption></figure>"
        )
    toc = " · ".join(f'<a href="#{p.name}">{html.escape(p.title)}</a>' for p in plots)
    missing = "".join(f'<p class="note">Not shown: {html.escape(n)}</p>' for n in notes)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>bridgescope report</title>
<style>{STYLE}</style></head><body>
<h1>bridgescope: what the connector does to an image's representation</h1>
<p class="meta">From the result tables in <code>{html.escape(str(results))}</code>;
generated {datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} by code {html.escape(code_version())}.
Every number shown is in a table: each figure links its plotted values, and the summary below
is <a href="{rel(Path(summary_csv))}">summary.csv</a>.</p>
<p>{toc} · <a href="#summary">Summary tables</a></p>
{missing}
{"".join(sections)}
<h2 id="summary">Summary tables</h2>
<p class="meta">value with its 95% bootstrap CI where there is one; <em>reference</em> is what to
compare it with (chance level, permutation null, baseline or mismatched-image score).</p>
{summary_html(summary)}
</body></html>
"""
    return write_text_atomic(path, page)
