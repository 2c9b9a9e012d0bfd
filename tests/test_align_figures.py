"""The alignment figures draw exactly the numbers of train_align's and eval_probe's tables."""

from __future__ import annotations

import pandas as pd
import pytest

from src.reporting import tables
from src.reporting.align_figures import align_retrieval_plot, probe_label, probe_plot
from src.reporting.figures import all_plots


def _write(results, name):
    rows = [{"radius": r, "direction": d, "metric": m, "value": v, "ci_low": v - 0.05,
             "ci_high": v + 0.05, "chance": c, "n": 40}
            for r in (8, 16) for d in ("image_to_text", "text_to_image")
            for m, v, c in (("R@1", 0.3 + r / 100, 0.025), ("R@5", 0.6, 0.125),
                            ("MRR", 0.4, 0.1))]  # fmt: skip
    (results / "contrastive" / name).mkdir(parents=True)
    pd.DataFrame(rows).to_csv(results / "contrastive" / name / "retrieval.csv", index=False)
    probe = results / "probe" / name
    probe.mkdir(parents=True)
    acc = [{"model": "dual", "family": f, "protocol": "zero_shot", "metric": m, "value": 0.5,
            "ci_low": 0.4, "ci_high": 0.6, "chance": 0.25, "majority": 0.3, "n": 40}
           for f in ("colour", "shape") for m in ("acc@1", "mean_per_class_recall")]  # fmt: skip
    pd.DataFrame(acc).to_csv(probe / "zero_shot.csv", index=False)
    lin = [{**r, "model": t, "protocol": "linear_probe", "value": 0.9, "ci_low": 0.85,
            "ci_high": 0.95} for r in acc
           for t in ("efficientnet-lite0", "data/align/x")]  # fmt: skip
    pd.DataFrame(lin).to_csv(probe / "linear_probe.csv", index=False)


def test_align_figures_plot_their_tables(tmp_path):
    with pytest.raises(tables.MissingResults):
        align_retrieval_plot(tmp_path)
    _write(tmp_path, "x")
    plot = align_retrieval_plot(tmp_path)
    assert len(plot.data) == 2 * 2 * 2  # radii x directions x R@k (MRR is not drawn)
    r1 = plot.data[(plot.data.radius == 16) & (plot.data.k == 1)]
    assert r1.value.tolist() == pytest.approx([0.46, 0.46]) and (r1.chance == 0.025).all()
    probe = probe_plot(tmp_path)
    assert set(probe.data.protocol) == {"zero-shot", "linear probe"}
    assert len(probe.data) == 2 + 2 * 2  # families x (1 joint model + 2 towers)
    assert (probe.data.chance == 0.25).all() and (probe.data.majority == 0.3).all()
    names = [n for n, _ in all_plots(tmp_path)]
    assert {"contrastive_retrieval", "probe_accuracy"} <= set(names)
    assert tmp_path / "contrastive" / "x" / "retrieval.csv" in tables.input_tables(tmp_path)


def test_probe_plot_labels_each_run_and_what_it_probed(tmp_path):
    """Two eval_probe runs (the original and the kernel-aligned tower, as the main job has):
    every series is named by its run, the run's own dual encoder as its joint space."""
    _write(tmp_path, "x")
    _write(tmp_path, "y")
    plot = probe_plot(tmp_path)
    assert len(plot.data) == 2 * (2 + 2 * 2)  # runs x families x (joint + 2 towers)
    labels = {t.get_text() for ax in plot.figure.axes for t in ax.get_legend().get_texts()}
    assert {"x: efficientnet-lite0", "y: efficientnet-lite0"} <= labels
    assert probe_label("y", "data/align/y") == "y: joint space"
    assert probe_label("y", "sample/kernel_connectors/tower") == "y: tower"
