"""embedding_maps: t-SNE / UMAP with very few images, Procrustes after one shared map, RSA with
CIs, labels from the image root, and the figures drawn from the tables."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from src.data.paths import align_table
from src.data.vectors import Chunk, save_chunk
from src.plot import embedding_maps


def _space(folder: Path, x: torch.Tensor, keys: list[str], kind: str = "ref") -> Path:
    chunk = Chunk.from_items(keys, [v[None] for v in x], [])
    save_chunk(folder / "s", kind, 0, chunk)
    return folder


def _labels(root: Path, keys: list[str], types: list[str]) -> None:
    (root / "s").mkdir(parents=True, exist_ok=True)
    for k, t in zip(keys, types, strict=True):
        lab = {"data_type": t}
        if t == "scene":
            lab |= {"count": 1, "objects": [{"shape": "circle", "colour": "red"}]}
        (root / "s" / f"{k}.json").write_text(json.dumps(lab))


@pytest.mark.parametrize("n", [2, 5])
def test_few_images_keep_perplexity_below_n(tmp_path, n):
    keys = [f"k{i}" for i in range(n)]
    x = torch.randn(n, 6, generator=torch.Generator().manual_seed(n))
    a, b = _space(tmp_path / "a", x, keys), _space(tmp_path / "b", x + 0.1, keys, "post")
    _labels(tmp_path / "img", keys, ["chart"] * n)
    res = embedding_maps.reduce_2d(x.double().numpy(), "tsne", embedding_maps.get_args_parser()
                                   .parse_args(["--space", "a=x", "--root", "r"]))  # fmt: skip
    assert res[0].shape == (n, 2) and res[1]["perplexity"] < n
    if n == 5:  # the whole stage, UMAP included (its neighbours kept below N)
        argv = ["--space", f"a={a}", "--space", f"b={b}:post", "--root", str(tmp_path / "img"),
                "--out_dir", str(tmp_path / "o"), "--bootstrap", "20", "--permutations", "20",
                "--train_frac", "0.4"]  # fmt: skip
        assert embedding_maps.main(argv) == 0
        coords = pd.read_csv(align_table(tmp_path / "o", "coords"))
        assert len(coords) == 2 * 2 * n and set(coords.method) == {"tsne", "umap"}
        assert (coords.perplexity.dropna() < n).all() and (coords.n_neighbors.dropna() < n).all()


def test_shared_map_procrustes_and_rsa(tmp_path):
    n = 40
    keys = [f"k{i:02d}" for i in range(n)]
    g = torch.Generator().manual_seed(0)
    vision = torch.randn(n, 8, generator=g)
    text = vision @ torch.randn(8, 5, generator=g) + 0.05 * torch.randn(n, 5, generator=g)
    noise = torch.randn(n, 7, generator=g)
    folders = {"vision": _space(tmp_path / "v", vision, keys),
               "text": _space(tmp_path / "t", text, keys),
               "noise": _space(tmp_path / "n", noise, keys)}  # fmt: skip
    types = ["scene"] * 20 + ["chart"] * 20
    _labels(tmp_path / "img", keys, types)
    out = tmp_path / "o"
    argv = [a for name, f in folders.items() for a in ("--space", f"{name}={f}")]
    argv += ["--root", str(tmp_path / "img"), "--out_dir", str(out), "--method", "tsne",
             "--n_samples", "15", "--bootstrap", "100", "--permutations", "100"]  # fmt: skip
    assert embedding_maps.main(argv) == 0
    coords = pd.read_csv(align_table(out, "coords"))
    assert coords.groupby("space").item.nunique().eq(30).all()  # 15 per data type
    assert set(coords[coords.data_type == "scene"].scene_shape) == {"circle"}
    pro = pd.read_csv(align_table(out, "procrustes")).set_index(["space_a", "space_b"])
    vt = pro.loc[("vision", "text")]
    assert vt.disparity < 0.1 < vt.disparity_mismatched  # one shared map: the shape matches
    assert pro.loc[("vision", "noise")].disparity > 0.5
    assert pro.disparity.between(0, 1).all() and (pro.n_test == 15).all()
    rsa = pd.read_csv(align_table(out, "rsa")).set_index(["space_a", "space_b"])
    assert rsa.loc[("vision", "text")].ci_low > 0.3 and rsa.loc[("vision", "text")].p_perm < 0.05
    assert rsa.loc[("vision", "noise")].ci_low < 0.15
    assert (rsa.ci_low <= rsa.rho).all() and (rsa.rho <= rsa.ci_high).all()

    from src.reporting.align_maps_figures import embedding_maps_plot, rsa_plot
    from src.reporting.figures import all_plots

    results = tmp_path / "results"
    (results / "align").mkdir(parents=True)
    (results / "align" / "embedding_maps").symlink_to(out)
    plot = rsa_plot(results)
    shown = plot.data[plot.data.measure == "rsa_rho"].value.tolist()
    assert shown == pytest.approx(rsa.rho.tolist())
    assert len(embedding_maps_plot(results).data) == len(coords)
    assert {"align_speed", "align_rsa"} <= {name for name, _ in all_plots(results)}
