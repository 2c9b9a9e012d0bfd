"""train_kernel_align (KUEA, seed D): kernels against plain loops, the loss by hand, kernel
parameters that train (and the seed's copy that never did), resume, trainable-mode selection,
and the tower folder as a vision tower; tiny random CLIP / DINOv2 from configs."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from src.metrics.kernels import (
    clean_loss,
    cosine_kernel,
    gaussian_kernel,
    kernel_alignment_loss,
    normalise_kernel,
    polynomial_kernel,
)
from src.models.kernel_align import (
    AlignModel,
    AlignTrainConfig,
    KernelConfig,
    StudentKernel,
    build_tower,
    fit_kernel_params,
    loss_terms,
    merged_tower,
    select_trainable,
    tower_adapter,
    train_kernel_align,
)
from src.train import train_kernel_align as stage
from tests.conftest import write_noise_images

TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
            image_size=32, patch_size=8)  # fmt: skip


@pytest.fixture(scope="module")
def towers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random CLIPVisionModel (student) and Dinov2Model (teacher) saved as hub folders."""
    import transformers as tf

    root = tmp_path_factory.mktemp("towers")
    size = {"height": 32, "width": 32}
    torch.manual_seed(0)
    tf.CLIPVisionModel(tf.CLIPVisionConfig(**TINY)).save_pretrained(root / "clip")
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size).save_pretrained(root / "clip")
    tf.Dinov2Model(tf.Dinov2Config(**TINY)).save_pretrained(root / "dino")
    tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size=size).save_pretrained(root / "dino")
    return {"clip": root / "clip", "dino": root / "dino"}


# ---- kernels ------------------------------------------------------------------------------


