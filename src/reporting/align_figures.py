"""Figures of the alignment training (seed E) and of eval_probe: held-out retrieval per MRL
radius against chance, and zero-shot / linear-probe accuracy per label family against chance.
Each Plot carries the table of every number it draws (src.reporting.figures' conventions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.reporting import tables
from src.reporting.figures import CHANCE_STYLE, COLOURS, Plot, _errorbar, _legend_below, _new_figure

DIRECTIONS = {"image_to_text": "image → text", "text_to_image": "text → image"}


def align_retrieval_plot(results: Path) -> Plot:
    """R@1/5/10 on the held-out test split per MRL radius, both directions, with 95% CIs and
    the chance level of each k (dashed)."""
    table = tables.align_retrieval(results)
    table = table[table["metric"].str.startswith("R@")].copy()
    table["k"] = table["metric"].str[2:].astype(int)
    names = sorted(table["name"].unique())
    fig = _new_figure(len(names), 2, width=4.8, height=3.6)
    axes = fig.subplots(len(names), 2, squeeze=False)
    rows = []
    for row, name in zip(axes, names, strict=True):
        for ax, (direction, title) in zip(row, DIRECTIONS.items(), strict=True):
            g = table[(table["name"] == name) & (table["direction"] == direction)]
            for i, (radius, h) in enumerate(g.groupby("radius")):
                h = h.sort_values("k")
                _errorbar(ax, h["k"], h["value"], h["ci_low"], h["ci_high"], f"d = {radius}",
                          color=COLOURS[i % len(COLOURS)])  # fmt: skip
                rows += h[["name", "direction", "radius", "k", "value", "ci_low", "ci_high",
                           "chance", "n"]].to_dict("records")  # fmt: skip
            chance = g.groupby("k")["chance"].first()
            ax.plot(chance.index, chance.values, label="chance", marker="_", **CHANCE_STYLE)
            n = int(g["n"].max()) if len(g) else 0
            ax.set(xlabel="k", ylabel="recall@k", title=f"{name}: {title} (n = {n})",
                   xticks=sorted(g["k"].unique()), ylim=(0, 1.02))  # fmt: skip
            ax.grid(alpha=0.3)
            _legend_below(ax, ncol=4)
    return Plot(
        "contrastive_retrieval",
        fig,
        pd.DataFrame(rows),
        "Dual encoder retrieval per MRL radius (held-out test split)",
        "train_align's adapters picked on the validation split, scored on held-out test images: "
        "an image is found by a caption when any of its captions ranks within k (CLIP_benchmark). "
        "Each radius is the first d coordinates of the joint space, renormalised. Bars are 95% "
        "bootstrap CIs over queries; the dashed line is a random ranking's recall.",
    )


def probe_label(name: str, model: str) -> str:
    """A probe series' legend entry: the eval_probe run and what it probed (the run's own dual
    encoder, a folder named as the run, is its joint space; any other model by its name)."""
    what = Path(model).name if "/" in str(model) else str(model)
    return f"{name}: {'joint space' if what == name else what}"


def probe_plot(results: Path) -> Plot:
    """acc@1 per label family: zero-shot (the joint model) and linear probe (each tower), with
    95% CIs, the uniform chance level and the majority-class baseline."""
    zs, lp = tables.probe_table(results, "zero_shot"), tables.probe_table(results, "linear_probe")
    panels = [("zero-shot", zs), ("linear probe", lp)]
    panels = [(t, d[d["metric"] == "acc@1"]) for t, d in panels if not d.empty]
    if not panels:
        raise tables.MissingResults(f"no eval_probe rows in {results}")
    families = sorted({f for _, d in panels for f in d["family"]})
    fig = _new_figure(1, len(panels), width=max(5.0, 1.1 * len(families) + 2.5), height=4.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    rows = []
    x = np.arange(len(families))
    for ax, (title, d) in zip(axes, panels, strict=True):
        series = sorted(d[["name", "model"]].drop_duplicates().itertuples(index=False))
        width = 0.8 / max(1, len(series))
        for i, (name, model) in enumerate(series):
            g = d[(d["name"] == name) & (d["model"] == model)].set_index("family").reindex(families)
            _errorbar(ax, x + (i - (len(series) - 1) / 2) * width, g["value"], g["ci_low"],
                      g["ci_high"], probe_label(name, model), color=COLOURS[i % len(COLOURS)],
                      linestyle="none")  # fmt: skip
            for fam, r in g.dropna(subset=["value"]).iterrows():
                keep = ("value", "ci_low", "ci_high", "chance", "majority", "n")
                rows.append({"protocol": title, "name": name, "model": model, "family": fam,
                             **{k: r[k] for k in keep}})  # fmt: skip
        base = d.groupby("family")[["chance", "majority"]].first().reindex(families)
        ax.scatter(x, base["chance"], marker="_", s=900, color="0.35", label="chance (1 / classes)")
        ax.scatter(x, base["majority"], marker="_", s=900, color="#ff7f0e",
                   label="majority class (train)")  # fmt: skip
        ax.set(xticks=x, xticklabels=families, ylim=(0, 1.02), ylabel="accuracy (acc@1)",
               title=f"{title} (held-out test split)")  # fmt: skip
        ax.grid(alpha=0.3, axis="y")
        _legend_below(ax, ncol=2)
    return Plot(
        "probe_accuracy",
        fig,
        pd.DataFrame(rows),
        "Zero-shot and linear-probe accuracy per label (eval_probe)",
        "CLIP_benchmark's protocols on local labels: zero-shot = class vectors from prompt "
        "templates in the dual encoder's joint space; linear probe = logistic regression on "
        "normalised pooled features, C picked on the validation split, refit on train + val. "
        "Each eval_probe run is one tower and its own dual encoder (the main job: the original "
        "EfficientNet-Lite0 and the kernel-aligned one, trained and split alike). Test images "
        "only, 95% bootstrap CIs; grey bars: uniform chance, orange: always the most frequent "
        "training class.",
    )


def align_plots(results: Path) -> list[tuple[str, object]]:
    """(name, maker) of this part's figures, for src.reporting.figures.all_plots."""
    return [
        ("contrastive_retrieval", lambda: align_retrieval_plot(results)),
        ("probe_accuracy", lambda: probe_plot(results)),
    ]
