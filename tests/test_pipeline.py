"""The main job end to end on a small sample: every stage's output lands, a rerun skips
everything (no file rewritten, the model not even loaded), and so does a rerun from a copy of
the checkout and the data folder somewhere else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pandas as pd

from src import pipeline
from src.data.io import REPO_ROOT
from src.extract import extract_vectors


def small_study(root) -> list[str]:
    """The main job's arguments for a small study under `root` (the committed mini model; the
    plan with mini-gemma beside it: tests/test_mini_gemma.py)."""
    return [
        "--models",
        "mini",
        "--data",
        str(root / "data"),
        "--results",
        str(root / "results"),
        "--figures",
        str(root / "figures"),
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
        "--align_n",
        "6",
        "--ref_max_images",
        "craft-vgg16=8",  # as in the main job, a reference on part of each shard
        "--no_progress",
    ]


def test_pipeline_runs_and_reruns_without_work(tmp_path, monkeypatch, capsys):
    study = tmp_path / "study"
    argv = small_study(study)
    assert pipeline.main(argv) == 0
    data = study / "data"
    for shard in ("photos", "synth_00", "synth_01"):
        assert (data / "vector" / "mini" / shard / "manifest.json").exists()
        assert (data / "clip_ref" / "minilm" / shard / "manifest.json").exists()
        assert (data / "vector_recon" / "mini" / shard / "manifest.json").exists()
    summary = json.loads((study / "results" / "recon" / "recon_mini.json").read_text())
    assert set(summary["methods"]) == {"reconstructor", "train_mean", "ridge"}
    assert (study / "results" / "knn" / "mini" / "knn.csv").exists()
    assert len(pd.read_csv(study / "results" / "captions" / "mini" / "synth_01.csv")) == 3
    perturb = pd.read_csv(study / "results" / "perturb" / "summary.csv")
    assert set(perturb["mode"]) == {"mask", "lowrank"}
    out = capsys.readouterr().out
    assert "E_pre recovered from E_post" in out and "vectors/mini:" in out
    # The last step draws every figure from this run's tables and writes the report.
    page = (study / "figures" / "report.html").read_text()
    for name in ("knn", "erank_vs_ref", "caption_recon", "caption_recon_pre", "perturb_mask",
                 "perturb_lowrank"):  # fmt: skip
        assert (study / "figures" / f"{name}.png").exists() and f'src="{name}.png"' in page
    assert (study / "results" / "summary.csv").exists()

    files = {p: p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()}

    def no_load(*a, **k):
        raise AssertionError("a finished study loaded a model")

    monkeypatch.setattr(extract_vectors, "load_adapter", no_load)
    assert pipeline.main(argv) == 0
    assert files == {p: p.stat().st_mtime_ns for p in study.rglob("*") if p.is_file()}

    # The checkout and the study copied elsewhere: every step still finds its work done.
    checkout, moved = tmp_path / "elsewhere" / "checkout", tmp_path / "elsewhere" / "study"
    shutil.copytree(REPO_ROOT / "src", checkout / "src",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(study, moved)
    copied = {p: p.stat().st_mtime_ns for p in moved.rglob("*") if p.is_file()}
    res = subprocess.run([sys.executable, "-m", "src.pipeline", *small_study(moved)],
                         cwd=checkout, capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert copied == {p: p.stat().st_mtime_ns for p in moved.rglob("*") if p.is_file()}
    assert "loaded in" not in res.stdout and "load " not in res.stdout.replace("load 0.0s", "")


def test_sae_layers_per_model():
    import pytest

    from src.errors import UserError

    def layers(argv):
        args = pipeline.get_args_parser().parse_args(argv)
        return {t.split()[-1]: a[a.index("--layers") + 1]
                for t, _, a in pipeline.sae_steps(args) if t.startswith("SAEs")}  # fmt: skip

    assert layers([]) == {"mini": "3,11,19,27", "mini-gemma": "6,13"}  # --models' two VLMs
    assert layers(["--models", "mini"]) == {"mini": "3,11,19,27"}
    assert layers(["--sae_layers", "1, 2;mini-gemma=5"]) == {"mini": "1,2", "mini-gemma": "5"}
    assert layers(["--sae_models", ""]) == {}
    steps = {t: a for t, _, a in pipeline.sae_steps(pipeline.get_args_parser().parse_args([]))}
    sizes = [("activations", "--limit", "64", "24"), ("SAEs", "--max_texts", "128", "32"),
             ("SAE reconstruction", "--nll_images", "16", "4")]  # fmt: skip
    for title, flag, first, other in sizes:
        for model, n in (("mini", first), ("mini-gemma", other)):  # the second model's share
            argv = steps[f"{title} {model}"]
            assert argv[argv.index(flag) + 1] == n
    with pytest.raises(UserError, match="mini-gemma=L"):
        layers(["--sae_layers", "mini=1"])
    for bad in ("mini=1,x", "mini=1;mini=2", "mini="):
        with pytest.raises(SystemExit):
            layers(["--sae_layers", bad])


def test_references_capped_per_shard():
    import pytest

    def max_images(argv):
        args = pipeline.get_args_parser().parse_args(argv)
        out = {}
        for title, _, a in pipeline.plan(args):
            if title.startswith("reference "):
                out[title.split()[-1]] = (
                    a[a.index("--max_images") + 1] if "--max_images" in a else None
                )
        return out

    # the default: CRAFT's float32 trunk on the first 100 images of each shard, the others whole
    assert max_images([]) == {"craft-vgg16": "100", "efficientnet-lite0": None, "minilm": None}
    assert max_images(["--ref_max_images", ""]) == dict.fromkeys(max_images([]))
    capped = max_images(["--ref_max_images", "minilm=7,craft-vgg16=3"])
    assert capped == {"craft-vgg16": "3", "efficientnet-lite0": None, "minilm": "7"}
    for bad in ("craft-vgg16", "craft-vgg16=0", "=4", "minilm=x"):
        with pytest.raises(SystemExit):
            max_images(["--ref_max_images", bad])