def _loop_kernel(x: torch.Tensor, k) -> torch.Tensor:
    n = len(x)
    out = torch.empty(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            out[i, j] = k(x[i], x[j]) / math.sqrt(k(x[i], x[i]) * k(x[j], x[j]))
    return out


def test_kernels_match_plain_loops():
    torch.manual_seed(0)
    x = torch.randn(7, 5, dtype=torch.float64)
    g, c = 0.3, 0.7
    poly = _loop_kernel(x, lambda a, b: float((g * a.dot(b) + c) ** 3))
    torch.testing.assert_close(polynomial_kernel(x, g, c), poly)
    band = 1.7
    gauss = _loop_kernel(x, lambda a, b: math.exp(-float((a - b).pow(2).sum()) / (2 * band**2)))
    torch.testing.assert_close(gaussian_kernel(x, band), gauss)
    cos = _loop_kernel(x, lambda a, b: float(a.dot(b)))
    torch.testing.assert_close(cosine_kernel(x), cos)


def test_normalisation_and_scale_invariance():
    torch.manual_seed(1)
    x = torch.randn(6, 4, dtype=torch.float64).abs()
    k = polynomial_kernel(x, 0.2, 0.5)
    torch.testing.assert_close(k.diagonal(), torch.ones(6, dtype=torch.float64))
    # only coef0 / gamma matters once normalised
    torch.testing.assert_close(polynomial_kernel(x, 2.0, 5.0), k)
    raw = torch.rand(5, 5, dtype=torch.float64) + 1
    raw = raw @ raw.T
    n = normalise_kernel(raw)
    torch.testing.assert_close(n[1, 3], raw[1, 3] / (raw[1, 1] * raw[3, 3]).sqrt())
    # the gaussian's gradient is finite on its zero-distance diagonal (cdist's is NaN)
    x.requires_grad_(True)
    gaussian_kernel(x, 1.0).sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- the loss -----------------------------------------------------------------------------


def _clip_model(towers, trainable="last_blocks", blocks=1):
    tower, _ = build_tower(str(towers["clip"]), 4)
    original = copy.deepcopy(tower)
    tr = select_trainable(tower, AlignTrainConfig(trainable=trainable, blocks=blocks))
    kernel = StudentKernel("polynomial", {"gamma": 0.05, "coef0": 0.8})
    return AlignModel(tr, original, kernel), tr


def test_loss_equals_hand_computation(towers):
    model, _ = _clip_model(towers)
    torch.manual_seed(2)
    with torch.no_grad():  # move the student off the original so the clean term is not 0
        for p in model.student.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(4, 3, 32, 32)
    t = torch.randn(4, 6)
    kcfg = KernelConfig(clean_weight=0.7, penalty_weight=0.3)
    teacher = {"gamma": 0.1, "coef0": 1.0}
    terms = loss_terms(model, x, t, teacher, kcfg)
    with torch.no_grad():
        e, e0 = model.student(x), model.original(x)  # (4, T, 32): the towers' own tokens
        s = e.mean(1)
        ks = torch.empty(4, 4)
        kt = torch.empty(4, 4)
        for i in range(4):
            for j in range(4):
                ks[i, j] = (0.05 * s[i] @ s[j] + 0.8) ** 3 / torch.sqrt(
                    (0.05 * s[i] @ s[i] + 0.8) ** 3 * (0.05 * s[j] @ s[j] + 0.8) ** 3
                )
                kt[i, j] = (0.1 * t[i] @ t[j] + 1) ** 3 / torch.sqrt(
                    (0.1 * t[i] @ t[i] + 1) ** 3 * (0.1 * t[j] @ t[j] + 1) ** 3)  # fmt: skip
        kern = ((ks - kt) ** 2).sum() / 16
        clean = ((e - e0) ** 2).sum() / (e.shape[0] * e.shape[1])
    torch.testing.assert_close(terms["kernel"].detach(), kern, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["clean"].detach(), clean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(terms["total"].detach(), 0.7 * clean + 0.3 * kern, rtol=1e-4,
                               atol=1e-6)  # fmt: skip
    assert float(clean) > 0
    assert float(clean_loss("cosine", e, e0)) > 0


# ---- kernel parameters train (and the seed's bug) -----------------------------------------


def test_kernel_parameters_change_during_training(towers, tmp_path):
    model, _ = _clip_model(towers)
    torch.manual_seed(3)
    h, t = torch.randn(12, 3, 32, 32), torch.randn(12, 6)
    kcfg = KernelConfig()
    teacher = {"gamma": 0.2, "coef0": 1.0}
    before = model.kernel.floats()
    cfg = AlignTrainConfig(steps=6, warmup=1, batch_size=6, kernel_lr=0.05)
    hist = train_kernel_align(model, h, t, teacher, kcfg, cfg, checkpoint=tmp_path / "c.pt",
                              device="cpu", progress=False)  # fmt: skip
    after = model.kernel.floats()
    assert after["gamma"] != pytest.approx(before["gamma"], rel=1e-3)
    assert after["coef0"] != pytest.approx(before["coef0"], rel=1e-3)
    # the recorded trajectory is what the loss read: it moves step by step
    assert len({round(r["gamma"], 9) for r in hist}) == len(hist)
    # and the least-squares fit lowers the kernel loss on its sample
    s = torch.randn(20, 8).abs()
    k_t = polynomial_kernel(torch.randn(20, 5), 0.3, 1.0)
    kernel = StudentKernel("polynomial", {"gamma": 1e-3, "coef0": 10.0})
    start = float(kernel_alignment_loss(kernel(s.double()), k_t.double()).detach())
    fit = fit_kernel_params(kernel, s, k_t, steps=30)
    assert fit[-1] < start


def test_seed_bug_a_copy_made_once_never_trains():
    """What NOT to do (the seed): a device copy of the Parameter, made once, in the loss,
    while the optimiser steps the leaf. Here the copy is a dtype cast (no GPU needed): the
    leaf moves, the copy the loss reads does not, so the kernel never changes."""
    leaf = torch.nn.Parameter(torch.tensor([0.05, 0.8]))
    opt = torch.optim.AdamW([leaf], lr=0.1)
    copy_once = leaf.to(torch.float64)  # the seed: projector_clip = projector_clip.cuda()
    x = torch.randn(5, 3, dtype=torch.float64)
    target = torch.eye(5, dtype=torch.float64)
    losses = []
    for _ in range(4):
        loss = kernel_alignment_loss(polynomial_kernel(x, copy_once[0], copy_once[1]), target)
        opt.zero_grad()
        loss.backward(retain_graph=True)
        opt.step()
        losses.append(float(loss))
    assert not torch.allclose(leaf.detach().double(), copy_once.detach())  # the leaf moved
    assert copy_once.detach().tolist() == pytest.approx([0.05, 0.8])  # what the loss reads did not
    assert len(set(losses)) == 1  # so the loss never sees a change
    # ours: the loss reads the module's parameter itself
    kernel = StudentKernel("polynomial", {"gamma": 0.05, "coef0": 0.8}).double()
    opt = torch.optim.AdamW(kernel.parameters(), lr=0.1)
    ours = []
    for _ in range(4):
        loss = kernel_alignment_loss(kernel(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.append(float(loss))
    assert len(set(ours)) == 4


# ---- trainable modes ----------------------------------------------------------------------


def test_trainable_modes_freeze_what_they_should(towers):
    tower, _ = build_tower(str(towers["clip"]), 4)
    n_layers = len(tower_adapter(tower).units(tower))
    last = select_trainable(copy.deepcopy(tower), AlignTrainConfig(blocks=2))
    assert last.names and all(f"layers.{n_layers - 1}." in n or f"layers.{n_layers - 2}." in n
                              for n in last.names)  # fmt: skip
    assert not any("layers.0." in n or "embeddings" in n for n in last.names)
    every = select_trainable(copy.deepcopy(tower), AlignTrainConfig(trainable="all"))
    inside = {n for n, _ in tower.named_parameters() if ".encoder.layers." in n}
    assert inside <= set(every.names)
    lora = select_trainable(copy.deepcopy(tower), AlignTrainConfig(trainable="lora", blocks=1))
    assert lora.names and all("lora_" in n for n in lora.names)
    trains = {n for n, p in lora.tower.named_parameters() if p.requires_grad}
    assert trains == set(lora.names)
    assert all(f"layers.{n_layers - 1}." in n for n in lora.names)
    # LoRA merged into the weights gives the same tower (after a change to lora_B)
    with torch.no_grad():
        for n, p in lora.tower.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    x = torch.randn(2, 3, 32, 32)
    merged = merged_tower(lora)
    assert merged.state_dict().keys() == tower.state_dict().keys()
    torch.testing.assert_close(merged(x), lora.tower(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(merged(x), tower(x))


def test_efficientnet_last_blocks_and_cut():
    from src.models.towers import EfficientNetTokens

    tower = EfficientNetTokens(grid=4)
    adapter = tower_adapter(tower)
    tr = select_trainable(copy.deepcopy(tower), AlignTrainConfig(blocks=3))
    assert tr.cut == len(adapter.units(tower)) - 3
    assert any("_conv_head" in n for n in tr.names) and any("_blocks.15." in n for n in tr.names)
    assert not any("_blocks.13." in n or "_conv_stem" in n for n in tr.names)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        split = adapter.suffix(tower, adapter.prefix(tower, x, tr.cut), tr.cut)
        torch.testing.assert_close(split, tower(x), rtol=1e-4, atol=1e-5)


# ---- the stage: resume, output folder as a vision tower -----------------------------------


def _argv(towers, root: Path, out: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--eval_shards", "held", "--student", str(towers["clip"]),
            "--teacher", str(towers["dino"]), "--out_dir", str(out / "tower"),
            "--work_dir", str(out / "work"), "--steps", "6", "--warmup", "2",
            "--batch_size", "4", "--checkpoint_every", "2", "--fit_n", "8", "--fit_steps", "5",
            "--blocks", "1", "--kernel_lr", "0.05", "--lr", "1e-3", "--device", "cpu",
            "--no_progress", *extra]  # fmt: skip


def test_stage_resume_equals_uninterrupted_and_loads_as_tower(towers, tmp_path):
    root = tmp_path / "images"
    write_noise_images(root / "train", 10)
    write_noise_images(root / "held", 6, seed=1)
    assert stage.main(_argv(towers, root, tmp_path / "a")) == 0
    assert stage.main(_argv(towers, root, tmp_path / "b", "--stop_after", "3")) == 0
    assert not (tmp_path / "b" / "tower" / "tower.json").exists()
    assert stage.main(_argv(towers, root, tmp_path / "b")) == 0
    a, b = (load_file(str(tmp_path / d / "tower" / "tower.safetensors")) for d in "ab")
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    cfg_a = json.loads((tmp_path / "a" / "tower" / "tower.json").read_text())
    cfg_b = json.loads((tmp_path / "b" / "tower" / "tower.json").read_text())
    assert cfg_a["kernel_params"]["final"] == cfg_b["kernel_params"]["final"]
    params = cfg_a["kernel_params"]
    assert set(params) == {"initial", "fitted", "final"}
    assert params["final"]["gamma"] != params["fitted"]["gamma"]
    assert (tmp_path / "a" / "work" / "heldout.csv").exists()
    # the folder is a vision tower by name: base tower + the changed tensors
    from src.models.connector import ConnectorArch
    from src.models.mini import build_vision

    tuned, _ = build_vision(ConnectorArch(vision=str(tmp_path / "a" / "tower")))
    base, _ = build_vision(ConnectorArch(vision=str(towers["clip"])))
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(tuned(x), base(x))
    sd = tuned.state_dict()
    for k, v in a.items():
        torch.testing.assert_close(sd[k], v)
    # a finished folder is skipped
    assert stage.main(_argv(towers, root, tmp_path / "a", "--skip_existing")) == 0


# ---- the connector comparison and the figures ---------------------------------------------


def _connector_eval(folder: Path, colour_right: list[bool], nll: list[float]) -> None:
    import pandas as pd

    (folder / "eval" / "scored").mkdir(parents=True)
    keys = [f"scene_{i}" for i in range(len(nll))]
    pd.DataFrame({"key": keys, "colour": "red", "shape": "square",
                  "colour_said": ["red" if r else "blue" for r in colour_right],
                  "shape_said": "square"}).to_csv(folder / "eval/heldout_captions.csv")  # fmt: skip
    pd.DataFrame({"shard": "s", "key": keys, "bertscore_caption_post_ref": 0.9,
                  "mini_nll_caption_reference": nll, "mini_nll_caption_post": 0.1}).to_csv(
        folder / "eval/scored/s.csv")  # fmt: skip
    # score_captions also writes a summary table beside the per-shard ones: not images
    pd.DataFrame({"score": ["mini_nll_caption_post"], "mean": [0.1]}).to_csv(
        folder / "eval/scored/summary.csv", index=False)  # fmt: skip
    held = {"n": len(nll), "colour": {"majority_baseline": 0.2},
            "shape": {"majority_baseline": 0.3}}  # fmt: skip
    (folder / "config.json").write_text(json.dumps({"training": {"heldout": held}}))


def test_compare_connectors_paired_difference_by_hand(tmp_path):
    import pandas as pd

    from src.eval import compare_connectors
    from src.reporting.kernel_figures import kernel_connectors_plot

    _connector_eval(tmp_path / "orig", [True, False, False, True], [1.0, 2.0, 3.0, 4.0])
    _connector_eval(tmp_path / "kern", [True, True, False, True], [0.5, 2.5, 2.0, 3.0])
    _connector_eval(tmp_path / "pre", [False, False, False, True], [2.0, 2.0, 3.0, 5.0])
    out = tmp_path / "results" / "kernel_align"
    assert compare_connectors.main(["--connector", f"original={tmp_path / 'orig'}",
                                    "--connector", f"kernel={tmp_path / 'kern'}",
                                    "--connector", f"prefix8={tmp_path / 'pre'}",
                                    "--baseline", "original", "--out_dir", str(out),
                                    "--bootstrap", "200"]) == 0  # fmt: skip
    df = pd.read_csv(out / "connectors.csv").set_index(["connector", "metric"])
    assert df.loc[("original", "colour_accuracy"), "mean"] == pytest.approx(0.5)
    assert df.loc[("kernel", "colour_accuracy"), "mean"] == pytest.approx(0.75)
    d = df.loc[("kernel - original", "nll_reference_caption")]
    assert d["mean"] == pytest.approx((-0.5 + 0.5 - 1.0 - 1.0) / 4)
    assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert df.loc[("majority baseline", "shape_accuracy"), "mean"] == pytest.approx(0.3)
    assert df.loc[("prefix8 - original", "nll_reference_caption"), "mean"] == pytest.approx(0.5)
    plot = kernel_connectors_plot(tmp_path / "results")
    assert {"colour_accuracy", "nll_reference_caption"} <= set(plot.data["metric"])
    # every connector drawn, and each one's paired difference named in its panel's title
    assert {"original", "kernel", "prefix8", "prefix8 - original"} <= set(plot.data["connector"])
    titles = [ax.get_title() for ax in plot.figure.axes]
    assert all("Δ kernel" in t and "Δ prefix8" in t for t in titles)
