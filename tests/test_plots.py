"""Every figure renders from the committed sample/results, and what it draws is what the
tables hold: values are read back from the matplotlib artists and compared with the tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image
from scipy import stats

from src.plot import (
    compute_summary,
    plot_caption_recon,
    plot_caption_recon_pre,
    plot_erank_vs_clip,
    plot_knn,
    plot_perturb,
    report,
)
from src.reporting import figures, tables

SAMPLE = Path(__file__).resolve().parents[1] / "sample" / "results"
MODEL = "mini"


def errorbars(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (x, y) of every errorbar series on ax."""
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer) and not c.get_label().startswith("_"):
            line = c.lines[0]
            out[c.get_label()] = (np.asarray(line.get_xdata(), float),
                                  np.asarray(line.get_ydata(), float))  # fmt: skip
    return out


def bars(ax, horizontal: bool = False) -> dict[str, np.ndarray]:
    """label -> bar lengths of every bar series on ax."""
    return {
        c.get_label(): np.array([p.get_width() if horizontal else p.get_height()
                                 for p in c.patches])
        for c in ax.containers
        if isinstance(c, BarContainer)
    }  # fmt: skip


def line(ax, prefix: str):
    hits = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    assert hits, f"no line labelled {prefix!r}: {[ln.get_label() for ln in ax.get_lines()]}"
    return hits[0]


@pytest.mark.parametrize(
    ("stage", "extra", "png"),
    [
        (plot_knn, [], "knn"),
        (plot_erank_vs_clip, ["--k", "50"], "erank_vs_ref"),
        (plot_caption_recon, [], "caption_recon"),
        (plot_caption_recon_pre, [], "caption_recon_pre"),
        (plot_perturb, ["--perturb", "mask"], "perturb_mask"),
        (plot_perturb, ["--perturb", "lowrank"], "perturb_lowrank"),
    ],
)
def test_each_plot_stage_renders_from_the_sample(tmp_path, stage, extra, png):
    argv = ["--results", str(SAMPLE), "--figures", str(tmp_path / "f"), "--out", str(tmp_path)]
    assert stage.main(argv + extra) == 0
    with Image.open(tmp_path / "f" / f"{png}.png") as im:
        assert im.format == "PNG" and im.width > 500 and im.height > 300
        assert len(set(im.convert("L").getdata())) > 20  # something was drawn
    data = pd.read_csv(tmp_path / "plots" / f"{png}.csv")
    assert len(data) > 0


def test_knn_figure_draws_the_table(tmp_path):
    plot = figures.knn_plot(SAMPLE)
    knn = tables.knn_table(SAMPLE, MODEL)
    knn = knn[knn.scope == "global"]
    overlap_ax, cka_ax = plot.figure.axes[:2]
    drawn = errorbars(overlap_ax)
    pairs = set(zip(knn.from_space, knn.to_space, strict=True))
    assert len(drawn) == len(pairs) >= 5  # pre->post and each reference -> pre, post
    for a, b in pairs:
        g = knn[(knn.from_space == a) & (knn.to_space == b)].sort_values("k")
        x, y = drawn[f"{figures.space_label(a)} → {figures.space_label(b)}"]
        np.testing.assert_allclose(x, g.k)
        np.testing.assert_allclose(y, g.overlap_mean)
    pp = knn[(knn.from_space == "pre") & (knn.to_space == "post")].sort_values("k")
    np.testing.assert_allclose(line(overlap_ax, "chance").get_ydata(), pp.chance)
    cka = tables.knn_table(SAMPLE, MODEL, "cka")
    drawn_bars = bars(cka_ax, horizontal=True)
    for est, g in cka.groupby("estimator"):
        np.testing.assert_allclose(drawn_bars[figures.estimator_label(est)], g.cka)
    assert "cos" in overlap_ax.get_title() and "null" in " ".join(
        t.get_text() for t in cka_ax.get_legend().get_texts()
    )


