"""Figures of the alignment suite (seed A): the CKA matrix with CIs and nulls, CORAL ours vs the
seed's, EAS / ELAS ours vs the seed's, held-out vs in-sample retrieval with chance, and the
CKA-retrieval correlation. Each draws one of results/align's tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from src.reporting import tables
from src.reporting.figures import Plot, _errorbar, _legend_below, _new_figure

ESTIMATORS = {
    "cka_linear": "linear CKA, biased (the seed's)",
    "cka_linear_unbiased": "linear CKA, unbiased",
    "cka_rbf": "RBF CKA, biased",
}


def _text_label(df: pd.DataFrame) -> pd.Series:
    return df["llm"] + "@" + df["layer"].astype(str).str.replace("mean_L", "L", regex=False)


def cka_matrix_plot(results: Path) -> Plot:
    """Encoders x text spaces, all images: each estimator's CKA with its 95% bootstrap CI, and
    the 95th percentile of its permutation null (what chance reaches at this n)."""
    df = tables.align_table(results, "compare", "cka")
    df = df[df["data_type"] == "all"].copy()
    df["text"] = _text_label(df)
    texts = list(dict.fromkeys(df["text"]))
    measures = [m for m in ESTIMATORS if m in set(df["measure"])]
    fig = _new_figure(1, len(measures), width=5.0, height=4.4)
    axes = fig.subplots(1, len(measures), squeeze=False)[0]
    encoders = list(dict.fromkeys(df["encoder"]))
    for ax, m in zip(axes, measures, strict=True):
        for j, enc in enumerate(encoders):
            g = df[(df.measure == m) & (df.encoder == enc)].set_index("text").reindex(texts)
            x = np.arange(len(texts)) + (j - (len(encoders) - 1) / 2) * 0.12
            c = _errorbar(ax, x, g.value, g.ci_low, g.ci_high, label=enc, linestyle="none")
            ax.scatter(
                x,
                g.null_q95,
                marker="_",
                s=120,
                color=c.lines[0].get_color(),
                label="null 95% (shuffled pairs; encoder's colour)" if j == 0 else None,
            )
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.set_xticks(range(len(texts)), texts, rotation=30, ha="right", fontsize=8)
        ax.set(title=ESTIMATORS[m], ylabel="CKA (all images)", xlabel="text space (LLM@layer)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(encoders) + 1, fontsize=8,
               frameon=False)  # fmt: skip
    n = int(df["n"].max()) if len(df) else 0
    return Plot(
        "align_cka",
        fig,
        df,
        "Vision x text CKA (seed A's compare / multi-llm)",
        f"CKA between each vision space and each LLM layer's caption embeddings on the "
        f"same {n} images: points with 95% bootstrap CIs, bars the 95th percentile of the "
        "shuffled-pairing null. The biased estimator sits far above 0 for every pair at "
        "this n (its null is high too); the unbiased one is ~0 under the null.",
    )


def coral_plot(results: Path) -> Plot:
    """Our CORAL distance against its null, and the seed's similarity for the same pairs."""
    df = tables.align_table(results, "coral", "coral")
    df["pair"] = df["encoder"] + " x " + _text_label(df)
    pairs = list(dict.fromkeys(df["pair"]))
    ours = df[df.method == "coral"].set_index("pair").reindex(pairs)
    seed = df[df.method == "coral_seed"].set_index("pair").reindex(pairs)
    fig = _new_figure(1, 2, width=6.0, height=0.28 * len(pairs) + 2.5)
    a, b = fig.subplots(1, 2)
    y = np.arange(len(pairs))
    a.scatter(ours.distance, y, label="held-out CORAL distance", zorder=3)
    a.scatter(ours.null_mean, y, marker="|", s=150, color="0.4", label="null mean (shuffled pairs)")
    a.scatter(ours.null_q05, y, marker="|", s=150, color="0.7", label="null 5%")
    a.set_yticks(y, pairs, fontsize=7)
    a.set(xlabel="||C_v - C_t||² / 4d² in one fitted basis (lower = closer)", title="ours")
    b.scatter(seed.similarity, y, color="C3", label="seed: 1/(1+d), unit rows, separate PCAs")
    b.scatter(ours.similarity, y, color="C0", label="ours: 1 - d / null mean, clipped to [0, 1]")
    b.set_yticks(y, [""] * len(pairs))
    b.set(xlabel="CORAL similarity", xlim=(-0.05, 1.05), title="similarity: seed vs ours")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=1)
    return Plot(
        "align_coral",
        fig,
        df,
        "CORAL: ours vs the seed's",
        "Left: our CORAL distance on held-out images (both sides in the text side's "
        "principal basis, vision mapped there by ridge regression fitted on training "
        "images, channels standardised) against the same distance with the map fitted "
        "on shuffled pairs. Right: the seed's similarity is ~1 for every pair.",
    )


