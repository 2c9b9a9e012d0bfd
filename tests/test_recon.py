"""Reconstruction stages on synthetic vectors where the answer is known: an invertible linear
connector is recovered, a rank-deficient one is not; resume equals an uninterrupted run; bad
inputs give clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from src.data.paths import vector_shard_dir
from src.data.vectors import Chunk, save_chunk
from src.eval import eval_recon
from src.train import export_recon, train_recon


def write_linear_vectors(
    root: Path,
    model: str,
    a: torch.Tensor,
    *,
    n: int = 240,
    t: int = 4,
    seed: int = 0,
    expand: int = 1,
) -> None:
    """E_pre random (low-dimensional structure + noise), E_post = E_pre @ a, two shards."""
    g = torch.Generator().manual_seed(seed)
    d_pre = a.shape[0] // expand
    basis = torch.randn(6, d_pre, generator=g)
    for shard in ("s0", "s1"):
        keys, pres, posts = [], [], []
        for i in range(n // 2):
            pre = torch.randn(t * expand, 6, generator=g) @ basis + 0.05 * torch.randn(
                t * expand, d_pre, generator=g
            )
            post = pre.reshape(t, expand * d_pre) @ a if expand > 1 else pre @ a
            keys.append(f"{shard}_{i:04d}")
            pres.append(pre)
            posts.append(post)
        folder = vector_shard_dir(root, model, shard)
        for c in range(2):  # two chunks per shard
            sl = slice(c * n // 4, (c + 1) * n // 4)
            save_chunk(folder, "pre", c, Chunk.from_items(keys[sl], pres[sl], []))
            save_chunk(folder, "post", c, Chunk.from_items(keys[sl], posts[sl], []))
        (folder / "manifest.json").write_text("{}")


def run_all(tmp: Path, model: str, *extra: str, epochs: int = 30) -> dict:
    vec, recon = tmp / "vector", tmp / "recon" / model
    argv = [
        "--vec_dir",
        str(vec / model),
        "--embed_model",
        model,
        "--out_dir",
        str(recon),
        "--normalize",
        "--epochs",
        str(epochs),
        "--batch_size",
        "16",
        "--hidden_size",
        "64",
        "--num_layers",
        "2",
        "--lr",
        "3e-3",
        "--no_progress",
        *extra,
    ]
    assert train_recon.main(argv) == 0
    assert (
        export_recon.main(
            [
                "--embed_model",
                model,
                "--vec_root",
                str(vec),
                "--model_dir",
                str(recon),
                "--out_base",
                str(tmp / "vector_recon"),
                "--no_progress",
            ]
        )
        == 0
    )
    assert (
        eval_recon.main(
            [
                "--embed_model",
                model,
                "--vec_root",
                str(vec),
                "--model_dir",
                str(recon),
                "--recon_root",
                str(tmp / "vector_recon"),
                "--out_dir",
                str(tmp / "results"),
                "--bootstrap",
                "200",
                "--no_progress",
            ]
        )
        == 0
    )
    return json.loads((tmp / "results" / f"recon_{model}.json").read_text())["methods"]


def test_invertible_linear_connector_is_recovered(tmp_path):
    torch.manual_seed(1)
    a = torch.linalg.qr(torch.randn(12, 12))[0] * 2.0  # invertible (orthogonal x 2)
    write_linear_vectors(tmp_path / "vector", "lin", a)
    res = run_all(tmp_path, "lin")
    assert res["reconstructor"]["cosine"]["mean"] > 0.99
    assert res["ridge"]["cosine"]["mean"] > 0.99  # a linear map is what ridge can invert
    assert res["train_mean"]["cosine"]["mean"] < 0.9
    assert res["reconstructor"]["mse_standardised"]["mean"] < 0.05
    ci = res["reconstructor"]["cosine"]
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]


def test_rank_deficient_connector_loses_information(tmp_path):
    torch.manual_seed(1)
    a = torch.randn(12, 12)
    u, s, vh = torch.linalg.svd(a)
    s[2:] = 0  # keep 2 of 12 directions (the data live in 6)
    write_linear_vectors(tmp_path / "vector", "low", u @ torch.diag(s) @ vh)
    res = run_all(tmp_path, "low")
    assert res["reconstructor"]["cosine"]["mean"] < 0.95
    assert res["reconstructor"]["mse_standardised"]["mean"] > 0.2


@pytest.mark.parametrize("model_type", ["mlp", "transformer"])
def test_merger_like_connector_is_recovered(tmp_path, model_type):
    """4 pre tokens -> 1 post token (a linear 2x2 merger): the mlp maps each post token back to
    its 4 pre tokens (expand = 4); the transformer's learned queries learn the same from data."""
    torch.manual_seed(2)
    a = torch.linalg.qr(torch.randn(32, 32))[0]  # 4 tokens x 8 dims -> 32
    write_linear_vectors(tmp_path / "vector", "merge", a, expand=4, t=2, seed=3)
    extra = ["--model_type", model_type, "--num_heads", "4"]
    res = run_all(tmp_path, "merge", *extra, epochs=40 if model_type == "transformer" else 30)
    cos = {m: res[m]["cosine"]["mean"] for m in res}
    if model_type == "mlp":
        assert cos["reconstructor"] > 0.95
    else:  # 40 epochs on 220 images: far from perfect, far above what a linear map of the mean gets
        assert cos["reconstructor"] > 0.5 and cos["reconstructor"] > cos["ridge"] + 0.2
    assert cos["reconstructor"] > cos["train_mean"] + 0.1
    cfg = json.loads((tmp_path / "recon" / "merge" / "recon_config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["t_pre"] == 8 and cfg["t_post"] == 2


def test_resume_equals_uninterrupted(tmp_path):
    torch.manual_seed(1)
    a = torch.linalg.qr(torch.randn(12, 12))[0]
    write_linear_vectors(tmp_path / "vector", "lin", a, n=80)
    base = [
        "--vec_dir",
        str(tmp_path / "vector" / "lin"),
        "--embed_model",
        "lin",
        "--normalize",
        "--batch_size",
        "16",
        "--hidden_size",
        "32",
        "--num_layers",
        "2",
        "--no_progress",
    ]
    assert train_recon.main([*base, "--out_dir", str(tmp_path / "a"), "--epochs", "4"]) == 0
    # A 4-epoch run that ends after epoch 2 (as a job at its time limit would), then resumes.
    assert (
        train_recon.main(
            [*base, "--out_dir", str(tmp_path / "c"), "--epochs", "4", "--stop_after", "2"]
        )
        == 0
    )
    assert (
        train_recon.main([*base, "--out_dir", str(tmp_path / "c"), "--epochs", "4", "--resume"])
        == 0
    )
    a_state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    c_state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert a_state["history"] == c_state["history"]
    for k, v in a_state["model"].items():
        assert torch.equal(v, c_state["model"][k]), k


def test_bad_inputs_fail_clearly(tmp_path, capsys):
    torch.manual_seed(1)
    a = torch.linalg.qr(torch.randn(12, 12))[0]
    write_linear_vectors(tmp_path / "vector", "lin", a, n=40)
    base = [
        "--embed_model",
        "lin",
        "--out_dir",
        str(tmp_path / "r"),
        "--epochs",
        "1",
        "--no_progress",
    ]
    # NaN vectors
    folder = vector_shard_dir(tmp_path / "vector", "lin", "s1")
    bad = Chunk.from_items(["s1_nan"], [torch.full((4, 12), float("nan"))], [])
    save_chunk(folder, "pre", 5, bad)
    save_chunk(folder, "post", 5, bad)
    assert train_recon.main(["--vec_dir", str(tmp_path / "vector" / "lin"), *base]) == 2
    assert "NaN or Inf" in capsys.readouterr().err
    (folder / "pre_vectors_5.pt").unlink()
    (folder / "post_vectors_5.pt").unlink()
    # mismatched keys between pre and post
    save_chunk(folder, "pre", 6, Chunk.from_items(["x"], [torch.zeros(4, 12)], []))
    save_chunk(folder, "post", 6, Chunk.from_items(["y"], [torch.zeros(4, 12)], []))
    assert train_recon.main(["--vec_dir", str(tmp_path / "vector" / "lin"), *base]) == 2
    assert "do not line up" in capsys.readouterr().err
    (folder / "pre_vectors_6.pt").unlink()
    (folder / "post_vectors_6.pt").unlink()
    # a reconstructor of another model
    assert train_recon.main(["--vec_dir", str(tmp_path / "vector" / "lin"), *base]) == 0
    assert (
        eval_recon.main(
            [
                "--embed_model",
                "other",
                "--model_dir",
                str(tmp_path / "r"),
                "--vec_root",
                str(tmp_path / "vector"),
            ]
        )
        == 2
    )
    assert "not 'other'" in capsys.readouterr().err
    # wrong dimensions: a checkpoint made for 12-d vectors resumed on 10-d ones
    write_linear_vectors(tmp_path / "v10", "lin", torch.eye(10), n=40)
    assert (
        train_recon.main(
            [
                "--vec_dir",
                str(tmp_path / "v10" / "lin"),
                *base[:-3],
                "--epochs",
                "2",
                "--resume",
                "--no_progress",
            ]
        )
        == 2
    )
    assert "another model/config" in capsys.readouterr().err


def test_missing_inputs(tmp_path, capsys):
    assert (
        train_recon.main(
            [
                "--vec_dir",
                str(tmp_path / "none"),
                "--embed_model",
                "x",
                "--out_dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no vector chunks" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_recon.main(["--embed_model", "x"])  # --vec_dir is required


def test_split_all_adds_training_rows_and_keeps_the_held_out_headline(tmp_path):
    import pandas as pd

    from src.training.recon import is_validation

    torch.manual_seed(1)
    write_linear_vectors(tmp_path / "vector", "lin", torch.linalg.qr(torch.randn(12, 12))[0])
    val_only = run_all(tmp_path, "lin", epochs=3)
    argv = [
        "--embed_model", "lin", "--vec_root", str(tmp_path / "vector"), "--model_dir",
        str(tmp_path / "recon" / "lin"), "--recon_root", str(tmp_path / "vector_recon"),
        "--bootstrap", "200", "--no_progress", "--split", "all", "--out_dir",
        str(tmp_path / "all"),
    ]  # fmt: skip
    assert eval_recon.main(argv) == 0
    summary = json.loads((tmp_path / "all" / "recon_lin.json").read_text())
    assert summary["methods"] == val_only  # the headline is the held-out split either way
    rows = pd.read_csv(tmp_path / "all" / "recon_lin.csv")
    cfg = json.loads((tmp_path / "recon" / "lin" / "recon_config.json").read_text())
    want = ["val" if is_validation(k, cfg["val_fraction"], cfg["split_seed"]) else "train"
            for k in rows.key]  # fmt: skip
    assert rows.split.tolist() == want
    assert set(rows.split) == {"train", "val"} and rows.key.nunique() == 240
    by = summary["by_split"]
    assert by["val"]["reconstructor"]["n"] + by["train"]["reconstructor"]["n"] == 240
    val = rows[(rows.split == "val") & (rows.method == "reconstructor")]
    assert by["val"]["reconstructor"]["cosine"] == pytest.approx(val.cosine.mean())
