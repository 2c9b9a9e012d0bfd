"""Seed A's data types for the sample data: charts, tables and documents rendered offline with
matplotlib, each with a caption that describes its own content and a <stem>.json label.

The seed gave every chart the same text ("Describe this chart image."), which makes a per-type
vision-vs-text CKA degenerate (one text embedding for the whole type). Here each image's caption
is written from the very data that drew it: chart type, title, number of bars or slices, colour,
trend; table size, header and first row; document heading and first words.

Item i of a type depends only on (seed, type, i): same arguments, same bytes (matplotlib's own
defaults are restored while drawing, so a user's matplotlibrc changes nothing).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from src.data.sample import is_written, jpeg_bytes, label_bytes, write_if_missing

# Shard folder and file prefix of each type; the salt keeps the types' random streams apart.
TYPE_SHARDS = {"chart": "charts", "table": "tables", "document": "documents"}
_SALT = {"chart": 101, "table": 102, "document": 103}

# Named colours (matplotlib's tab10), far apart in hue so a caption's colour word is visible.
CHART_COLOURS = {
    "blue": "#1f77b4",
    "orange": "#ff7f0e",
    "green": "#2ca02c",
    "red": "#d62728",
    "purple": "#9467bd",
    "brown": "#8c564b",
    "grey": "#7f7f7f",
    "teal": "#17becf",
}
CHART_TYPES = ("bar", "line", "pie", "scatter")
_PERIODS: dict[str, list[str]] = {
    "monthly": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"],
    "weekly": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
    "quarterly": ["Q1", "Q2", "Q3", "Q4"],
    "yearly": [str(y) for y in range(2008, 2025)],
}
_TOPICS = (
    "sales",
    "revenue",
    "rainfall",
    "temperature",
    "visitors",
    "downloads",
    "energy use",
    "traffic",
    "exports",
    "orders",
    "costs",
    "enrolment",
    "profit",
    "subscribers",
)
_PLACES = (
    "the north",
    "the south",
    "Europe",
    "Asia",
    "Brazil",
    "Canada",
    "Japan",
    "Kenya",
    "Norway",
    "Peru",
    "the city centre",
    "the harbour",
)
_PIE_DIMENSIONS = {
    "region": ["north", "south", "east", "west", "centre", "islands"],
    "product": ["phones", "laptops", "tablets", "watches", "cameras", "speakers"],
    "channel": ["online", "stores", "phone", "partners", "catalogue"],
    "age group": ["under 18", "18-29", "30-44", "45-64", "65+"],
}

_TABLE_THEMES: dict[str, list[str]] = {
    "Exam results": ["Name", "Subject", "Score", "Grade"],
    "Staff list": ["Name", "Dept", "Age", "City"],
    "Price list": ["Product", "Price", "Qty", "Status"],
    "City data": ["City", "Country", "Year", "Visitors"],
    "Orders": ["Order", "Product", "Qty", "Status"],
    "Ratings": ["Product", "Rating", "Reviews", "Price"],
}
_HEADER_COLOURS = {"blue": "#c6dbef", "green": "#c7e9c0", "grey": "#d9d9d9", "orange": "#fdd0a2"}
_NAMES = (
    "Alice",
    "Bruno",
    "Chen",
    "Dana",
    "Emil",
    "Fatima",
    "Goran",
    "Hana",
    "Ivan",
    "Julia",
    "Kofi",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
)
_CITIES = {
    "Lyon": "France",
    "Porto": "Portugal",
    "Osaka": "Japan",
    "Quito": "Ecuador",
    "Leeds": "UK",
    "Perth": "Australia",
    "Graz": "Austria",
    "Accra": "Ghana",
    "Turin": "Italy",
    "Bergen": "Norway",
    "Cusco": "Peru",
    "Dakar": "Senegal",
}
_PRODUCTS = (
    "kettle",
    "lamp",
    "chair",
    "desk",
    "mug",
    "radio",
    "fan",
    "clock",
    "rug",
    "shelf",
    "pillow",
    "heater",
)
_CELLS: dict[str, Callable[[np.random.Generator], str]] = {
    "Name": lambda r: str(r.choice(_NAMES)),
    "Subject": lambda r: str(r.choice(["maths", "history", "biology", "art", "physics", "music"])),
    "Score": lambda r: str(int(r.integers(35, 100))),
    "Grade": lambda r: str(r.choice(["A", "B", "C", "D"])),
    "Dept": lambda r: str(r.choice(["sales", "legal", "design", "support", "finance", "IT"])),
    "Age": lambda r: str(int(r.integers(19, 66))),
    "City": lambda r: str(r.choice(list(_CITIES))),
    "Product": lambda r: str(r.choice(_PRODUCTS)),
    "Price": lambda r: f"{r.integers(2, 400) + r.integers(0, 100) / 100:.2f}",
    "Qty": lambda r: str(int(r.integers(1, 60))),
    "Status": lambda r: str(r.choice(["open", "shipped", "pending", "closed"])),
    "Country": lambda r: str(r.choice(list(_CITIES.values()))),
    "Year": lambda r: str(int(r.integers(1990, 2025))),
    "Visitors": lambda r: f"{int(r.integers(2, 900)) * 1000:,}",
    "Order": lambda r: f"#{int(r.integers(1000, 9999))}",
    "Rating": lambda r: f"{r.integers(10, 51) / 10:.1f}",
    "Reviews": lambda r: str(int(r.integers(3, 2000))),
}

_DOC_KINDS = ("Notes on", "Report on", "Memo:", "Summary of", "Minutes:", "Plan for", "Review of")
_DOC_SUBJECTS = (
    "the library budget",
    "river transport",
    "the new bus timetable",
    "school meals",
    "the harbour repairs",
    "winter heating",
    "the museum opening",
    "bicycle lanes",
    "the spring fair",
    "water quality",
    "the staff survey",
    "park lighting",
    "recycling rules",
    "the sports hall",
)
_SUBJECTS = (
    "The committee",
    "Our team",
    "The board",
    "The council",
    "Staff",
    "The office",
    "Volunteers",
    "The director",
)
_VERBS = ("approved", "discussed", "reviewed", "postponed", "rejected", "welcomed", "changed")
_OBJECTS = (
    "the plan",
    "the budget",
    "the schedule",
    "the proposal",
    "the contract",
    "the survey",
    "the new rules",
)
_TIMES = (
    "next week",
    "in March",
    "before summer",
    "this year",
    "after the holidays",
    "by Friday",
    "in two months",
)
_EXTRAS = (
    "Costs will be shared by all departments.",
    "A second meeting is planned.",
    "Questions can be sent to the office.",
    "The results will be published online.",
    "Most members agreed with the change.",
    "Some details are still open.",
    "A short report will follow.",
    "The old system stays in use until then.",
)
_PAGE_COLOURS = {"white": "#ffffff", "cream": "#fbf6e9", "light grey": "#f0f0f0"}


# ---------------------------------------------------------------------------------------------
# Content (pure functions of a random generator)


def _title_case(text: str) -> str:
    return text[0].upper() + text[1:]


def make_chart(rng: np.random.Generator) -> dict[str, Any]:
    """One chart's data and its caption."""
    kind = str(rng.choice(CHART_TYPES))
    topic = str(rng.choice(_TOPICS))
    colour = str(rng.choice(list(CHART_COLOURS)))
    if kind == "pie":
        dim = str(rng.choice(list(_PIE_DIMENSIONS)))
        n = int(rng.integers(3, len(_PIE_DIMENSIONS[dim]) + 1))
        labels = [str(s) for s in rng.choice(_PIE_DIMENSIONS[dim], size=n, replace=False)]
        values = [int(v) for v in rng.integers(5, 60, size=n)]
        shares = [round(100 * v / sum(values)) for v in values]
        title = f"Share of {topic} by {dim}"
        top = int(np.argmax(values))
        caption = (
            f'A pie chart titled "{title}" with {n} slices; the largest is '
            f"{labels[top]} at {shares[top]}%."
        )
        return {
            "chart_type": kind,
            "title": title,
            "categories": labels,
            "values": values,
            "shares": shares,
            "colours": list(CHART_COLOURS)[:n],
            "n_items": n,
            "caption": caption,
        }
    if kind == "scatter":
        other = str(rng.choice([t for t in _TOPICS if t != topic]))
        n = int(rng.integers(15, 61))
        relation = str(rng.choice(["positive", "negative", "no"]))
        x = rng.uniform(0, 100, n)
        slope = {"positive": 0.8, "negative": -0.8, "no": 0.0}[relation]
        y = 50 + slope * (x - 50) + rng.normal(0, 8 if relation != "no" else 25, n)
        title = _title_case(f"{topic} vs {other}")
        caption = (
            f'A {colour} scatter plot titled "{title}" of {n} points with '
            f"{'a ' + relation if relation != 'no' else 'no clear'} correlation."
        )
        return {
            "chart_type": kind,
            "title": title,
            "x": [round(float(v), 2) for v in x],
            "y": [round(float(v), 2) for v in y],
            "correlation": relation,
            "r": round(float(np.corrcoef(x, y)[0, 1]), 3),
            "colour": colour,
            "n_items": n,
            "caption": caption,
        }
    period = str(rng.choice(list(_PERIODS)))
    steps = _PERIODS[period]
    n = int(rng.integers(3, min(len(steps), 9 if kind == "bar" else 12) + 1))
    first = int(rng.integers(0, len(steps) - n + 1))
    categories = steps[first : first + n]
    place = str(rng.choice(_PLACES)) if rng.random() < 0.6 else None
    title = _title_case(f"{period} {topic}" + (f" in {place}" if place else ""))
    span = f"{categories[0]} to {categories[-1]}"
    if kind == "bar":
        values = [int(v) for v in rng.integers(5, 100, size=n)]
        top = int(np.argmax(values))
        caption = (
            f'A bar chart titled "{title}" with {n} {colour} bars from {span}; the '
            f"tallest bar is {categories[top]} at {values[top]}."
        )
        return {
            "chart_type": kind,
            "title": title,
            "categories": categories,
            "values": values,
            "colour": colour,
            "n_items": n,
            "caption": caption,
        }
    trend = str(rng.choice(["rising", "falling", "flat", "peaking"]))
    t = np.linspace(0, 1, n)
    base = {
        "rising": 15 + 65 * t,
        "falling": 80 - 65 * t,
        "flat": np.full(n, 50.0),
        "peaking": 20 + 70 * (1 - (2 * t - 1) ** 2),
    }[trend]
    values = [round(v) for v in base + rng.normal(0, 3, n)]
    if trend == "peaking":
        top = int(np.argmax(values))
        how = f"peaking at {values[top]} in {categories[top]}"
    elif trend == "flat":
        how = f"staying near {round(np.mean(values))}"
    else:
        how = f"{trend} from {values[0]} to {values[-1]}"
    caption = f'A {colour} line chart titled "{title}" from {span}, {how}.'
    return {
        "chart_type": kind,
        "title": title,
        "categories": categories,
        "values": values,
        "trend": trend,
        "colour": colour,
        "n_items": n,
        "caption": caption,
    }


