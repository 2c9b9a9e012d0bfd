"""Class labels of an image for probes, and the prompt templates a zero-shot classifier embeds.

Label families (LABELERS): the synthetic scenes' attributes (colour / shape / size of the first
object, the object count: src.data.sample), the data type of every labelled sample image
(scene, photo, chart, table, document: src.data.sample_types), a chart's type, and `folder`
(the shard: any image folder whose subfolders are its classes). An image a family does not label
gets None and is left out of that family's probe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from src.data.sample import COLOURS, SHAPES, SIZES, data_type_of, read_label_file, read_labels

Labeler = Callable[[Path, str], str | None]  # (image path, shard) -> class or None


def _first(attr: str) -> Labeler:
    def label(path: Path, _shard: str) -> str | None:
        lab = read_labels(path)
        return lab["objects"][0][attr] if lab else None

    return label


def _count(path: Path, _shard: str) -> str | None:
    lab = read_labels(path)
    return str(lab["count"]) if lab else None


def _data_type(path: Path, _shard: str) -> str | None:
    return data_type_of(read_label_file(path))


def _chart_type(path: Path, _shard: str) -> str | None:
    lab = read_label_file(path)
    return lab.get("chart_type") if lab and data_type_of(lab) == "chart" else None


LABELERS: dict[str, Labeler] = {
    "colour": _first("colour"),
    "shape": _first("shape"),
    "size": _first("size"),
    "count": _count,
    "data_type": _data_type,
    "chart_type": _chart_type,
    "folder": lambda _path, shard: shard,
}
SCENE_FAMILIES = ("colour", "shape", "size", "count")

_WORDS = {"1": "one", "2": "two", "3": "three"}
_TYPE_NAMES = {"scene": "scene of coloured shapes", "document": "page of text"}


def _objects(n: int, t: int) -> str:
    """A scene caption of n objects (the generator's wording, no positions), variant t."""
    colours, sizes = list(COLOURS), list(SIZES)
    parts = [f"a {sizes[(t + i) % 2]} {colours[(t + i) % 5]} {SHAPES[(t + 2 * i) % 4]}"
             for i in range(n)]  # fmt: skip
    return parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def templates(family: str, cls: str) -> list[str]:
    """The prompts embedded for class `cls` of a label family (their normalised mean is the
    class vector). The scene attributes use the generator's caption wording, each class
    averaged over the values of the other attributes (a prompt ensemble)."""
    if family == "colour":
        return [f"a {z} {cls} {s}." for z in SIZES for s in SHAPES]
    if family == "shape":
        return [f"a {z} {c} {cls}." for z in SIZES for c in COLOURS]
    if family == "size":
        return [f"a {cls} {c} {s}." for c in COLOURS for s in SHAPES]
    if family == "count":
        n = int(cls)
        return [f"{_objects(n, t)}." for t in range(6)] + [
            f"{_WORDS.get(cls, cls)} shape{'s' if n > 1 else ''}."
        ]
    if family == "chart_type":
        return [f"a {cls} chart.", f"a {cls} chart titled something.", f"a {cls} plot."]
    name = _TYPE_NAMES.get(cls, cls).replace("_", " ")
    return [f"a {name}.", f"a picture of a {name}.", f"an image of a {name}."]