def scores_plot(results: Path) -> Plot:
    """EAS and ELAS per pair: the seed's formulas and ours (held-out, 95% bootstrap CIs)."""
    df = tables.align_table(results, "scores", "scores")
    df["pair"] = df["encoder"] + " x " + _text_label(df)
    pairs = list(dict.fromkeys(df["pair"]))
    fig = _new_figure(1, 2, width=6.0, height=0.28 * len(pairs) + 2.5)
    axes = fig.subplots(1, 2)
    y = np.arange(len(pairs))
    for ax, score in zip(axes, ("eas", "elas"), strict=True):
        ours = df[df.score == score].set_index("pair").reindex(pairs)
        seed = df[df.score == f"{score}_seed"].set_index("pair").reindex(pairs)
        ax.scatter(seed.value, y, color="C3", label=f"{score}_seed (the seed's formula)")
        ax.errorbar(
            ours.value,
            y,
            xerr=np.vstack([ours.value - ours.ci_low, ours.ci_high - ours.value]),
            fmt="o",
            color="C0",
            capsize=3,
            label=f"{score} (ours, held-out, 95% CI)",
        )
        ax.set_yticks(y, pairs if score == "eas" else [""] * len(pairs), fontsize=7)
        ax.set(
            xlim=(-0.05, 1.05), xlabel="score in [0, 1] (0 = chance for ours)", title=score.upper()
        )
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=1)
    return Plot(
        "align_scores",
        fig,
        df,
        "EAS and ELAS: the seed's formulas vs ours",
        "The seed's EAS gets 0.3 from CORAL whatever the pair and its discriminability "
        "looks at the vision side only; its ELAS gets ~0.5 from two MSE terms of unit "
        "vectors. Ours: every component measured on held-out images, 0 at chance.",
    )


def retrieval_plot(results: Path) -> Plot:
    """R@1/5/10 and MRR, held-out vs in-sample, all images, first projector, with chance."""
    df = tables.align_table(results, "e2e", "retrieval")
    proj = df["projector"].iloc[0]
    df = df[(df.data_type == "all") & (df.projector == proj)].copy()
    df["pair"] = df["encoder"] + " x " + _text_label(df)
    metrics = list(dict.fromkeys(df["metric"]))
    fig = _new_figure(1, 2, width=5.6, height=4.2)
    axes = fig.subplots(1, 2)
    rows = []
    for ax, direction in zip(axes, ("image_to_text", "text_to_image"), strict=True):
        for split, style in (("in_sample", "C3"), ("held_out", "C0")):
            g = df[(df.direction == direction) & (df.split == split)]
            m = (
                g.groupby("metric", sort=False)["value"]
                .agg(["mean", "min", "max"])
                .reindex(metrics)
            )
            _errorbar(
                ax,
                np.arange(len(metrics)),
                m["mean"],
                m["min"],
                m["max"],
                color=style,
                label=f"{split} (mean, range over {g.pair.nunique()} pairs)",
            )
            rows += [
                {"direction": direction, "split": split, "metric": k, **v}
                for k, v in m.to_dict("index").items()
            ]
        ch = (
            df[(df.direction == direction) & (df.split == "held_out")]
            .groupby("metric", sort=False)["chance"]
            .mean()
            .reindex(metrics)
        )
        ax.plot(np.arange(len(metrics)), ch, "k--", label="chance (held-out)")
        ax.set_xticks(range(len(metrics)), metrics)
        ax.set(ylim=(0, 1.05), title=direction.replace("_", " "), ylabel="retrieval")
        ax.grid(alpha=0.3)
        _legend_below(ax, ncol=1)
    return Plot(
        "align_retrieval",
        fig,
        pd.DataFrame(rows),
        f"Retrieval through a {proj} projector: held-out vs in-sample",
        "The projector is fitted on the training images; in-sample retrieval (the "
        "seed's protocol) is scored on those same images, held-out on the others. An "
        "image counts as found by a caption if any of its captions ranks within k.",
    )


def cka_retrieval_plot(results: Path) -> Plot:
    """Held-out unbiased CKA against retrieval above chance, every (encoder, LLM, layer, data
    type) point, with the Spearman rho, its bootstrap CI and permutation p-value."""
    try:
        pts = tables.align_table(results, "e2e", "cka_points")
    except pd.errors.EmptyDataError:  # written with no row: a run too small for points
        pts = pd.DataFrame()
    corr = tables.align_table(results, "e2e", "correlation").set_index("cka")
    if pts.empty or "cka_u" not in pts:
        raise tables.MissingResults("align_e2e found no data type with enough held-out images")
    fig = _new_figure(1, 1, width=6.0, height=4.6)
    ax = fig.subplots()
    for t, g in pts.groupby("data_type"):
        ax.scatter(g.cka_u, g.mrr_above_chance, label=t, s=18, alpha=0.8)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.axvline(0, color="0.6", linewidth=0.8)
    if "cka_u" in corr.index:
        r = corr.loc["cka_u"]
        ax.set_title(
            f"Spearman {r.rho:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}], p={r.p_value:.3g}, "
            f"{int(r.n_points)} points",
            fontsize=9,
        )
    ax.set(
        xlabel="unbiased linear CKA (held-out images)",
        ylabel="MRR above chance (mean of both directions)",
    )
    ax.grid(alpha=0.3)
    _legend_below(ax, ncol=3)
    return Plot(
        "align_cka_retrieval",
        fig,
        pts,
        "Does CKA predict retrieval?",
        "One point per encoder x LLM x layer x data type (held-out images of that type, "
        "types with too few held-out images left out). Spearman's rho with a bootstrap CI over "
        "points and a two-sided permutation p-value, instead of a Pearson r over three "
        "encoders.",
    )


def align_plots(results: Path) -> list[tuple[str, object]]:
    """(name, maker) for the suite's figures (each raises MissingResults without its table)."""
    return [
        ("align_cka", lambda: cka_matrix_plot(results)),
        ("align_coral", lambda: coral_plot(results)),
        ("align_scores", lambda: scores_plot(results)),
        ("align_retrieval", lambda: retrieval_plot(results)),
        ("align_cka_retrieval", lambda: cka_retrieval_plot(results)),
    ]