def make_table(rng: np.random.Generator) -> dict[str, Any]:
    """One table's title, header, rows and caption."""
    title = str(rng.choice(list(_TABLE_THEMES)))
    columns = _TABLE_THEMES[title]
    n_cols = int(rng.integers(2, len(columns) + 1))
    others = rng.choice(columns[1:], size=n_cols - 1, replace=False)
    header = [columns[0], *sorted((str(h) for h in others), key=columns.index)]
    n_rows = int(rng.integers(3, 9))
    rows = [[_CELLS[h](rng) for h in header] for _ in range(n_rows)]
    if "City" in header and "Country" in header:  # a city's own country, not a random one
        c, k = header.index("City"), header.index("Country")
        for r in rows:
            r[k] = _CITIES[r[c]]
    colour = str(rng.choice(list(_HEADER_COLOURS)))
    article = "an" if colour[0] in "aeiou" else "a"
    caption = (
        f'A table titled "{title}" with {n_rows} rows and {n_cols} columns '
        f"({', '.join(header)}) under {article} {colour} header; the first row reads "
        f"{', '.join(rows[0])}."
    )
    return {
        "title": title,
        "header": header,
        "rows": rows,
        "n_rows": n_rows,
        "n_cols": n_cols,
        "header_colour": colour,
        "caption": caption,
    }