def test_erank_figure_draws_spectra_against_reference_overlap():
    plot = figures.erank_vs_ref_plot(SAMPLE, k=10)
    knn = tables.knn_table(SAMPLE, MODEL)
    sp = tables.knn_table(SAMPLE, MODEL, "spectra")
    refs = sorted(s for s in knn.from_space.unique() if s.startswith("ref:"))
    assert len(plot.figure.axes) == len(refs)
    for ax, ref in zip(plot.figure.axes, refs, strict=True):
        drawn = errorbars(ax)
        for space in ("pre", "post"):
            x, y = drawn[f"{MODEL} {figures.space_label(space)}"]
            e = sp[(sp.space == space) & (sp.level == "image") & (sp.variant == "raw")
                   & (sp.measure == "erank_energy")]  # fmt: skip
            o = knn[(knn.scope == "global") & (knn.from_space == ref) & (knn.to_space == space)
                    & (knn.k == 10)]  # fmt: skip
            np.testing.assert_allclose(x, e.value)
            np.testing.assert_allclose(y, o.overlap_mean)
        assert line(ax, "chance").get_ydata()[0] == pytest.approx(o.chance.iloc[0])
        assert "exp H(s²/Σs²)" in ax.get_xlabel()


def test_caption_figure_draws_summary_means_and_chance():
    plot = figures.caption_recon_plot(SAMPLE)
    summary = tables.caption_summary(SAMPLE, MODEL).set_index("score")["mean"]
    bert_ax, hist_ax, *rest = plot.figure.axes
    drawn = bars(bert_ax)
    assert drawn["caption from E_post"][0] == pytest.approx(summary["bertscore_caption_post_ref"])
    assert drawn["caption from reconstruction"][0] == pytest.approx(
        summary["bertscore_caption_recon_ref"]
    )
    chance = line(bert_ax, "chance").get_ydata()[0]
    assert chance == pytest.approx(summary["bertscore_caption_post_ref_mismatched"])
    assert chance < summary["bertscore_caption_post_ref"]  # captions beat chance
    models = tables.caption_models(SAMPLE)
    per_model = {m: tables.caption_rows(SAMPLE, m) for m in models}
    counts = sum(p.get_height() for p in hist_ax.patches)  # one histogram per model
    assert counts == sum(r.bertscore_recon_vs_post.notna().sum() for r in per_model.values())
    legend = [t.get_text() for t in hist_ax.get_legend().get_texts()]
    for model, rows in per_model.items():
        same = (rows.caption_post == rows.caption_recon).mean()
        assert f"{model}: {same:.0%} identical (n={len(rows)})" in legend
    if "mini_nll_caption_post" in summary:
        nll = bars(rest[0])
        assert nll["caption from E_post"][0] == pytest.approx(summary["mini_nll_caption_post"])


def test_caption_recon_pre_scatter_is_the_join_of_the_two_tables():
    plot = figures.caption_recon_pre_plot(SAMPLE)
    ax = plot.figure.axes[0]
    rec = tables.recon_rows(SAMPLE, MODEL)
    rec = rec[rec.method == "reconstructor"]
    d = tables.caption_rows(SAMPLE, MODEL).merge(rec, on=["shard", "key"])
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    got = sorted(map(tuple, points.round(10)))
    want = sorted(zip(d.cosine.round(10), d.bertscore_recon_vs_post.round(10), strict=True))
    assert got == want and len(got) == len(d) > 50
    rho = stats.spearmanr(d.cosine, d.bertscore_recon_vs_post).statistic
    row = plot.data[plot.data.key == "spearman_rho"].iloc[0]
    assert row.recon_cosine == pytest.approx(rho)
    assert f"ρ = {rho:.2f}" in ax.get_title()
    assert row.ci_low <= rho <= row.ci_high


@pytest.mark.parametrize("mode", ["mask", "lowrank"])
def test_perturb_figure_draws_the_summary(mode):
    plot = figures.perturb_plot(SAMPLE, mode)
    s = tables.perturb_summary(SAMPLE)
    s = s[(s["mode"] == mode) & (s.model == MODEL)]
    scores = ["bertscore_vs_original", "mini_nll_caption", "caption_changed"]
    assert len(plot.figure.axes) == 3
    for ax, score in zip(plot.figure.axes, scores, strict=True):
        g = s[s.score == score].sort_values("level")
        x, y = errorbars(ax)[MODEL]
        np.testing.assert_allclose(x, g.level)
        np.testing.assert_allclose(y, g["mean"])
    # With several models each reference line is named after its model.
    several = tables.perturb_summary(SAMPLE).model.nunique() > 1
    prefix = f"{MODEL}: " if several else ""
    chance = s[s.score == "bertscore_vs_original_mismatched"]["mean"].mean()
    assert line(plot.figure.axes[0], prefix + "chance").get_ydata()[0] == pytest.approx(chance)
    clean = s[s.score == "mini_nll_caption_original"]["mean"].mean()
    drawn = line(plot.figure.axes[1], prefix + "unperturbed").get_ydata()[0]
    assert drawn == pytest.approx(clean)
    assert figures.LEVEL_AXIS[mode] == plot.figure.axes[0].get_xlabel()


