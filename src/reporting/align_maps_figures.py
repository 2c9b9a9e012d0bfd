"""Figures of the alignment suite's speed, embedding-map and attention-map stages, each drawn
from its stage's tables (src/reporting/tables.py) with the values it shows in Plot.data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from src.data.io import atomic_write
from src.reporting import tables
from src.reporting.figures import CHANCE_STYLE, COLOURS, Plot, _errorbar, _legend_below, _new_figure


def speed_dashboard_plot(results: Path) -> Plot:
    """Latency (p50, bar to p95), throughput and peak memory net of weights per batch size."""
    t = tables.align_speed_table(results)
    fig = _new_figure(1, 3, width=4.6, height=3.8)
    axes = fig.subplots(1, 3)
    panels = [("latency_ms_p50", "latency per batch (ms): p50, bar to p95", True),
              ("throughput_per_s", "throughput (items / s at p50)", True),
              ("peak_mem_net_mb", "peak memory net of weights (MiB)", False)]  # fmt: skip
    groups = list(t.groupby(["component", "name"], sort=True))
    for ax, (col, label, log) in zip(axes, panels, strict=True):
        for i, ((comp, name), g) in enumerate(groups):
            g = g.sort_values("batch_size")
            colour, label_ = COLOURS[i % len(COLOURS)], f"{comp}: {name}"
            if col == "latency_ms_p50":
                _errorbar(ax, g.batch_size, g[col], g[col], g.latency_ms_p95, label_, color=colour)
            else:
                ax.plot(g.batch_size, g[col], color=colour, marker="o", label=label_)
        ax.set(xlabel="batch size", ylabel=label, xscale="log", yscale="log" if log else "linear")
        ax.set_xticks(
            sorted(t.batch_size.unique()), [str(b) for b in sorted(t.batch_size.unique())]
        )
        ax.grid(alpha=0.3)
    _legend_below(axes[1], ncol=2)
    dev = ", ".join(sorted(t.device.unique()))
    data = t[["component", "name", "batch_size", "device", "dtype", "latency_ms_p50",
              "latency_ms_p95", "throughput_per_s", "peak_mem_net_mb", "weights_mb"]]  # fmt: skip
    return Plot("align_speed", fig, data.reset_index(drop=True), "Speed: encoders, LLMs, projector",
                f"Forward passes on {dev} after warm-up (runs per point in speed.csv); "
                "preprocessing timed apart on the CPU. Memory is the peak above the post-load "
                "baseline (RSS on CPU, allocator peak on CUDA), so it excludes the weights "
                "(weights_mb in the table).")  # fmt: skip


def embedding_maps_plot(results: Path, colour_by: str = "data_type") -> Plot:
    """2-D maps (rows: spaces, columns: t-SNE / UMAP), points coloured by a label."""
    c = tables.embedding_maps_table(results, "coords")
    spaces, methods = list(dict.fromkeys(c.space)), list(dict.fromkeys(c.method))
    fig = _new_figure(len(spaces), len(methods), width=3.6, height=3.3)
    axes = np.atleast_2d(fig.subplots(len(spaces), len(methods), squeeze=False))
    values = sorted(c[colour_by].astype(str).unique())
    for r, space in enumerate(spaces):
        for k, method in enumerate(methods):
            ax, g = axes[r, k], c[(c.space == space) & (c.method == method)]
            for i, v in enumerate(values):
                h = g[g[colour_by].astype(str) == v]
                ax.scatter(h.x, h.y, s=9, color=COLOURS[i % len(COLOURS)], label=v, alpha=0.8)
            ax.set(title=f"{space}: {method}", xticks=[], yticks=[])
    axes[-1, 0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=3, fontsize=8,
                       frameon=False, title=colour_by)  # fmt: skip
    data = c[["space", "method", "item", "shard", "key", colour_by, "x", "y"]]
    return Plot(f"embedding_maps_{colour_by}", fig, data.reset_index(drop=True),
                f"Embedding maps coloured by {colour_by}",
                f"t-SNE (perplexity below N) and UMAP of each space's pooled vectors for the "
                f"same {c.item.nunique()} images, sampled per data type.")  # fmt: skip


def rsa_plot(results: Path) -> Plot:
    """Dissimilarity matrices per space; RSA rho per pair with CIs; Procrustes disparity after
    the shared map against mismatched pairs."""
    rsa = tables.embedding_maps_table(results, "rsa")
    pro = tables.embedding_maps_table(results, "procrustes")
    rdm = tables.embedding_maps_table(results, "rdm")
    spaces = list(dict.fromkeys(rdm.space))
    fig = _new_figure(1, len(spaces) + 2, width=3.4, height=3.6)
    axes = fig.subplots(1, len(spaces) + 2)
    n = int(max(rdm.i.max(), rdm.j.max())) + 1
    for ax, space in zip(axes, spaces, strict=False):
        g = rdm[rdm.space == space]
        m = np.zeros((n, n))
        m[g.i, g.j] = m[g.j, g.i] = g.dissimilarity
        im = ax.imshow(m, cmap="viridis")
        ax.set(title=f"{space}\n1 - cosine (items by data type)", xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, shrink=0.7)
    pairs = [f"{a}\nvs {b}" for a, b in zip(rsa.space_a, rsa.space_b, strict=True)]
    ax = axes[-2]
    _errorbar(ax, range(len(rsa)), rsa.rho, rsa.ci_low, rsa.ci_high, "RSA Spearman rho (95% CI)",
              color=COLOURS[0], linestyle="none")  # fmt: skip
    ax.axhline(0, label="chance (0)", **CHANCE_STYLE)
    ax.set_xticks(range(len(rsa)), pairs, fontsize=7)
    ax.set(ylabel="Spearman rho of dissimilarities", title="RSA")
    _legend_below(ax, ncol=1)
    ax = axes[-1]
    x = np.arange(len(pro))
    ax.bar(x - 0.2, pro.disparity, 0.4, color=COLOURS[1], label="matched (held out)")
    ax.bar(x + 0.2, pro.disparity_mismatched, 0.4, yerr=pro.disparity_mismatched_sd,
           color="0.7", label="mismatched pairs (chance)")  # fmt: skip
    ax.set_xticks(x, [f"{a} ->\n{b}" for a, b in zip(pro.space_a, pro.space_b, strict=True)],
                  fontsize=7)  # fmt: skip
    ax.set(ylabel="Procrustes disparity (0 same shape, 1 none)", ylim=(0, 1.05),
           title="Procrustes after a shared map")  # fmt: skip
    _legend_below(ax, ncol=1)
    data = pd.concat([rsa.assign(measure="rsa_rho", value=rsa.rho),
                      pro.assign(measure="procrustes_disparity", value=pro.disparity)],
                     ignore_index=True)  # fmt: skip
    return Plot("align_rsa", fig, data, "Representational similarity and Procrustes",
                "Left: each space's dissimilarity matrix over the same images. RSA: Spearman "
                "rho of two matrices' entries, 95% bootstrap CI over images (pairs of one "
                "image's copies left out), p from relabelling images. Procrustes: A mapped onto "
                "B by ridge least squares on a training split; disparity on held-out images "
                "next to mismatched pairings.")  # fmt: skip


def plots(results: Path) -> list[tuple[str, object]]:
    """(name, maker) of this module's figures for all_plots()."""
    return [
        ("align_speed", lambda: speed_dashboard_plot(results)),
        ("embedding_maps_data_type", lambda: embedding_maps_plot(results, "data_type")),
        ("embedding_maps_scene_shape", lambda: embedding_maps_plot(results, "scene_shape")),
        ("align_rsa", lambda: rsa_plot(results)),
    ]