def _sentences(rng: np.random.Generator, n: int) -> list[str]:
    """n sentences: most built from parts (subject, verb, object, time), some stock ones, never
    the same stock sentence twice in a document."""
    extras = [str(e) for e in rng.permutation(_EXTRAS)]
    out = []
    for _ in range(n):
        if rng.random() < 0.3 and extras:
            out.append(extras.pop())
        else:
            out.append(
                f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} "
                f"{rng.choice(_TIMES)}."
            )
    return out


def make_document(rng: np.random.Generator, width: int = 34) -> dict[str, Any]:
    """A short document: a heading and a few sentences wrapped to `width` characters a line."""
    heading = f"{rng.choice(_DOC_KINDS)} {rng.choice(_DOC_SUBJECTS)}"
    text = " ".join(_sentences(rng, int(rng.integers(2, 6))))
    lines = textwrap.wrap(text, width=width)
    page = str(rng.choice(list(_PAGE_COLOURS)))
    first = " ".join(text.split()[:6])
    caption = (
        f'A text document headed "{heading}" with {len(lines)} lines of text on a {page} '
        f'page, beginning "{first}".'
    )
    return {
        "heading": heading,
        "text": text,
        "lines": lines,
        "n_lines": len(lines),
        "page_colour": page,
        "caption": caption,
    }