def test_summary_holds_the_headline_numbers(tmp_path):
    assert compute_summary.main(["--results", str(SAMPLE), "--out", str(tmp_path)]) == 0
    s = pd.read_csv(tmp_path / "summary.csv")
    knn = tables.knn_table(SAMPLE, MODEL)
    r = knn[(knn.scope == "global") & (knn.from_space == "pre") & (knn.to_space == "post")
            & (knn.k == 10)].iloc[0]  # fmt: skip
    hit = s[(s.measure == "knn_overlap") & s.variant.str.startswith("E_pre → E_post, k=10,")]
    assert hit.value.iloc[0] == pytest.approx(r.overlap_mean)
    assert hit.reference.iloc[0] == pytest.approx(r.chance)
    recon = json.loads((SAMPLE / "recon" / f"recon_{MODEL}.json").read_text())["methods"]
    hit = s[(s.section == "reconstruction") & (s.measure == "cosine")
            & (s.variant == "reconstructor, held-out images")]  # fmt: skip
    assert hit.value.iloc[0] == pytest.approx(recon["reconstructor"]["cosine"]["mean"])
    assert set(s.section) == {"geometry", "spectra", "reconstruction", "captions", "perturbation"}
    assert not s.value.isna().any()


def test_report_links_every_figure_and_skips_unchanged_inputs(tmp_path, capsys):
    results = tmp_path / "results"
    shutil.copytree(SAMPLE, results)
    argv = ["--results", str(results), "--figures", str(tmp_path / "fig"), "--out",
            str(tmp_path / "out"), "--skip_existing"]  # fmt: skip
    assert report.main(argv) == 0
    page = (tmp_path / "fig" / "report.html").read_text()
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    from src.data.io import read_manifest

    made, committed = read_manifest(tmp_path / "fig"), read_manifest(SAMPLE.parent / "report")
    assert pngs == sorted(made["figures"]) == sorted(committed["figures"])
    skipped = [[note.split(":")[0] for note in m["missing"]] for m in (made, committed)]
    assert skipped[0] == skipped[1]
    assert {"knn.png", "erank_vs_ref.png", "caption_recon.png", "caption_recon_pre.png",
            "perturb_mask.png", "perturb_lowrank.png", "align_cka.png", "kernel_align.png",
            "sae_reconstruction.png", "contrastive_retrieval.png"} <= set(pngs)  # fmt: skip
    for name in pngs:
        assert f'src="{name}"' in page
        csv = tmp_path / "out" / "plots" / name.replace(".png", ".csv")
        assert csv.exists() and f'href="../out/plots/{csv.name}"' in page
    assert "Summary tables" in page and "knn_overlap" in page
    assert 'href="../out/summary.csv"' in page and (tmp_path / "out" / "summary.csv").exists()
    stamp = (tmp_path / "fig" / "report.html").stat().st_mtime_ns
    capsys.readouterr()
    assert report.main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    assert (tmp_path / "fig" / "report.html").stat().st_mtime_ns == stamp
    # A changed input table makes the report stale.
    knn_csv = results / "knn" / MODEL / "knn.csv"
    knn = pd.read_csv(knn_csv)
    knn.loc[0, ["overlap_ci_low", "overlap_mean", "overlap_ci_high"]] = [0.12, 0.123456, 0.13]
    knn.to_csv(knn_csv, index=False)
    assert report.main(argv) == 0
    assert "0.1235" in (tmp_path / "fig" / "report.html").read_text()


