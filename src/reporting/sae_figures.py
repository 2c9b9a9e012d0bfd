"""Figures of the SAE study (seed C), layer by layer, every model of the results in one figure:
reconstruction (FVU, L0, dead share, delta-NLL) per token set, and the semantic measures
(feature overlap with the caption, logit-lens word hits) against chance."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.reporting import tables
from src.reporting.figures import (
    CHANCE_STYLE,
    COLOURS,
    Plot,
    _errorbar,
    _legend_below,
    _new_figure,
)

TOKEN_SETS = {
    "image": "image tokens",
    "text": "prompt tokens after the image",
    "control": "caption in the image's place (text-only control)",
    "control_text": "prompt tokens in the control",
}
MARKERS = ["o", "s", "^", "D", "v"]
RECON_PANELS = [
    ("fvu", "FVU Σ‖x − x̂‖² / Σ‖x − x̄‖²", True),
    ("l0", "L0 (active features per token)", True),
    ("dead_share", "share of features never active", False),
    ("delta_nll", "caption NLL change, SAE spliced at image tokens", True),
]


def _models(results: Path, table: str, models: list[str] | None) -> list[str]:
    found = tables.sae_models(results, table)
    chosen = [m for m in (models or found) if m in found]
    if not chosen:
        raise tables.MissingResults(f"no {table} tables in {results}/sae: run src.eval.{table}")
    return chosen


def sae_reconstruction_plot(results: Path, models: list[str] | None = None) -> Plot:
    models = _models(results, "sae_reconstruction", models)
    fig = _new_figure(1, len(RECON_PANELS), width=4.6)
    axes = fig.subplots(1, len(RECON_PANELS), squeeze=False)[0]
    rows = []
    for mi, model in enumerate(models):
        df = tables.sae_rows(results, "sae_reconstruction", model)
        for ax, (col, _label, has_ci) in zip(axes, RECON_PANELS, strict=True):
            if col not in df:
                continue
            for si, (tokens, name) in enumerate(TOKEN_SETS.items()):
                g = df[(df["tokens"] == tokens) & df[col].notna()].sort_values("layer")
                if g.empty:
                    continue
                # a ratio's percentile CI (FVU) can miss its full-sample value at few images
                lo = g[f"{col}_ci_low"].clip(upper=g[col]) if has_ci else g[col]
                hi = g[f"{col}_ci_high"].clip(lower=g[col]) if has_ci else g[col]
                _errorbar(
                    ax,
                    g["layer"],
                    g[col],
                    lo,
                    hi,
                    f"{model}: {name}",
                    color=COLOURS[si % len(COLOURS)],
                    marker=MARKERS[mi % len(MARKERS)],
                    linestyle="-" if mi == 0 else "--",
                )
                rows += [
                    {
                        "model": model,
                        "panel": col,
                        "tokens": tokens,
                        "layer": r.layer,
                        "value": getattr(r, col),
                        "ci_low": lo.loc[i],
                        "ci_high": hi.loc[i],
                    }
                    for i, r in zip(g.index, g.itertuples(), strict=True)
                ]
    axes[0].axhline(1.0, label="predicting the mean (FVU 1)", **CHANCE_STYLE)
    axes[3].axhline(0.0, label="no change", **CHANCE_STYLE)
    for ax, (_, label, _) in zip(axes, RECON_PANELS, strict=True):
        ax.set(xlabel="LLM layer (hook_resid_post)", ylabel=label)
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=1)
    return Plot(
        "sae_reconstruction",
        fig,
        pd.DataFrame(rows),
        "SAEs trained on text: reconstruction of image tokens, layer by layer",
        "TopK SAEs trained on the LLM's own text activations (captions of another shard in the "
        "prompt's place of the image) reconstruct each token set at hook_resid_post. FVU 1 is "
        "what predicting the set's mean gives; image tokens far above the text sets mean the "
        "SAE's features do not span them. Delta-NLL: the caption's mean token NLL with the "
        "reconstruction spliced in for the image tokens only, minus the clean NLL. 95% "
        "bootstrap CIs over images.",
    )


def sae_semantic_plot(results: Path, models: list[str] | None = None) -> Plot:
    models = _models(results, "sae_semantic", models)
    fig = _new_figure(1, 2)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    labels = {
        "overlap": "share of the image's active features also active on its caption",
        "lens": "share of top image features whose logit lens names a caption word",
    }
    rows = []
    for mi, model in enumerate(models):
        df = tables.sae_rows(results, "sae_semantic", model)
        for ax, measure in zip(axes, labels, strict=True):
            g = df[df["measure"] == measure].sort_values("layer")
            for kind, colour, name in (
                ("own", COLOURS[mi], "own caption"),
                ("chance", "0.45", "another image's caption (chance)"),
            ):
                _errorbar(
                    ax,
                    g["layer"],
                    g[kind],
                    g[f"{kind}_ci_low"],
                    g[f"{kind}_ci_high"],
                    f"{model}: {name}",
                    color=colour,
                    marker=MARKERS[mi % len(MARKERS)],
                    linestyle="-" if kind == "own" else "--",
                )
                rows += [
                    {
                        "model": model,
                        "panel": measure,
                        "series": kind,
                        "layer": r.layer,
                        "value": getattr(r, kind),
                        "ci_low": getattr(r, f"{kind}_ci_low"),
                        "ci_high": getattr(r, f"{kind}_ci_high"),
                        "n": r.n_images,
                    }
                    for r in g.itertuples()
                ]
    for ax, measure in zip(axes, labels, strict=True):
        ax.set(xlabel="LLM layer (hook_resid_post)", ylabel=labels[measure])
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=1)
    return Plot(
        "sae_semantic",
        fig,
        pd.DataFrame(rows),
        "Do image-token SAE features mean what the caption says?",
        "Left: of the SAE features active on any of an image's tokens, the share also active on "
        "its own caption's tokens in the text-only control, against another image's caption "
        "(chance, a derangement). Right: of the image's 10 strongest features, the share whose "
        "decoder direction, read through the LLM's final norm and unembedding (top 20 tokens), "
        "names a content word of the caption, against a mismatched caption. 95% bootstrap CIs "
        "over images.",
    )


def makers(results: Path, models: list[str] | None = None) -> list[tuple[str, object]]:
    """The SAE figures for all_plots (each raises MissingResults without its tables)."""
    return [
        ("sae_reconstruction", lambda: sae_reconstruction_plot(results, models)),
        ("sae_semantic", lambda: sae_semantic_plot(results, models)),
    ]
