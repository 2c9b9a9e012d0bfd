"""The study's figures, each drawn from result tables: a Plot holds the figure and a table of
every number it shows, so a reader (and the tests) can check one against the other.

Matplotlib's object API only (no pyplot): no global state, no backend to pick, safe in jobs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from src.data.io import atomic_write
from src.data.paths import figure_png, figure_values
from src.metrics.measures import MEASURES
from src.metrics.stats import bootstrap_spearman
from src.reporting import tables

CHANCE_STYLE = dict(color="0.35", linestyle="--", linewidth=1.0)
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf"]

# What a perturbation level means, for the x axis (eval_perturb's definitions).
LEVEL_AXIS = {
    "mask": "level: fraction of E_post tokens zeroed",
    "lowrank": "level: fraction of singular directions kept",
    "noise": "level: noise power / signal power",
    "orthogonal": "level: rotation strength (exp(level·A))",
}
# Reference levels score_perturb measures on the same images: (score suffix, legend name).
PERTURB_REFERENCES = {
    "bertscore_vs_original": [("_mismatched", "chance: two images' captions")],
    "mini_nll_caption": [
        ("_original", "unperturbed caption"),
        ("_original_mismatched", "chance: another image's caption"),
    ],
}
MEASURE_NAMES = {
    "erank_energy": "effective rank exp H(s²/Σs²)",
    "erank_rv": "effective rank exp H(s/Σs) (Roy & Vetterli)",
    "erank_energy_norm": "effective rank exp H(s²/Σs²) / min(T, D)",
    "erank_rv_norm": "effective rank exp H(s/Σs) / min(T, D)",
}


@dataclass
class Plot:
    """A figure, the table of every number it shows, and the words the report puts beside it."""

    name: str  # file stem: <figures>/<name>.png and <out>/<name>.csv
    figure: Figure
    data: pd.DataFrame
    title: str
    caption: str


def space_label(space: str) -> str:
    """'pre' -> 'E_pre', 'post' -> 'E_post', 'ref:minilm' -> 'minilm (ref)'."""
    if space.startswith("ref:"):
        return f"{space[4:]} (ref)"
    return {"pre": "E_pre", "post": "E_post"}.get(space, space)


def estimator_label(name: str) -> str:
    """A CKA measure's legend name: 'cka_linear' -> 'linear biased', 'cka_rbf_unbiased' ->
    'rbf unbiased' (the registry's unbiased flag); a name outside the registry as it is."""
    m = MEASURES.get(name)
    if m is None:
        return name.replace("_", " ")
    kernel = name.removeprefix("cka_").removesuffix("_unbiased").replace("_", " ")
    return f"{kernel} {'unbiased' if m.unbiased else 'biased'}"


def _errorbar(ax: Axes, x, mean, lo, hi, label: str, **kw):
    """Points with asymmetric CI bars; the container carries `label` (tests look it up)."""
    mean, lo, hi = (np.asarray(v, dtype=float) for v in (mean, lo, hi))
    yerr = np.vstack([mean - lo, hi - mean])
    return ax.errorbar(x, mean, yerr=yerr, label=label, capsize=3, **{"marker": "o", **kw})


def _legend_below(ax: Axes, ncol: int = 2) -> None:
    """The legend under the axes, where it hides no data (constrained layout makes room),
    below every line of the x label."""
    lines = ax.get_xlabel().count("\n") + 1
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1 - 0.07 * lines), ncol=ncol,
              fontsize=8, frameon=False)  # fmt: skip


def _new_figure(rows: int, cols: int, width: float = 5.2, height: float = 3.9) -> Figure:
    return Figure(figsize=(width * cols, height * rows), layout="constrained")


# ------------------------------------------------------------------------------------ kNN


