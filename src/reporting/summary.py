"""The study's headline numbers in one tidy table, gathered from every stage's result tables.

A row: section, model, measure, variant (everything that names the number: pair, k, estimator,
level, ...), value, its 95% CI where there is one, the reference a reader compares it with
(chance level, permutation null, baseline) and n.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from src.data.paths import recon_results_dir, recon_table, summary_table
from src.reporting import tables
from src.reporting.figures import space_label

COLUMNS = [
    "section",
    "model",
    "measure",
    "variant",
    "value",
    "ci_low",
    "ci_high",
    "reference",
    "reference_kind",
    "n",
]


def _pair(a: str, b: str) -> str:
    return f"{space_label(a)} → {space_label(b)}"


def geometry_rows(results: Path, model: str) -> list[dict]:
    rows = []
    knn = tables.knn_table(results, model)
    for r in knn[knn["scope"] == "global"].itertuples():
        rows.append(
            {
                "section": "geometry",
                "model": model,
                "measure": "knn_overlap",
                "variant": f"{_pair(r.from_space, r.to_space)}, k={r.k}, {r.metric}, {r.pool}",
                "value": r.overlap_mean,
                "ci_low": r.overlap_ci_low,
                "ci_high": r.overlap_ci_high,
                "reference": r.chance,
                "reference_kind": "chance k/(N-1)",
                "n": r.n,
            }
        )
    for r in tables.knn_table(results, model, "cka").itertuples():
        rows.append(
            {
                "section": "geometry",
                "model": model,
                "measure": "cka",
                "variant": f"{_pair(r.from_space, r.to_space)}, {r.estimator}",
                "value": r.cka,
                "reference": r.null_q95,
                "reference_kind": "permutation null 95th pct",
                "n": r.n,
            }
        )
    for r in tables.knn_table(results, model, "distance_corr").itertuples():
        rows.append(
            {
                "section": "geometry",
                "model": model,
                "measure": "distance_corr_spearman",
                "variant": f"{_pair(r.from_space, r.to_space)}, {r.metric}",
                "value": r.spearman,
                "reference": 0.0,
                "reference_kind": "no relation",
                "n": r.n_pairs,
            }
        )
    sp = tables.knn_table(results, model, "spectra")
    keep = sp["measure"].isin(["erank_energy", "erank_rv", "erank_energy_norm", "erank_rv_norm"])
    for r in sp[keep].itertuples():
        rows.append(
            {
                "section": "spectra",
                "model": model,
                "measure": r.measure,
                "variant": f"{space_label(r.space)}, {r.level}, {r.variant}",
                "value": r.value,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "n": r.n,
            }
        )
    return rows


def recon_rows(results: Path, model: str) -> list[dict]:
    path = recon_table(recon_results_dir(results), model, ".json")
    if not path.exists():
        raise tables.MissingResults(f"{path} not found: run src.eval.eval_recon first")
    summary = json.loads(path.read_text(encoding="utf-8"))
    methods = summary["methods"]
    rows = []
    for method, metrics in methods.items():
        for metric, s in metrics.items():
            base = methods.get("train_mean", {}).get(metric, {}).get("mean")
            rows.append(
                {
                    "section": "reconstruction",
                    "model": model,
                    "measure": metric,
                    "variant": f"{method}, held-out images",
                    "value": s["mean"],
                    "ci_low": s["ci_low"],
                    "ci_high": s["ci_high"],
                    "reference": base if method != "train_mean" else None,
                    "reference_kind": "training-mean baseline" if method != "train_mean" else None,
                    "n": s["n"],
                }
            )
    return rows


def caption_rows(results: Path, model: str) -> list[dict]:
    summary = tables.caption_summary(results, model).set_index("score")
    rows = []
    for score, r in summary.iterrows():
        if str(score).endswith("_mismatched"):
            continue
        chance = summary["mean"].get(f"{score}_mismatched")
        rows.append(
            {
                "section": "captions",
                "model": model,
                "measure": score,
                "variant": "post vs reconstruction captions",
                "value": r["mean"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "reference": chance,
                "reference_kind": "mismatched image" if chance is not None else None,
                "n": r["n"],
            }
        )
    per_image = tables.caption_rows(results, model)
    if {"caption_post", "caption_recon"} <= set(per_image.columns):
        same = per_image["caption_post"].fillna("") == per_image["caption_recon"].fillna("")
        rows.append(
            {
                "section": "captions",
                "model": model,
                "measure": "identical_captions",
                "variant": "share of images whose two captions are equal",
                "value": float(same.mean()),
                "n": len(per_image),
            }
        )
    return rows


# Perturbation scores in the summary, each with the score that is its chance level: the same
# measure on mismatched images (for the NLL: another image's clean caption given this image).
PERTURB_CHANCE = {
    "bertscore_vs_original": "bertscore_vs_original_mismatched",
    "mini_nll_caption": "mini_nll_caption_original_mismatched",
    "bertscore_caption_ref": "bertscore_caption_ref_mismatched",
    "clipscore_caption": None,
    "caption_changed": None,
}


def perturb_rows(results: Path) -> list[dict]:
    summary = tables.perturb_summary(results)
    rows = []
    for r in summary[summary["score"].isin(PERTURB_CHANCE)].itertuples():
        same = (
            (summary["model"] == r.model)
            & (summary["mode"] == r.mode)
            & (summary["level"] == r.level)
        )
        ref = summary[same & (summary["score"] == PERTURB_CHANCE[r.score])]
        rows.append(
            {
                "section": "perturbation",
                "model": r.model,
                "measure": r.score,
                "variant": f"{r.mode}, level {r.level:g}",
                "value": r.mean,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "reference": float(ref["mean"].iloc[0]) if len(ref) else None,
                "reference_kind": "mismatched image" if len(ref) else None,
                "n": r.n,
            }
        )
    # The unperturbed caption's NLL on the same images: what level 'no damage' would give.
    clean = summary[summary["score"] == "mini_nll_caption_original"]
    for (model, mode), g in clean.groupby(["model", "mode"]):
        r = g.iloc[0]  # every level scores the same images and captions
        rows.append(
            {
                "section": "perturbation",
                "model": model,
                "measure": "mini_nll_caption",
                "variant": f"{mode}, unperturbed captions (same images)",
                "value": r["mean"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "n": r["n"],
            }
        )
    return rows


def compute_summary(results: Path) -> tuple[pd.DataFrame, list[str]]:
    """Every section whose tables exist; returns the table and notes on what was missing."""
    rows: list[dict] = []
    notes: list[str] = []
    parts = [
        (f"geometry {m}", lambda m=m: geometry_rows(results, m)) for m in tables.knn_models(results)
    ]
    parts += [
        (f"reconstruction {m}", lambda m=m: recon_rows(results, m))
        for m in tables.recon_models(results)
    ]
    parts += [
        (f"captions {m}", lambda m=m: caption_rows(results, m))
        for m in tables.caption_models(results)
    ]
    parts.append(("perturbation", lambda: perturb_rows(results)))
    for name, part in parts:
        try:
            rows += part()
        except tables.MissingResults as e:
            notes.append(f"{name}: {e}")
    if not rows:
        raise tables.MissingResults(f"no result tables under {results}")
    return pd.DataFrame(rows, columns=COLUMNS), notes


def write_summary(results: Path, out: Path) -> tuple[pd.DataFrame, list[str], Path]:
    """compute_summary, written to <out>/summary.csv and summary.json (with what was missing);
    returns the table, the notes and the CSV's path."""
    from src.data.io import atomic_write, write_json_atomic

    table, notes = compute_summary(results)
    csv, js = summary_table(out), summary_table(out, ".json")
    atomic_write(csv, lambda tmp: table.to_csv(tmp, index=False))
    write_json_atomic(
        js, {"results": str(results), "missing": notes, "rows": table.to_dict("records")}
    )
    return table, notes, csv