MAKERS: dict[str, Callable[[np.random.Generator], dict[str, Any]]] = {
    "chart": make_chart,
    "table": make_table,
    "document": make_document,
}


# ---------------------------------------------------------------------------------------------
# Rendering (matplotlib, Agg canvas: no display, no pyplot state)


def _figure(size: int, facecolor: str = "white") -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size / 100, size / 100), dpi=100, facecolor=facecolor)
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig: Any) -> Image.Image:
    """The drawn canvas as an RGB image (no PNG round trip: no metadata, same bytes)."""
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def render_chart(item: dict[str, Any], size: int) -> Image.Image:
    s = size / 224  # font sizes scale with the image side
    fig = _figure(size)
    ax = fig.add_axes((0.17, 0.17, 0.78, 0.68))
    kind = item["chart_type"]
    if kind == "pie":
        ax.set_position((0.1, 0.05, 0.8, 0.78))
        ax.pie(
            item["values"],
            labels=item["categories"],
            colors=[CHART_COLOURS[c] for c in item["colours"]],
            startangle=90,
            counterclock=False,
            radius=0.8,
            textprops={"fontsize": 6 * s},
        )
    elif kind == "scatter":
        ax.scatter(item["x"], item["y"], s=9 * s * s, color=CHART_COLOURS[item["colour"]])
    elif kind == "bar":
        ax.bar(item["categories"], item["values"], color=CHART_COLOURS[item["colour"]])
    else:
        ax.plot(
            item["categories"],
            item["values"],
            color=CHART_COLOURS[item["colour"]],
            marker="o",
            markersize=3 * s,
            linewidth=1.5 * s,
        )
    if kind != "pie":
        ax.tick_params(labelsize=5.5 * s, length=2 * s)
        if kind != "scatter" and sum(len(c) + 1 for c in item["categories"]) > 30:
            ax.tick_params(axis="x", labelrotation=45)  # long category labels would overlap
        for spine in ("top", "right"):
            ax.spines[spine].set_visible(False)
    ax.set_title(item["title"], fontsize=7.5 * s)
    return _pixels(fig)