def knn_plot(results: Path, models: list[str] | None = None) -> Plot:
    """kNN overlap against k for every pair of spaces (CI bars, chance k/(N-1)), and CKA with
    its permutation null, one row per model."""
    models = models or tables.knn_models(results)
    if not models:
        raise tables.MissingResults(
            f"no knn/<model>/knn.csv under {results}: run src.extract.extract_knn"
        )
    fig = _new_figure(len(models), 2)
    axes = fig.subplots(len(models), 2, squeeze=False)
    rows = []
    for r, model in enumerate(models):
        knn = tables.knn_table(results, model)
        knn = knn[knn["scope"] == "global"]
        cka = tables.knn_table(results, model, "cka")
        ax = axes[r, 0]
        pairs = list(dict.fromkeys(zip(knn["from_space"], knn["to_space"], strict=True)))
        for i, (a, b) in enumerate(pairs):
            g = knn[(knn["from_space"] == a) & (knn["to_space"] == b)].sort_values("k")
            label = f"{space_label(a)} → {space_label(b)}"
            _errorbar(
                ax,
                g["k"],
                g["overlap_mean"],
                g["overlap_ci_low"],
                g["overlap_ci_high"],
                label,
                color=COLOURS[i % len(COLOURS)],
            )
            for row in g.itertuples():
                rows.append(
                    {
                        "model": model,
                        "panel": "knn_overlap",
                        "series": label,
                        "x": row.k,
                        "value": row.overlap_mean,
                        "ci_low": row.overlap_ci_low,
                        "ci_high": row.overlap_ci_high,
                        "chance": row.chance,
                        "n": row.n,
                    }
                )
        main = knn[(knn["from_space"] == "pre") & (knn["to_space"] == "post")].sort_values("k")
        if main.empty:
            main = knn.drop_duplicates("k").sort_values("k")
        n = int(main["n"].iloc[0])
        ax.plot(main["k"], main["chance"], label=f"chance k/(N−1), N={n}", **CHANCE_STYLE)
        metric, pool = knn["metric"].iloc[0], knn["pool"].iloc[0]
        ax.set(
            xlabel="k (neighbours)",
            ylabel="kNN overlap |N_k(A) ∩ N_k(B)| / k",
            title=f"{model}: kNN overlap ({metric}, {pool}-pooled), 95% CI",
            ylim=(0, 1),
        )
        ax.set_xticks(sorted(knn["k"].unique()))
        _legend_below(ax)
        ax.grid(alpha=0.3)

        ax = axes[r, 1]
        estimators = list(dict.fromkeys(cka["estimator"]))
        cpairs = list(dict.fromkeys(zip(cka["from_space"], cka["to_space"], strict=True)))
        height = 0.8 / max(len(estimators), 1)
        null_label = f"null 95th pct (shuffled pairing), at most {cka['null_q95'].max():.3f}"
        for j, est in enumerate(estimators):
            g = cka[cka["estimator"] == est].set_index(["from_space", "to_space"]).loc[cpairs]
            y = np.arange(len(cpairs)) + (j - (len(estimators) - 1) / 2) * height
            ax.barh(y, g["cka"], height, label=estimator_label(est), color=COLOURS[j])
            ax.plot(
                g["null_q95"],
                y,
                linestyle="none",
                marker="|",
                markersize=12,
                color="k",
                label=null_label if j == 0 else None,
            )
            for (a, b), row in zip(cpairs, g.itertuples(), strict=True):
                rows.append(
                    {
                        "model": model,
                        "panel": "cka",
                        "series": est,
                        "x": f"{space_label(a)} → {space_label(b)}",
                        "value": row.cka,
                        "ci_low": None,
                        "ci_high": None,
                        "chance": row.null_q95,
                        "n": row.n,
                    }
                )
        ax.set_yticks(np.arange(len(cpairs)))
        ax.set_yticklabels([f"{space_label(a)} → {space_label(b)}" for a, b in cpairs], fontsize=8)
        ax.invert_yaxis()  # the same order as the legend on the left
        ax.set(
            xlabel="CKA (mean-pooled images)",
            xlim=(0, 1),
            title=f"{model}: CKA vs permutation null",
        )
        _legend_below(ax)
        ax.grid(alpha=0.3, axis="x")
    return Plot(
        "knn",
        fig,
        pd.DataFrame(rows),
        "Neighbourhoods and CKA across the connector",
        "Left: the share of each image's k nearest neighbours that two spaces agree on (global "
        "exact search, self excluded), with 95% CIs (network HAC over the kNN graph: images that "
        "are neighbours are not independent) and the chance level k/(N-1). "
        "Right: CKA between the same spaces; the black tick is the 95th percentile of CKA under "
        "shuffled pairing, so a bar far above it is signal, not small-N inflation.",
    )


# ------------------------------------------------------------------ effective rank vs ref