def test_missing_tables_are_named_with_the_stage_that_makes_them(tmp_path, capsys):
    argv = ["--results", str(tmp_path), "--figures", str(tmp_path / "f"), "--out", str(tmp_path)]
    for stage, extra, maker in [
        (plot_knn, [], "src.extract.extract_knn"),
        (plot_caption_recon, [], "src.eval.score_captions"),
        (plot_perturb, ["--perturb", "mask"], "src.eval.score_perturb"),
    ]:
        assert stage.main(argv + extra) == 2
        assert maker in capsys.readouterr().err
    assert report.main(argv) == 2
    assert "no result tables" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_committed_report_was_made_from_the_committed_tables():
    from src.data.io import fingerprint, read_manifest

    made = read_manifest(SAMPLE.parent / "report")
    assert made is not None, "sample/report has no manifest: regenerate it (sample/README.md)"
    inputs = tables.input_tables(SAMPLE)
    assert made["inputs_sha256"] == fingerprint(inputs, SAMPLE)
    for name in made["figures"]:
        assert (SAMPLE.parent / "report" / name).exists()


def test_export_sample_copies_what_the_figures_read(tmp_path):
    from src.plot import export_sample

    assert export_sample.main(["--results", str(SAMPLE), "--out", str(tmp_path / "s")]) == 0
    copied = sorted(p.relative_to(tmp_path / "s") for p in (tmp_path / "s").rglob("*.*"))
    original = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*.*"))
    assert copied == original  # tables and their manifests, nothing else
    assert (tmp_path / "s" / "knn" / MODEL / "manifest.json").exists()
    assert export_sample.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path)]) == 2


def test_several_models_share_each_figure(tmp_path):
    """A second model ('other': the sample's tables with overlaps and perturbation scores
    scaled) appears beside the first in every figure, each drawn from its own tables."""
    results = tmp_path / "results"
    shutil.copytree(SAMPLE, results)
    shutil.copytree(results / "knn" / MODEL, results / "knn" / "other")
    shutil.copytree(results / "captions" / MODEL, results / "captions" / "other")
    for suffix in (".csv", ".json"):
        shutil.copy(results / "recon" / f"recon_{MODEL}{suffix}",
                    results / "recon" / f"recon_other{suffix}")  # fmt: skip
    knn = pd.read_csv(results / "knn" / "other" / "knn.csv")
    cols = ["overlap_mean", "overlap_ci_low", "overlap_ci_high"]
    knn[cols] *= 0.5
    knn.to_csv(results / "knn" / "other" / "knn.csv", index=False)
    summary = pd.read_csv(results / "perturb" / "summary.csv")
    mine = summary[summary.model == MODEL]
    other = mine.assign(model="other", mean=mine["mean"] / 2,
                        ci_low=mine.ci_low / 2, ci_high=mine.ci_high / 2)  # fmt: skip
    pd.concat([summary, other]).to_csv(results / "perturb" / "summary.csv", index=False)

    row = tables.knn_models(results).index("other")
    ax = figures.knn_plot(results).figure.axes[2 * row]  # one row of two panels per model
    _, y = errorbars(ax)["E_pre → E_post"]
    pp = knn[(knn.from_space == "pre") & (knn.to_space == "post") & (knn.scope == "global")]
    np.testing.assert_allclose(y, pp.sort_values("k").overlap_mean)
    for ax in figures.erank_vs_ref_plot(results).figure.axes:
        assert {"mini E_pre", "other E_pre", "mini E_post", "other E_post"} <= set(errorbars(ax))
    n_models = len(tables.caption_models(results))
    assert "other" in tables.caption_models(results) and n_models >= 2
    bert = bars(figures.caption_recon_plot(results).figure.axes[0])
    assert len(bert["caption from E_post"]) == n_models
    assert len(figures.caption_recon_pre_plot(results).figure.axes) == n_models
    plot = figures.perturb_plot(results, "mask")
    drawn = errorbars(plot.figure.axes[0])
    np.testing.assert_allclose(drawn["other"][1], drawn[MODEL][1] / 2)
    chance = [ln for ln in plot.figure.axes[0].get_lines() if "chance" in ln.get_label()]
    assert len(chance) == n_models and len({ln.get_color() for ln in chance}) == n_models
    assert report.main(["--results", str(results), "--figures", str(tmp_path / "f"),
                        "--out", str(tmp_path / "o")]) == 0  # fmt: skip
    s = pd.read_csv(tmp_path / "o" / "summary.csv")
    assert set(s.model) == set(tables.caption_models(SAMPLE)) | {"other"}