def render_table(item: dict[str, Any], size: int) -> Image.Image:
    s = size / 224
    fig = _figure(size)
    fig.text(0.5, 0.93, item["title"], ha="center", va="center", fontsize=8 * s, fontweight="bold")
    ax = fig.add_axes((0.04, 0.04, 0.92, 0.82))
    ax.axis("off")
    rows = [item["header"], *item["rows"]]
    height = min(0.11, 0.95 / len(rows))
    table = ax.table(
        cellText=rows,
        loc="upper center",
        cellLoc="center",
        bbox=(0, 1 - height * len(rows), 1, height * len(rows)),
    )
    table.auto_set_font_size(False)  # fixed size: faster, and the same text size in every table
    table.set_fontsize(6 * s)
    for col in range(len(item["header"])):
        cell = table[0, col]
        cell.set_facecolor(_HEADER_COLOURS[item["header_colour"]])
        cell.get_text().set_fontweight("bold")
    return _pixels(fig)


def render_document(item: dict[str, Any], size: int) -> Image.Image:
    s = size / 224
    fig = _figure(size, _PAGE_COLOURS[item["page_colour"]])
    fig.text(0.07, 0.92, item["heading"], fontsize=7.5 * s, fontweight="bold", va="center")
    fig.add_artist(_rule(fig, 0.86))
    for j, line in enumerate(item["lines"]):
        fig.text(0.07, 0.79 - j * 0.075, line, fontsize=6.5 * s, va="center", family="serif")
    return _pixels(fig)


def _rule(fig: Any, y: float) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([0.07, 0.93], [y, y], transform=fig.transFigure, color="#555555", linewidth=0.6)


RENDERERS: dict[str, Callable[[dict[str, Any], int], Image.Image]] = {
    "chart": render_chart,
    "table": render_table,
    "document": render_document,
}


# ---------------------------------------------------------------------------------------------
# Writing


def typed_item(data_type: str, seed: int, i: int) -> dict[str, Any]:
    """Item i of a data type: its labels (data_type first), a pure function of (seed, type, i)."""
    content = MAKERS[data_type](np.random.default_rng([seed, _SALT[data_type], i]))
    return {"data_type": data_type, **content}


def write_typed(
    out_root: Path, data_type: str, n: int, *, size: int = 224, seed: int = 0
) -> list[Path]:
    """n items as <out_root>/<type>s/<type>_<i>.jpg + .txt caption + .json labels.

    Existing files are kept (a rerun draws nothing); the image is written last, so an image on
    disk always has its caption and labels beside it.
    """
    if n <= 0:
        return []
    import matplotlib  # here, not at the top: a sample without these types never loads it

    folder = Path(out_root) / TYPE_SHARDS[data_type]
    paths = []
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # the library's defaults, whatever the user's matplotlibrc says
        for i in range(n):
            stem = folder / f"{data_type}_{i:06d}"
            img = stem.with_suffix(".jpg")
            if not (is_written(img) and is_written(stem.with_suffix(".json"))):
                item = typed_item(data_type, seed, i)
                labels = {**item, "size": size}
                write_if_missing(stem.with_suffix(".txt"), (item["caption"] + "\n").encode())
                write_if_missing(stem.with_suffix(".json"), label_bytes(labels))
                write_if_missing(img, jpeg_bytes(RENDERERS[data_type](item, size)))
            paths.append(img)
    return paths
