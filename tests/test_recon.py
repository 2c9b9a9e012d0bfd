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
        (folder / "manifest.json").write_text(json.dumps(identity(model)))


def identity(model: str) -> dict:
    """What extract_vectors' manifests record of the model that made the vectors."""
    return {"model": model, "model_id": f"test/{model}", "revision": "r1", "hook_point": "linear"}


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
    # a reconstructor of another model's vectors
    assert train_recon.main(["--vec_dir", str(tmp_path / "vector" / "lin"), *base]) == 0
    write_linear_vectors(tmp_path / "vector", "other", a, n=40)
    argv = ["--embed_model", "other", "--model_dir", str(tmp_path / "r"), "--vec_root",
            str(tmp_path / "vector")]  # fmt: skip
    assert eval_recon.main(argv) == 2
    assert "was trained on vectors of" in capsys.readouterr().err
    # a resumed run with another schedule would not continue the same run
    argv = ["--vec_dir", str(tmp_path / "vector" / "lin"), *base, "--resume", "--lr", "1e-2"]
    assert train_recon.main(argv) == 2
    assert "pass the same flags" in capsys.readouterr().err
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

    from src.recon.data import is_validation

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


def train_argv(vec: Path, out: Path, *extra: str) -> list[str]:
    """A quick train_recon run: small MLP, one epoch unless `extra` says otherwise."""
    return ["--vec_dir", str(vec), "--out_dir", str(out), "--normalize", "--epochs", "1",
            "--batch_size", "16", "--hidden_size", "16", "--num_layers", "2", "--no_progress",
            *extra]  # fmt: skip


def test_seed_does_not_move_the_split(tmp_path):
    """--seed seeds initialisation and shuffling only; the held-out images are --split_seed's."""
    from src.data.paths import shard_dirs
    from src.recon.data import iter_pairs, pair_sources

    torch.manual_seed(1)
    vec = tmp_path / "vector" / "lin"
    write_linear_vectors(tmp_path / "vector", "lin", torch.linalg.qr(torch.randn(12, 12))[0])
    sources = pair_sources(shard_dirs(vec))

    def split_of(out: Path) -> tuple[set[str], set[str]]:
        cfg = json.loads((out / "recon_config.json").read_text())
        split = dict(val_fraction=cfg["val_fraction"], split_seed=cfg["split_seed"])
        return tuple(  # type: ignore[return-value]
            {k for k, _, _ in iter_pairs(sources, split=s, **split)} for s in ("train", "val")
        )

    for seed, split_seed in ((0, 0), (1, 0), (0, 1)):
        out = tmp_path / f"r_{seed}_{split_seed}"
        argv = train_argv(vec, out, "--seed", str(seed), "--split_seed", str(split_seed))
        assert train_recon.main(argv) == 0
    a, b, c = (split_of(tmp_path / f"r_{s}_{t}") for s, t in ((0, 0), (1, 0), (0, 1)))
    assert a == b and a != c  # the seed leaves the split alone; the split seed moves it
    assert a[0] and a[1] and not a[0] & a[1]
    # the seed still does its job: other initial weights, other trained weights
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "r_0_0" / "best_model.safetensors"))
    wb = load_file(str(tmp_path / "r_1_0" / "best_model.safetensors"))
    assert any(not torch.equal(wa[k], wb[k]) for k in wa)
    manifest = json.loads((tmp_path / "r_1_0" / "manifest.json").read_text())
    assert manifest["config"]["split_seed"] == 0 and manifest["fit"]["seed"] == 1


def test_identity_comes_from_the_vectors_manifests(tmp_path, capsys):
    torch.manual_seed(1)
    vec = tmp_path / "vector" / "lin"
    write_linear_vectors(tmp_path / "vector", "lin", torch.eye(12), n=40)
    assert train_recon.main(train_argv(vec, tmp_path / "r")) == 0  # no --embed_model needed
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["upstream"] == identity("lin")
    assert json.loads((tmp_path / "r" / "recon_config.json").read_text())["embed_model"] == "lin"
    capsys.readouterr()
    # a flag that disagrees with the manifests is an error, unless the user insists
    assert train_recon.main([*train_argv(vec, tmp_path / "x"), "--embed_model", "llava"]) == 2
    err = capsys.readouterr().err
    assert "--embed_model llava disagrees with" in err and "--override_model" in err
    argv = [*train_argv(vec, tmp_path / "x"), "--embed_model", "llava", "--override_model"]
    assert train_recon.main(argv) == 0
    upstream = json.loads((tmp_path / "x" / "manifest.json").read_text())["upstream"]
    assert upstream["model"] == "llava" and upstream["overridden"] == {"model": "lin"}