def erank_vs_ref_plot(
    results: Path,
    models: list[str] | None = None,
    k: int = 10,
    measure: str = "erank_energy",
    variant: str = "raw",
) -> Plot:
    """Per model, E_pre and E_post as points: effective rank of an image's token matrix (x)
    against kNN overlap with each reference space at k (y); an arrow runs pre -> post."""
    models = models or tables.knn_models(results)
    if not models:
        raise tables.MissingResults(
            f"no knn/<model>/knn.csv under {results}: run src.extract.extract_knn"
        )
    knn = {m: tables.knn_table(results, m) for m in models}
    spectra = {m: tables.knn_table(results, m, "spectra") for m in models}
    refs = sorted({s for t in knn.values() for s in t["from_space"] if s.startswith("ref:")})
    if not refs:
        raise tables.MissingResults("no reference spaces in knn.csv: run extract_knn with --ref")
    fig = _new_figure(1, len(refs))
    axes = fig.subplots(1, len(refs), squeeze=False)[0]
    rows = []
    for ax, ref in zip(axes, refs, strict=True):
        chance = None
        for i, model in enumerate(models):
            t = knn[model]
            t = t[(t["scope"] == "global") & (t["from_space"] == ref) & (t["k"] == k)]
            sp = spectra[model]
            sp = sp[
                (sp["level"] == "image") & (sp["variant"] == variant) & (sp["measure"] == measure)
            ]
            pts = []
            for space in ("pre", "post"):
                o, e = t[t["to_space"] == space], sp[sp["space"] == space]
                if o.empty or e.empty:
                    continue
                o, e = o.iloc[0], e.iloc[0]
                pts.append((e["value"], o["overlap_mean"]))
                ax.errorbar(
                    e["value"],
                    o["overlap_mean"],
                    xerr=[[e["value"] - e["ci_low"]], [e["ci_high"] - e["value"]]],
                    yerr=[
                        [o["overlap_mean"] - o["overlap_ci_low"]],
                        [o["overlap_ci_high"] - o["overlap_mean"]],
                    ],
                    marker="o" if space == "pre" else "s",
                    color=COLOURS[i % len(COLOURS)],
                    capsize=3,
                    label=f"{model} {space_label(space)}",
                )
                chance = o["chance"]
                rows.append(
                    {
                        "model": model,
                        "reference": ref[4:],
                        "space": space,
                        "erank": e["value"],
                        "erank_ci_low": e["ci_low"],
                        "erank_ci_high": e["ci_high"],
                        "overlap": o["overlap_mean"],
                        "overlap_ci_low": o["overlap_ci_low"],
                        "overlap_ci_high": o["overlap_ci_high"],
                        "chance": o["chance"],
                        "k": k,
                        "measure": measure,
                        "variant": variant,
                    }
                )
            if len(pts) == 2:
                ax.annotate(
                    "",
                    xy=pts[1],
                    xytext=pts[0],
                    arrowprops=dict(arrowstyle="->", color=COLOURS[i % len(COLOURS)], alpha=0.6),
                )
        if chance is not None:
            ax.axhline(chance, label=f"chance k/(N−1) = {chance:.3f}", **CHANCE_STYLE)
        ax.set(
            xlabel=f"{MEASURE_NAMES.get(measure, measure)}\nper image, {variant}, mean ± 95% CI",
            ylabel=f"kNN overlap with {ref[4:]} at k={k}",
            title=f"Effective rank vs agreement with {ref[4:]}",
        )
        ax.set_ylim(bottom=0)
        _legend_below(ax)
        ax.grid(alpha=0.3)
    return Plot(
        "erank_vs_ref",
        fig,
        pd.DataFrame(rows),
        "Effective rank against agreement with a reference space",
        f"Each point is one model's E_pre (circle) or E_post (square); the arrow shows what the "
        f"connector does. x: {MEASURE_NAMES.get(measure, measure)} of each image's centred "
        f"token matrix ({variant}), averaged over images. y: kNN overlap at k={k} between the "
        "reference space and that space. Bars are 95% CIs (bootstrap over images for the rank, "
        "network HAC over the kNN graph for the overlap).",
    )


# ----------------------------------------------------------------- captions vs recon


def _summary_row(summary: pd.DataFrame, score: str) -> pd.Series | None:
    hit = summary[summary["score"] == score]
    return None if hit.empty else hit.iloc[0]


