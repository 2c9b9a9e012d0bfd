"""The SAE stages end to end on a tiny random LLaVA: cache -> train (sparsify) -> reconstruction
(cached and streamed agree) -> semantic measures, and the figures drawn from their tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from src.data.io import read_manifest
from src.eval import sae_reconstruction, sae_semantic
from src.extract import cache_activations
from src.sae.cache import load_layer_chunk
from src.train import train_sae
from tests.conftest import write_noise_images
from tests.tiny_vlms import TEXT_HIDDEN, save_judge_lm, save_llava


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sae")
    save_llava(root / "llava")
    write_noise_images(root / "images" / "train", 6, seed=3)
    write_noise_images(root / "images" / "test", 5, seed=4)
    for p in (root / "images").rglob("*.txt"):  # words the tiny tokenizer knows
        p.write_text(f"a {['red', 'green', 'blue'][len(p.stem) % 3]} circle image\n")
    return {"root": root, "model": root / "llava", "images": root / "images"}


def _common(s):
    return [
        "--model",
        "llava",
        "--vlm_id",
        str(s["model"]),
        "--layers",
        "0,1",
        "--device",
        "cpu",
        "--no_progress",
    ]


def test_stages_end_to_end(setup):
    s, root = setup, setup["root"]
    acts = root / "acts"
    argv = [
        *_common(s),
        "--image_dir",
        str(s["images"]),
        "--shards",
        "test",
        "--out_dir",
        str(acts),
        "--save_every",
        "2",
        "--batch_size",
        "2",
    ]
    assert cache_activations.main(argv) == 0
    shard = acts / "llava" / "test"
    m = read_manifest(shard)
    assert m["n_images"] == 5 and m["chunks"] == 3 and m["layers"] == [0, 1]
    keys, caps, sets = load_layer_chunk(shard / "L001_0.pt")
    assert (
        len(keys) == 2
        and caps[0].startswith("a ")
        and set(sets) == {"image", "text", "control", "control_text"}
    )
    assert sets["image"][0].shape == (16, TEXT_HIDDEN)  # 28 px images, 7 px patches
    # resumable: a removed chunk is recomputed, equal to before
    before = (shard / "L000_1.pt").read_bytes()
    (shard / "L000_1.pt").unlink()
    (shard / "manifest.json").unlink()
    assert cache_activations.main([*argv, "--skip_existing"]) == 0
    a = load_layer_chunk(shard / "L000_1.pt")[2]["control"][0]
    (shard / "x.pt").write_bytes(before)
    torch.testing.assert_close(a, load_layer_chunk(shard / "x.pt")[2]["control"][0])
    (shard / "x.pt").unlink()

    saes = root / "sae"
    assert (
        train_sae.main(
            [
                *_common(s),
                "--image_dir",
                str(s["images"]),
                "--shards",
                "train",
                "--out_dir",
                str(saes),
                "--expansion_factor",
                "2",
                "--k",
                "4",
                "--epochs",
                "3",
                "--sae_batch",
                "16",
            ]
        )
        == 0
    )
    assert (saes / "llava" / "layers.1" / "sae.safetensors").exists()
    assert (
        len(json.loads((saes / "llava" / "training.json").read_text())["0"]["fvu_per_epoch"]) == 3
    )

    out = root / "results"
    rec = [
        *_common(s),
        "--sae_dir",
        str(saes / "llava"),
        "--image_dir",
        str(s["images"]),
        "--shards",
        "test",
        "--bootstrap",
        "50",
    ]
    assert (
        sae_reconstruction.main(
            [
                *rec,
                "--acts_dir",
                str(acts / "llava"),
                "--out_dir",
                str(out / "cached" / "sae"),
                "--nll_images",
                "3",
            ]
        )
        == 0
    )
    assert (
        sae_reconstruction.main(
            [*rec, "--out_dir", str(out / "stream" / "sae"), "--nll_images", "0"]
        )
        == 0
    )
    cached = pd.read_csv(out / "cached" / "sae" / "sae_reconstruction_llava.csv")
    stream = pd.read_csv(out / "stream" / "sae" / "sae_reconstruction_llava.csv")
    assert len(cached) == 8 and set(cached["tokens"]) == {
        "image",
        "text",
        "control",
        "control_text",
    }
    # the cache stores fp16: the same numbers up to that rounding
    pd.testing.assert_series_equal(cached["fvu"], stream["fvu"], rtol=2e-2)
    assert (cached["l0"] <= 4).all() and cached["fvu"].gt(0).all()
    img = cached[cached["tokens"] == "image"]
    assert img["delta_nll"].notna().all() and (img["nll_images"] == 3).all()

    sem = [
        *_common(s),
        "--sae_dir",
        str(saes / "llava"),
        "--acts_dir",
        str(acts / "llava"),
        "--out_dir",
        str(out / "cached" / "sae"),
        "--bootstrap",
        "50",
        "--top_features",
        "3",
    ]
    assert sae_semantic.main(sem) == 0
    df = pd.read_csv(out / "cached" / "sae" / "sae_semantic_llava.csv")
    assert set(df["measure"]) == {"overlap", "lens"} and len(df) == 4
    assert df["own"].between(0, 1).all() and df["chance"].between(0, 1).all()
    assert not (out / "cached" / "sae" / "sae_judge_llava.csv").exists()  # the judge is off

    # seed C's judge, on: a tiny text LM shown the captions; the semantic table stays the same
    save_judge_lm(root / "judge")
    judged = out / "judged" / "sae"
    argv = [*sem[:-6], "--out_dir", str(judged), "--bootstrap", "50", "--top_features", "3"]
    assert (
        sae_semantic.main([*argv, "--judge", "text-lm", "--judge_model", str(root / "judge")]) == 0
    )
    pd.testing.assert_frame_equal(pd.read_csv(judged / "sae_semantic_llava.csv"), df)
    j = pd.read_csv(judged / "sae_judge_llava.csv")
    assert j["layer"].tolist() == [0, 1] and (j["judge_shown"] == "reference caption").all()
    for name in ("own", "random", "mismatched"):
        assert j[name].between(0, 1).all()
        assert (j[f"{name}_ci_low"] <= j[name]).all() and (j[name] <= j[f"{name}_ci_high"]).all()
    per = pd.read_csv(judged / "sae_judge_images_llava.csv")
    assert len(per) == 2 * 5 and set(per["key"]) == set(pd.read_csv(
        out / "cached" / "sae" / "sae_semantic_images_llava.csv")["key"])  # fmt: skip

    from src.reporting.sae_figures import sae_reconstruction_plot, sae_semantic_plot

    for make in (sae_reconstruction_plot, sae_semantic_plot):
        plot = make(out / "cached")
        assert not plot.data.empty and set(plot.data["model"]) == {"llava"}
    fvu = sae_reconstruction_plot(out / "cached").data
    got = fvu[(fvu["panel"] == "fvu") & (fvu["tokens"] == "image")].sort_values("layer")["value"]
    assert got.tolist() == pytest.approx(img.sort_values("layer")["fvu"].tolist())


def test_a_cache_of_another_model_is_refused(setup, tmp_path):
    shard = tmp_path / "acts" / "test"
    shard.mkdir(parents=True)
    (shard / "manifest.json").write_text(json.dumps({"model": "mini", "layers": [0, 1]}))
    argv = [
        *_common(setup),
        "--acts_dir",
        str(tmp_path / "acts"),
        "--sae_dir",
        str(tmp_path),
        "--out_dir",
        str(tmp_path / "out"),
    ]
    assert sae_semantic.main(argv) == 2