def save_overlays(table: pd.DataFrame, images: dict[str, Image.Image], out_dir: Path) -> list:
    """<out_dir>/<image>_<text index>.png: the image with each patch's similarity drawn over
    the box of the original image it covers (the processor's crop undone)."""
    written = []
    for (name, t), g in table.groupby(["image", "text_index"], sort=True):
        im = images[name]
        rows, cols = int(g.row.max()) + 1, int(g.col.max()) + 1
        m = np.full((rows, cols), np.nan)
        m[g.row, g.col] = g.similarity
        fig = Figure(figsize=(4.2, 4.2 * im.size[1] / im.size[0] + 0.5), layout="constrained")
        ax = fig.subplots()
        ax.imshow(im)
        extent = (g.left.min(), g.right.max(), g.bottom.max(), g.top.min())
        h = ax.imshow(m, cmap="jet", alpha=0.45, extent=extent, interpolation="nearest")
        ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
            (extent[0], extent[3]), extent[1] - extent[0], extent[2] - extent[3], fill=False,
            edgecolor="white", linestyle="--"))  # fmt: skip
        ax.set(xlim=(0, im.size[0]), ylim=(im.size[1], 0), xticks=[], yticks=[],
               title=f"{name}: {g.text.iloc[0][:40]}")  # fmt: skip
        fig.colorbar(h, ax=ax, shrink=0.7, label="patch-text cosine")
        path = Path(out_dir) / f"{name}_{t}.png"
        written.append(atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png")))
    return written
