"""extract_knn end to end on synthetic vectors with known geometry."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from src.data.paths import reference_shard_dir, vector_shard_dir
from src.data.vectors import Chunk, save_chunk
from src.extract import extract_knn
from tests.vectors_on_disk import finish_shard


def write_space(root, model, *, rotate: bool, n=60, t=3, d=8, seed=0, nan_key=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    for shard in ("s0", "s1"):
        keys = [f"{shard}_{i:03d}" for i in range(n // 2)]
        pre = [torch.randn(t, d, generator=g) for _ in keys]
        post = [p @ q if rotate else torch.randn(t, d, generator=g) for p in pre]
        if nan_key in keys:
            pre[keys.index(nan_key)][0, 0] = float("nan")
        folder = vector_shard_dir(root, model, shard)
        save_chunk(folder, "pre", 0, Chunk.from_items(keys, pre, []))
        save_chunk(folder, "post", 0, Chunk.from_items(keys, post, []))
        finish_shard(folder, model)
        ref = reference_shard_dir(root / "ref", shard)
        # the reference is E_pre's mean itself, minus one image it could not embed
        save_chunk(
            ref,
            "ref",
            0,
            Chunk.from_items(keys[1:], [p.mean(0, keepdim=True) for p in pre[1:]], []),
        )
    return root / model


def run(tmp_path, vec, *extra):
    return extract_knn.main([
        "--pre_pt", str(vec), "--post_pt", str(vec), "--ref", f"self:{tmp_path / 'v' / 'ref'}",
        "--out_dir", str(tmp_path / "out"), "--k", "5", "10", "--bootstrap", "100",
        "--permutations", "20", "--pairs", "500", "--svd_per_image_csv", "--no_progress", *extra,
    ])  # fmt: skip


def test_rotation_keeps_every_neighbour(tmp_path):
    vec = write_space(tmp_path / "v", "m", rotate=True)
    assert run(tmp_path, vec) == 0
    knn = pd.read_csv(tmp_path / "out" / "knn.csv")
    pp = knn[(knn.from_space == "pre") & (knn.to_space == "post")]
    assert list(pp.k) == [5, 10] and (pp.overlap_mean == 1.0).all()
    assert (pp.rank_displacement_mean == 0).all()
    assert pp.chance.tolist() == pytest.approx([5 / 59, 10 / 59])
    ref = knn[(knn.from_space == "ref:self") & (knn.to_space == "pre")]
    assert (ref.n == 58).all() and (ref.overlap_mean == 1.0).all()  # the reference is E_pre
    cka = pd.read_csv(tmp_path / "out" / "cka.csv")
    assert list(cka.estimator[:3]) == ["cka_linear", "cka_linear_unbiased", "cka_rbf"]
    lin = cka[(cka.from_space == "pre") & (cka.estimator == "cka_linear")]
    assert lin.cka.iloc[0] == pytest.approx(1.0) and lin.p_value.iloc[0] < 0.1
    dc = pd.read_csv(tmp_path / "out" / "distance_corr.csv")
    assert dc.pearson.iloc[0] == pytest.approx(1.0)
    spectra = pd.read_csv(tmp_path / "out" / "spectra.csv")
    assert {"image", "dataset"} <= set(spectra.level)
    assert {"erank_energy", "erank_rv"} <= set(spectra.measure)
    per_image = pd.read_csv(tmp_path / "out" / "spectra_per_image.csv")
    assert len(per_image) == 60 * 2 * 2  # images x (pre, post) x (raw, standardised)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["references"]["self"]["missing"] == 2


def test_cka_measures_are_picked_by_registry_name(tmp_path, capsys):
    vec = write_space(tmp_path / "v", "m", rotate=True)
    assert run(tmp_path, vec, "--cka", "cka_linear_unbiased") == 0
    cka = pd.read_csv(tmp_path / "out" / "cka.csv")
    assert set(cka.estimator) == {"cka_linear_unbiased"}
    assert len(cka) == 3  # pre -> post, ref -> pre, ref -> post
    pp = cka[cka.from_space == "pre"].iloc[0]
    assert pp.cka == pytest.approx(1.0) and pp.permutations == 20 and pp.n == 60
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {r["estimator"] for r in summary["cka"]} == {"cka_linear_unbiased"}
    assert run(tmp_path, vec, "--cka", "cka_linear,cka_rbff", "--out_dir", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "error: unknown measure 'cka_rbff'; known: cka_linear, cka_linear_unbiased" in err
    assert not (tmp_path / "o").exists()
    assert run(tmp_path, vec, "--cka", "knn_overlap", "--out_dir", str(tmp_path / "o")) == 2
    assert "no permutation null for knn_overlap" in capsys.readouterr().err


def test_independent_spaces_sit_at_chance(tmp_path):
    vec = write_space(tmp_path / "v", "m", rotate=False, n=200, d=16)
    assert run(tmp_path, vec) == 0
    knn = pd.read_csv(tmp_path / "out" / "knn.csv")
    r = knn[(knn.from_space == "pre") & (knn.to_space == "post") & (knn.k == 10)].iloc[0]
    assert r.overlap_ci_low <= r.chance <= r.overlap_ci_high


def test_shard_scope_and_rerun(tmp_path):
    vec = write_space(tmp_path / "v", "m", rotate=True)
    assert run(tmp_path, vec, "--scope", "shard", "--skip_existing") == 0
    knn = pd.read_csv(tmp_path / "out" / "knn.csv")
    assert set(knn.scope) == {"s0", "s1"}
    assert (knn[knn.from_space == "pre"].n == 30).all()
    mtime = (tmp_path / "out" / "knn.csv").stat().st_mtime_ns
    assert run(tmp_path, vec, "--scope", "shard", "--skip_existing") == 0
    assert (tmp_path / "out" / "knn.csv").stat().st_mtime_ns == mtime


def test_clear_errors(tmp_path, capsys):
    vec = write_space(tmp_path / "v", "m", rotate=True, n=8)
    assert run(tmp_path, vec, "--k", "10") == 2
    assert "need N > k" in capsys.readouterr().err
    bad = write_space(tmp_path / "w", "m", rotate=True, nan_key="s0_002")
    assert run(tmp_path, bad) == 2
    assert "NaN" in capsys.readouterr().err
    assert (
        extract_knn.main(
            [
                "--pre_pt",
                str(tmp_path / "none"),
                "--post_pt",
                str(tmp_path),
                "--out_dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "no vector chunks" in capsys.readouterr().err
    folder = vector_shard_dir(tmp_path / "x", "m", "s0")
    save_chunk(folder, "pre", 0, Chunk.from_items(["a", "b"], [torch.ones(2, 3)] * 2, []))
    save_chunk(folder, "post", 0, Chunk.from_items(["a", "c"], [torch.ones(2, 3)] * 2, []))
    finish_shard(folder)
    assert (
        extract_knn.main(
            [
                "--pre_pt",
                str(tmp_path / "x" / "m"),
                "--post_pt",
                str(tmp_path / "x" / "m"),
                "--out_dir",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "do not line up" in capsys.readouterr().err
