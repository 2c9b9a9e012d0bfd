"""Figures of kernel alignment (seed D): the training curves and kernel-parameter trajectory, the
held-out alignment before / after, and the connector pair (original vs kernel-aligned tower)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.reporting import tables
from src.reporting.figures import CHANCE_STYLE, COLOURS, Plot, _errorbar, _new_figure

METRIC_NAMES = {
    "kernel_mse": "mean (K_s − K_t)²",
    "linear_cka": "linear CKA student vs teacher",
    "token_cosine_to_original": "token cosine to original",
    "colour_accuracy": "colour named right",
    "shape_accuracy": "shape named right",
    "bertscore_to_reference": "BERTScore F1 to reference",
    "nll_reference_caption": "NLL of reference caption",
    "nll_greedy_caption": "NLL of greedy caption",
}


def kernel_align_plot(results: Path) -> Plot:
    """Loss terms per step, the student kernel's parameters per step (relative to the fitted
    values), and held-out kernel MSE and CKA of the original and aligned towers."""
    hist = tables.kernel_align_table(results, "history")
    params = tables.kernel_align_table(results, "params").set_index("stage")
    held = tables.kernel_align_table(results, "heldout")
    fig = _new_figure(1, 4, width=4.0)
    ax_loss, ax_par, *ax_held = fig.subplots(1, 4)
    rows = []
    for i, col in enumerate(("loss_kernel", "loss_clean")):
        ax = ax_loss if col == "loss_kernel" else ax_loss.twinx()
        ax.plot(hist["step"], hist[col], color=COLOURS[i], label=col)
        ax.set_ylabel(col.replace("loss_", "") + " loss", color=COLOURS[i])
        rows += [{"panel": "loss", "series": col, "x": s, "value": v}
                 for s, v in zip(hist["step"], hist[col], strict=True)]  # fmt: skip
    ax_loss.set(xlabel="step", title="training loss terms")
    names = [c for c in ("gamma", "coef0", "coef0_over_gamma", "band") if c in hist.columns]
    for i, col in enumerate(names):
        rel = hist[col] / float(params.loc["fitted", col])
        ax_par.plot(hist["step"], rel, color=COLOURS[i], label=col)
        rows += [{"panel": "kernel parameter / fitted", "series": col, "x": s, "value": v}
                 for s, v in zip(hist["step"], rel, strict=True)]  # fmt: skip
    ax_par.axhline(1.0, label="fitted (least squares)", **CHANCE_STYLE)
    ax_par.set(xlabel="step", ylabel="value / fitted value", title="student kernel parameters")
    ax_par.legend(fontsize=8, frameon=False)
    metrics = [m for m in ("kernel_mse", "linear_cka") if m in set(held["metric"])]
    n = int(held["n"].max())
    for ax, metric in zip(ax_held, metrics, strict=False):
        for j, tower in enumerate(("original", "aligned")):
            r = held[(held["tower"] == tower) & (held["metric"] == metric)].iloc[0]
            lo = r["ci_low"] if np.isfinite(r["ci_low"]) else r["value"]
            hi = r["ci_high"] if np.isfinite(r["ci_high"]) else r["value"]
            _errorbar(ax, [j], [r["value"]], [lo], [hi], tower, color=COLOURS[j],
                      linestyle="none")  # fmt: skip
            rows.append({"panel": "held-out", "series": tower, "x": metric,
                         "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                         "null": r["null"]})  # fmt: skip
        null = held[(held["tower"] == "original") & (held["metric"] == metric)]["null"]
        if np.isfinite(null).all():
            ax.axhline(float(null.iloc[0]), label="shuffled-pairing null", **CHANCE_STYLE)
        ax.set_xticks([0, 1], ["original", "aligned"])
        ax.set_xlim(-0.6, 1.6)
        ax.set(title=f"held-out: {METRIC_NAMES[metric]} (n={n})")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=8, frameon=False)
        ax.grid(alpha=0.3)
    ax_loss.grid(alpha=0.3)
    ax_par.grid(alpha=0.3)
    fig.suptitle("Kernel alignment (KUEA): student tower's kernel towards the teacher's")
    return Plot(
        "kernel_align", fig, pd.DataFrame(rows), "Kernel alignment of the vision tower",
        "Left: kernel and clean loss per step. Middle: the student kernel's trainable parameters "
        "relative to their least-squares fit (the normalised polynomial kernel depends on "
        "coef0/gamma only). Right: held-out mean (K_s − K_t)² (95% bootstrap CI over images) "
        "and linear CKA with its shuffled-pairing null, original vs aligned tower.",
    )  # fmt: skip


def kernel_connectors_plot(results: Path) -> Plot:
    """Held-out caption metrics of the compared connectors (the original tower, the
    kernel-aligned one, the dual encoder's prefix tokens where committed) with 95% CIs, majority
    baselines for colour / shape, and each one's paired difference from the baseline."""
    df = tables.kernel_align_table(results, "connectors")
    metrics = [m for m in METRIC_NAMES if m in set(df["metric"])]
    names = [c for c in df["connector"].unique() if " - " not in c and "baseline" not in c]
    fig = _new_figure(1, len(metrics), width=2.2 + 0.4 * len(names), height=3.9)
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    rows = []
    for ax, metric in zip(axes, metrics, strict=True):
        for j, name in enumerate(names):
            r = df[(df["connector"] == name) & (df["metric"] == metric)].iloc[0]
            _errorbar(ax, [j], [r["mean"]], [r["ci_low"]], [r["ci_high"]], name,
                      color=COLOURS[j], linestyle="none")  # fmt: skip
            rows.append(r.to_dict())
        base = df[(df["connector"] == "majority baseline") & (df["metric"] == metric)]
        if not base.empty:
            ax.axhline(float(base["mean"].iloc[0]), label="majority baseline", **CHANCE_STYLE)
            rows.append(base.iloc[0].to_dict())
        title = METRIC_NAMES[metric]
        for _, d in df[df["connector"].str.contains(" - ") & (df["metric"] == metric)].iterrows():
            rows.append(d.to_dict())
            title += (f"\nΔ {d['connector'].split(' - ')[0]} {d['mean']:+.3f} "
                      f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")  # fmt: skip
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, frameon=False)
    n = int(df["n"].max())
    fig.suptitle(f"Connectors into the same LM, held-out scenes (n={n})")
    return Plot(
        "kernel_connectors", fig, pd.DataFrame(rows),
        "Back into a VLM: connectors on the original tower, the kernel-aligned tower and the dual "
        "encoder",
        "Connectors trained alike (data, steps, seed) into SmolLM2: on the original "
        "EfficientNet-Lite0's 16 tokens, on its kernel-aligned copy's (seed D), and, where "
        "committed, from the dual encoder's one joint-space vector to 8 prefix tokens (seed E, "
        "phase 2); greedy captions of held-out synthetic scenes. Means with 95% bootstrap CIs "
        "over images; each Δ is a paired difference from the baseline connector with its CI; "
        "dashed: the majority-class baseline.",
    )  # fmt: skip


def kernel_plots(results: Path) -> list[tuple[str, object]]:
    """(name, maker) for all_plots (each raises MissingResults without its tables)."""
    return [
        ("kernel_align", lambda: kernel_align_plot(results)),
        ("kernel_connectors", lambda: kernel_connectors_plot(results)),
    ]
