"""The main job end to end on a small sample: every stage's output lands, and a rerun skips
everything (no file rewritten, the model not even loaded)."""

from __future__ import annotations

import json

import pandas as pd

from src import pipeline
from src.extract import extract_vectors


def test_pipeline_runs_and_reruns_without_work(tmp_path, random_connector_dir, monkeypatch, capsys):
    argv = [
        "--data",
        str(tmp_path / "data"),
        "--results",
        str(tmp_path / "results"),
        "--figures",
        str(tmp_path / "figures"),
        "--n_scenes",
        "24",
        "--shards",
        "2",
        "--recon_epochs",
        "2",
        "--num_workers",
        "0",
        "--batch_size",
        "8",
        "--caption_shard",
        "synth_01",
        "--caption_n",
        "3",
        "--perturb_n",
        "2",
        "--model_id",
        f"mini={random_connector_dir}",
        "--no_progress",
    ]
    assert pipeline.main(argv) == 0
    data = tmp_path / "data"
    for shard in ("photos", "synth_00", "synth_01"):
        assert (data / "vector" / "mini" / shard / "manifest.json").exists()
        assert (data / "clip_ref" / "minilm" / shard / "manifest.json").exists()
        assert (data / "vector_recon" / "mini" / shard / "manifest.json").exists()
    summary = json.loads((tmp_path / "results" / "recon" / "recon_mini.json").read_text())
    assert set(summary["methods"]) == {"reconstructor", "train_mean", "ridge"}
    assert (tmp_path / "results" / "knn" / "mini" / "knn.csv").exists()
    assert len(pd.read_csv(tmp_path / "results" / "captions" / "mini" / "synth_01.csv")) == 3
    perturb = pd.read_csv(tmp_path / "results" / "perturb" / "summary.csv")
    assert set(perturb["mode"]) == {"mask", "lowrank"}
    out = capsys.readouterr().out
    assert "E_pre recovered from E_post" in out and "vectors/mini:" in out
    # The last step draws every figure from this run's tables and writes the report.
    page = (tmp_path / "figures" / "report.html").read_text()
    for name in ("knn", "erank_vs_ref", "caption_recon", "caption_recon_pre", "perturb_mask",
                 "perturb_lowrank"):  # fmt: skip
        assert (tmp_path / "figures" / f"{name}.png").exists() and f'src="{name}.png"' in page
    assert (tmp_path / "results" / "summary.csv").exists()

    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    def no_load(*a, **k):
        raise AssertionError("a finished study loaded a model")

    monkeypatch.setattr(extract_vectors, "load_adapter", no_load)
    assert pipeline.main(argv) == 0
    assert files == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