def caption_recon_plot(results: Path, models: list[str] | None = None) -> Plot:
    """Captions from E_post vs from reconstructed E_pre sent back through the connector:
    agreement with the reference caption (with its mismatched-image chance level), how alike
    the two captions are, and, where scored, the caption NLL given the image."""
    models = models or tables.caption_models(results)
    if not models:
        raise tables.MissingResults(
            f"no captions/<model>/scored/ under {results}: run src.eval.score_captions"
        )
    summaries = {m: tables.caption_summary(results, m) for m in models}
    per_image = {m: tables.caption_rows(results, m) for m in models}
    has_nll = any(_summary_row(s, "mini_nll_caption_post") is not None for s in summaries.values())
    fig = _new_figure(1, 3 if has_nll else 2, width=4.8)
    axes = fig.subplots(1, 3 if has_nll else 2, squeeze=False)[0]
    rows = []
    panels = [("bertscore", "BERTScore F1 vs reference caption", "bertscore_caption_{}_ref")]
    if has_nll:
        panels.append(
            ("nll", "caption NLL under its own model given the image", "mini_nll_caption_{}")
        )
    sources = (("post", "from E_post"), ("recon", "from reconstruction"))
    for ax, (panel, ylabel, pattern) in zip((axes[0], *axes[2:]), panels, strict=True):
        width = 0.8 / len(sources)
        for j, (src, name) in enumerate(sources):
            x, vals = [], []
            for i, model in enumerate(models):
                r = _summary_row(summaries[model], pattern.format(src))
                if r is None:
                    continue
                x.append(i + (j - 0.5) * width)
                vals.append(r)
                rows.append(
                    {
                        "model": model,
                        "panel": panel,
                        "series": name,
                        "value": r["mean"],
                        "ci_low": r["ci_low"],
                        "ci_high": r["ci_high"],
                        "n": r["n"],
                    }
                )
            if not vals:
                continue
            mean = [v["mean"] for v in vals]
            err = [
                [v["mean"] - v["ci_low"] for v in vals],
                [v["ci_high"] - v["mean"] for v in vals],
            ]
            ax.bar(x, mean, width, yerr=err, capsize=4, label=f"caption {name}", color=COLOURS[j])
        for i, model in enumerate(models):
            r = _summary_row(summaries[model], pattern.format("post") + "_mismatched")
            if r is None:
                continue
            ax.plot(
                [i - 0.45, i + 0.45],
                [r["mean"]] * 2,
                label="chance: another image's"
                + (" reference" if panel == "bertscore" else " caption")
                if i == 0
                else None,
                **CHANCE_STYLE,
            )
            rows.append(
                {
                    "model": model,
                    "panel": panel,
                    "series": "chance (mismatched)",
                    "value": r["mean"],
                    "ci_low": r["ci_low"],
                    "ci_high": r["ci_high"],
                    "n": r["n"],
                }
            )
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models)
        ax.set(ylabel=ylabel, title=ylabel.split(" vs")[0].split(" under")[0] + " (95% CI)")
        if panel == "bertscore":
            ax.set_ylim(0, 1.08)
        _legend_below(ax, ncol=1)
        ax.grid(alpha=0.3, axis="y")

    ax = axes[1]
    bins = np.linspace(0, 1, 201)
    for i, model in enumerate(models):
        d = per_image[model]
        same = (d["caption_recon"].fillna("") == d["caption_post"].fillna("")).mean()
        # Identical captions score 1 up to float error (1.0000001): keep them in the top bin.
        vals = d["bertscore_recon_vs_post"].dropna().to_numpy().clip(0.0, 1.0)
        ax.hist(
            vals,
            bins=bins,
            alpha=0.6,
            color=COLOURS[i % len(COLOURS)],
            label=f"{model}: {same:.0%} identical (n={len(d)})",
        )
        rows.append(
            {
                "model": model,
                "panel": "recon_vs_post",
                "series": "identical share",
                "value": float(same),
                "ci_low": None,
                "ci_high": None,
                "n": len(d),
            }
        )
        rows.append(
            {
                "model": model,
                "panel": "recon_vs_post",
                "series": "mean BERTScore",
                "value": float(vals.mean()),
                "ci_low": None,
                "ci_high": None,
                "n": len(vals),
            }
        )
    ax.set(
        xlabel="BERTScore F1, reconstruction caption vs E_post caption",
        ylabel="images",
        title="How alike the two captions are",
    )
    low = min(float(np.nanmin(per_image[m]["bertscore_recon_vs_post"])) for m in models)
    ax.set_xlim(max(0.0, low - 0.02), 1.005)  # the mass sits near 1: show where it is
    _legend_below(ax, ncol=1)
    ax.grid(alpha=0.3)
    return Plot(
        "caption_recon",
        fig,
        pd.DataFrame(rows),
        "Captions from E_post vs from reconstructed E_pre",
        "Captions generated greedily from the stored E_post and from the reconstructed E_pre sent "
        "back through the connector. Bars: mean score with 95% bootstrap CIs; the dashed line is "
        "the chance level, the same score against another image's reference (or, for the NLL, "
        "the caption given another image). Middle: per-image BERTScore between the two captions "
        "(1 = identical).",
    )