def export_argv(tmp: Path, *extra: str) -> list[str]:
    return ["--embed_model", "lin", "--vec_root", str(tmp / "vector"), "--model_dir",
            str(tmp / "r"), "--out_base", str(tmp / "vector_recon"), "--no_progress",
            *extra]  # fmt: skip


def test_user_error_mid_run_is_one_line(tmp_path, capsys):
    """NaN in the second shard's vectors, found half-way through the export: shard s0 is
    finished, then one `error:` line naming the file, exit code 2, no traceback."""
    torch.manual_seed(1)
    write_linear_vectors(tmp_path / "vector", "lin", torch.eye(12), n=40)
    assert train_recon.main(train_argv(tmp_path / "vector" / "lin", tmp_path / "r")) == 0
    s1 = vector_shard_dir(tmp_path / "vector", "lin", "s1")
    from src.data.vectors import load_chunk

    post = load_chunk(s1 / "post_vectors_1.pt")
    post.vectors[3] = float("nan")
    save_chunk(s1, "post", 1, post)
    capsys.readouterr()
    assert export_recon.main(export_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert str(s1 / "post_vectors_1.pt") in err and "NaN or Inf" in err
    assert (tmp_path / "vector_recon" / "lin" / "s0" / "manifest.json").exists()
    assert not (tmp_path / "vector_recon" / "lin" / "s1" / "manifest.json").exists()


def test_export_shards_and_skips_what_is_done_wherever_it_lies(tmp_path, capsys):
    """export_recon declares one shard per vector shard; --shards NAME makes its done rule
    about that shard; a finished run copied elsewhere is still finished (no absolute path
    in what --skip_existing compares)."""
    import shutil

    from src.errors import InputMissing

    stage = export_recon.STAGE
    with pytest.raises(InputMissing):
        stage.shards(stage.parse(export_argv(tmp_path)))  # no vectors yet
    torch.manual_seed(1)
    write_linear_vectors(tmp_path / "vector", "lin", torch.eye(12), n=40)
    assert train_recon.main(train_argv(tmp_path / "vector" / "lin", tmp_path / "r")) == 0
    args = stage.parse(export_argv(tmp_path, "--skip_existing"))
    assert stage.shards(args) == ["s0", "s1"]
    assert export_recon.main(export_argv(tmp_path, "--shards", "s0")) == 0
    assert stage.is_done(stage.for_shard(args, "s0"))
    assert not stage.is_done(stage.for_shard(args, "s1")) and not stage.is_done(args)
    assert export_recon.main(export_argv(tmp_path, "--skip_existing")) == 0
    out = capsys.readouterr().out
    assert "s0: complete, skipped" in out and "s1: 20 images reconstructed" in out
    assert stage.is_done(args)
    eval_argv = ["--embed_model", "lin", "--vec_root", str(tmp_path / "vector"), "--model_dir",
                 str(tmp_path / "r"), "--recon_root", str(tmp_path / "vector_recon"),
                 "--out_dir", str(tmp_path / "results"), "--bootstrap", "20", "--no_progress",
                 "--skip_existing"]  # fmt: skip
    assert eval_recon.main(eval_argv) == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("vector", "r", "vector_recon", "results"):
        shutil.copytree(tmp_path / name, moved / name)
    for module, argv in ((export_recon, export_argv(tmp_path, "--skip_existing")),
                         (eval_recon, eval_argv)):  # fmt: skip
        argv = [a.replace(str(tmp_path), str(moved)) for a in argv]
        assert module.STAGE.is_done(module.STAGE.parse(argv)), module
    # a reconstructor trained again (another seed) does not pass for the one that made them
    assert (
        train_recon.main(train_argv(tmp_path / "vector" / "lin", tmp_path / "r", "--seed", "3"))
        == 0
    )
    capsys.readouterr()
    assert export_recon.main(export_argv(tmp_path, "--skip_existing")) == 2
    assert "holds output for reconstructor=" in capsys.readouterr().err