def caption_recon_pre_plot(results: Path, models: list[str] | None = None) -> Plot:
    """Per image: how well E_pre was reconstructed (token cosine) against how much the caption
    changed (BERTScore of the reconstruction's caption vs E_post's), with Spearman's rho."""
    models = models or [
        m for m in tables.caption_models(results) if m in tables.recon_models(results)
    ]
    if not models:
        raise tables.MissingResults(
            f"no model with both scored captions and eval_recon rows in {results}: run "
            "src.eval.score_captions and src.eval.eval_recon"
        )
    fig = _new_figure(1, len(models), width=6.0, height=4.8)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    rows = []
    for ax, model in zip(axes, models, strict=True):
        rec = tables.recon_rows(results, model)
        rec = rec[rec["method"] == "reconstructor"]
        cap = tables.caption_rows(results, model)
        d = cap.merge(rec, on=["shard", "key"], how="inner")
        if d.empty:
            raise tables.MissingResults(
                f"{model}: no captioned image has a reconstruction row (run eval_recon with "
                "--split all on the captioned shard)"
            )
        split = d["split"] if "split" in d else pd.Series("val", index=d.index)
        for j, s in enumerate(("train", "val")):
            part = d[split == s]
            if part.empty:
                continue
            ax.scatter(
                part["cosine"],
                part["bertscore_recon_vs_post"],
                s=14,
                alpha=0.6,
                color=COLOURS[j],
                label=f"{'held-out' if s == 'val' else 'training'} images (n={len(part)})",
            )
        for row in d.itertuples():
            rows.append(
                {
                    "model": model,
                    "shard": row.shard,
                    "key": row.key,
                    "split": split[row.Index],
                    "recon_cosine": row.cosine,
                    "bertscore_recon_vs_post": row.bertscore_recon_vs_post,
                }
            )
        x = torch.tensor(d["cosine"].to_numpy(), dtype=torch.float64)
        y = torch.tensor(d["bertscore_recon_vs_post"].to_numpy(), dtype=torch.float64)
        rho = bootstrap_spearman(x, y) if len(d) > 2 else None
        text = (
            ""
            if rho is None
            else (f"Spearman ρ = {rho['rho']:.2f} [{rho['ci_low']:.2f}, {rho['ci_high']:.2f}]")
        )
        if rho is not None:
            rows.append(
                {
                    "model": model,
                    "shard": "*",
                    "key": "spearman_rho",
                    "split": "all",
                    "recon_cosine": rho["rho"],
                    "bertscore_recon_vs_post": None,
                    "ci_low": rho["ci_low"],
                    "ci_high": rho["ci_high"],
                }
            )
        ax.set(
            xlabel="E_pre reconstruction: token cosine (reconstructor)",
            ylabel="BERTScore F1: recon caption vs E_post caption",
            title=f"{model}: {text}, n={len(d)}",
        )
        _legend_below(ax)
        ax.grid(alpha=0.3)
    return Plot(
        "caption_recon_pre",
        fig,
        pd.DataFrame(rows),
        "Does a better reconstruction of E_pre keep the caption?",
        "One point per captioned image: the token cosine between reconstructed and true E_pre "
        "(x) against the BERTScore between the caption from the reconstruction and the caption "
        "from E_post (y). Spearman's rank correlation with a 95% bootstrap CI over images; "
        "held-out images are those the reconstructor never trained on.",
    )


# ---------------------------------------------------------------------- perturbations


def perturb_plot(results: Path, mode: str, models: list[str] | None = None) -> Plot:
    """Captions from perturbed E_post against the level: BERTScore to the unperturbed caption,
    caption NLL given the clean image (where scored), and the share of captions that changed."""
    summary = tables.perturb_summary(results)
    summary = summary[summary["mode"] == mode]
    if summary.empty:
        found = sorted(tables.perturb_summary(results)["mode"].unique())
        raise tables.MissingResults(f"no '{mode}' perturbation in {results} (found {found})")
    models = models or sorted(summary["model"].unique())
    panels = [("bertscore_vs_original", "BERTScore F1 vs unperturbed caption", "BERTScore")]
    if (summary["score"] == "mini_nll_caption").any():
        panels.append(("mini_nll_caption", "caption NLL under its own model, clean image", "NLL"))
    panels.append(("caption_changed", "share of captions that changed", "changed captions"))
    fig = _new_figure(1, len(panels), width=5.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    rows = []
    fig.suptitle(f"Captions from E_post perturbed by '{mode}' (mean and 95% CI over images)")
    for ax, (score, ylabel, title) in zip(axes, panels, strict=True):
        for i, model in enumerate(models):
            g = summary[(summary["model"] == model) & (summary["score"] == score)]
            g = g.sort_values("level")
            if g.empty:
                continue
            colour = COLOURS[i % len(COLOURS)]
            _errorbar(ax, g["level"], g["mean"], g["ci_low"], g["ci_high"], model, color=colour)
            for r in g.itertuples():
                rows.append(
                    {
                        "model": model,
                        "score": score,
                        "level": r.level,
                        "value": r.mean,
                        "ci_low": r.ci_low,
                        "ci_high": r.ci_high,
                        "n": r.n,
                    }
                )
            # Reference levels measured on the same images: no perturbation, and chance.
            for suffix, name in PERTURB_REFERENCES.get(score, []):
                h = summary[(summary["model"] == model) & (summary["score"] == score + suffix)]
                if h.empty:
                    continue
                # Every level scores the same images, so these are equal across levels.
                value = float(h["mean"].mean())
                style = dict(color=colour, linestyle=":")  # the unperturbed value
                if "chance" in name:  # several models: each chance line in its model's colour
                    style = CHANCE_STYLE | (dict(color=colour) if len(models) > 1 else {})
                ax.axhline(value, label=f"{model}: {name}" if len(models) > 1 else name, **style)
                rows.append(
                    {
                        "model": model,
                        "score": score + suffix,
                        "level": None,
                        "value": value,
                        "ci_low": None,
                        "ci_high": None,
                        "n": int(h["n"].max()),
                    }
                )
        if score == "bertscore_vs_original":
            ax.axhline(1.0, color="0.6", linewidth=0.8, label="identical caption (1.0)")
        ax.set(xlabel=LEVEL_AXIS.get(mode, "level"), ylabel=ylabel, title=title)
        if score == "caption_changed":
            ax.set_ylim(0, 1.05)
        _legend_below(ax, ncol=1)
        ax.grid(alpha=0.3)
    return Plot(
        f"perturb_{mode}",
        fig,
        pd.DataFrame(rows),
        f"Captions from perturbed E_post: {mode}",
        f"E_post perturbed by '{mode}' at each level (seeded by image key), captions generated "
        "greedily. Points are means over images with 95% bootstrap CIs; dashed lines are chance "
        "levels measured on mismatched images, dotted lines the unperturbed value on the same "
        "images.",
    )


def save_plot(plot: Plot, figures: Path, out: Path, dpi: int = 130) -> tuple[Path, Path]:
    """<figures>/<name>.png and <out>/plots/<name>.csv, both written atomically."""
    png = atomic_write(
        figure_png(figures, plot.name),
        lambda tmp: plot.figure.savefig(tmp, dpi=dpi, format="png"),
    )
    csv = atomic_write(
        figure_values(out, plot.name), lambda tmp: plot.data.to_csv(tmp, index=False)
    )
    return png, csv


def all_plots(results: Path, models: list[str] | None = None) -> list[tuple[str, object]]:
    """(name, maker) for every figure of the study; a maker raises MissingResults when the
    tables it needs are not there."""
    makers: list[tuple[str, object]] = [
        ("knn", lambda: knn_plot(results, models)),
        ("erank_vs_ref", lambda: erank_vs_ref_plot(results, models)),
        ("caption_recon", lambda: caption_recon_plot(results, models)),
        ("caption_recon_pre", lambda: caption_recon_pre_plot(results, models)),
    ]
    for mode in tables.perturb_modes(results):
        makers.append((f"perturb_{mode}", lambda mode=mode: perturb_plot(results, mode, models)))
    makers += importlib.import_module("src.reporting.align_maps_figures").plots(results)
    makers += importlib.import_module("src.reporting.kernel_figures").kernel_plots(results)
    makers += importlib.import_module("src.reporting.sae_figures").makers(results, models)
    makers += importlib.import_module("src.reporting.align_suite_figures").align_plots(results)
    from src.reporting.align_figures import align_plots  # (it imports this module)

    makers += align_plots(results)
    return makers
