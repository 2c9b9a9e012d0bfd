"""Seed A's alignment suite: text embeddings against a plain reference on tiny random LLMs, each
seed defect reproduced beside our measure, retrieval on a hand-worked example, in-process stage
runs and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from src.data.paths import text_layer_dir
from src.data.vectors import Chunk, iter_chunks, save_chunk
from src.errors import UserError
from src.metrics import alignment as al
from src.metrics.measures import MEASURES, get_measure, measure
from src.metrics.retrieval import (
    chance_mrr,
    chance_recall,
    cosine_similarity,
    image_to_text_ranks,
    retrieval_metrics,
    text_to_image_ranks,
)
from src.metrics.similarity import linear_cka

WORDS = [
    "a",
    "the",
    "red",
    "green",
    "blue",
    "circle",
    "square",
    "image",
    "of",
    "is",
    "big",
    "small",
    "left",
    "right",
    "top",
]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<pad>", "</s>", "<s>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )


def _tiny_lm(family: str):
    import transformers as tf

    common = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    cfg = {
        "llama": lambda: (tf.LlamaConfig(**common), tf.LlamaForCausalLM),
        "qwen2": lambda: (tf.Qwen2Config(**common), tf.Qwen2ForCausalLM),
        "gemma3": lambda: (tf.Gemma3TextConfig(**common, head_dim=8), tf.Gemma3ForCausalLM),
    }[family]
    config, cls = cfg()
    torch.manual_seed(0)
    return cls(config).eval()


TEXTS = ["a red circle", "the big blue square of the image is left", "green", "a small top"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3"])
@pytest.mark.parametrize("pool", ["mean", "last"])
def test_text_embeddings_equal_a_plain_forward(family, pool):
    from src.models.text_embed import embed_texts, from_model

    lm, tok = _tiny_lm(family), _tokenizer()
    enc = from_model(family, lm, tok, "causal_lm")
    got = embed_texts(enc, TEXTS, [1, -1], pool, batch_size=3)  # sorted, padded batches
    for i, text in enumerate(TEXTS):
        ids = tok(text, return_tensors="pt")["input_ids"]  # "<s> ..." one text, no padding
        assert ids[0, 0] == tok.bos_token_id
        hs = lm(input_ids=ids, output_hidden_states=True).hidden_states
        for layer, h in ((1, hs[1]), (-1, hs[-1])):
            own = h[0, 1:]  # BOS excluded
            ref = own.mean(0) if pool == "mean" else own[-1]
            torch.testing.assert_close(got[layer][i], ref, atol=2e-5, rtol=1e-4)


def _write_images(root: Path, types: dict[str, int], rng: np.random.Generator) -> None:
    for shard, n in types.items():
        (root / shard).mkdir(parents=True)
        for i in range(n):
            stem = root / shard / f"{shard}_{i:03d}"
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
                stem.with_suffix(".jpg")
            )
            words = rng.choice(WORDS, 5)
            stem.with_suffix(".txt").write_text(
                " ".join(words) + ("\n" + " ".join(words[::-1]) if i % 2 else "") + "\n"
            )
            stem.with_suffix(".json").write_text(json.dumps({"data_type": shard.rstrip("s")}))


def test_extract_text_stage_writes_the_layout(tmp_path, monkeypatch):
    from src.extract import extract_text
    from src.models import text_embed

    root = tmp_path / "images"
    _write_images(root, {"charts": 5, "tables": 3}, np.random.default_rng(0))
    (root / "tables" / "tables_002.txt").unlink()  # no caption: skipped, named
    lm, tok = _tiny_lm("llama"), _tokenizer()
    monkeypatch.setitem(
        text_embed.OFFLINE_TEXT,
        "tiny",
        lambda d, t: text_embed.from_model("tiny", lm, tok, "causal_lm"),
    )
    out = tmp_path / "text" / "tiny"
    argv = [
        "--root",
        str(root),
        "--out_dir",
        str(out),
        "--model",
        "tiny",
        "--layers",
        "2",
        "-1",
        "--batch_size",
        "2",
        "--save_every",
        "2",
        "--no_progress",
    ]
    assert extract_text.main(argv) == 0
    enc = text_embed.from_model("tiny", lm, tok, "causal_lm")
    folder = text_layer_dir(out, "mean", -1) / "charts"
    chunks = list(iter_chunks(folder, "text"))
    assert [i for i, _ in chunks] == [0, 1, 2]
    keys = [k for _, c in chunks for k in c.keys]
    assert keys == [f"charts_{i:03d}" for i in range(5)]
    items = [t for _, c in chunks for t in c.items()]
    assert [t.shape[0] for t in items] == [1, 2, 1, 2, 1]  # one row per caption line
    caps = (root / "charts" / "charts_001.txt").read_text().split("\n")[:2]
    torch.testing.assert_close(items[1], embed_texts_ref(enc, caps), atol=1e-5, rtol=1e-4)
    m = json.loads((folder / "manifest.json").read_text())
    assert m["layer"] == -1 and m["layer_index"] == 3 and "excluded" in m["pool_note"]
    tm = json.loads((text_layer_dir(out, "mean", -1) / "tables" / "manifest.json").read_text())
    assert tm["n_skipped"] == 1 and "tables_002: no caption" in tm["skipped"][0]
    assert extract_text.main([*argv, "--skip_existing"]) == 0  # complete: nothing to do


def embed_texts_ref(enc, texts):
    from src.models.text_embed import embed_texts

    return embed_texts(enc, texts, [-1], "mean", batch_size=1)[-1]


# ---- the seed's defects beside our measures -------------------------------------------------


def test_biased_cka_of_independent_data_is_high_at_n30_unbiased_is_not():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 768, generator=g), torch.randn(30, 4096, generator=g)
    biased, unbiased = linear_cka(x, y), linear_cka(x, y, unbiased=True)
    assert biased > 0.9  # the seed's estimator: "aligned" independent noise
    assert abs(unbiased) < 0.05


def test_seed_coral_similarity_is_one_for_unrelated_pairs_ours_tells_them_apart():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(120, 8, generator=g, dtype=torch.float64)
    x = z @ torch.randn(8, 200, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        120, 200, generator=g, dtype=torch.float64
    )
    y = z @ torch.randn(8, 96, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        120, 96, generator=g, dtype=torch.float64
    )
    noise = torch.randn(120, 96, generator=g, dtype=torch.float64)
    assert al.coral_seed(x, noise).similarity > 0.999  # unrelated, "aligned"
    assert al.coral_seed(x, y).similarity > 0.999  # related: the same number
    tr, te = slice(0, 60), slice(60, 120)
    related = al.coral_test(x[tr], y[tr], x[te], y[te], dim=8, n_perm=30)
    unrelated = al.coral_test(x[tr], noise[tr], x[te], noise[te], dim=8, n_perm=30)
    assert related.p_value < 0.05 and related.distance < float(related.null.min())
    assert unrelated.p_value > 0.05
    assert related.similarity > 0.5 > unrelated.similarity


@pytest.mark.parametrize("n_train", [40, 300])  # dual (N <= Dx) and primal ridge forms
def test_coral_null_equals_refitting_each_shuffled_pairing(n_train):
    """The null shares one ridge factorisation across shuffles; a plain refit of the whole basis
    on x_tr[perm] per permutation (same generator) gives the same distances."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n_train + 50, 64, generator=g, dtype=torch.float64)
    y = x[:, :16] @ torch.randn(16, 24, generator=g, dtype=torch.float64)
    y = y + torch.randn(n_train + 50, 24, generator=g, dtype=torch.float64)
    x_tr, y_tr, x_te, y_te = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
    test = al.coral_test(x_tr, y_tr, x_te, y_te, dim=8, n_perm=12, seed=3)
    gen = torch.Generator().manual_seed(3)
    plain = [al.coral_in_basis(al.fit_basis(x_tr[torch.randperm(n_train, generator=gen)], y_tr,
                                            8), x_te, y_te) for _ in range(12)]  # fmt: skip
    assert test.null.tolist() == pytest.approx(plain, rel=1e-9)
    assert test.distance == pytest.approx(
        al.coral_in_basis(al.fit_basis(x_tr, y_tr, 8), x_te, y_te), rel=1e-12
    )


def test_seed_elas_saturates_for_unrelated_unit_vectors_ours_is_near_zero():
    g = torch.Generator().manual_seed(0)
    unit = lambda n: torch.nn.functional.normalize(  # noqa: E731
        torch.randn(n, 4096, generator=g, dtype=torch.float64), dim=-1
    )
    pred, y = unit(40), unit(40)  # a projector's output unrelated to the text
    mse = float((pred - y).square().mean())  # per element: ~2/D
    assert mse < 1e-3
    cka_train = linear_cka(pred, y)  # biased, n=40 in 4096-d: high for noise
    cos = float(torch.nn.functional.cosine_similarity(pred, y).mean())
    seed = al.elas_seed(cka_train, mse, mse, cos)
    assert seed > 0.7  # 0.3 + 0.2 from the MSE terms alone, plus the inflated CKA
    ours = al.elas_ours(
        cka_u=linear_cka(pred, y, unbiased=True),
        r2_test=al.r2_score(pred, y),
        r2_train=0.9,
        gap=al.cos_gap(pred, y),
    )
    assert ours < 0.05


def test_in_sample_retrieval_is_inflated_held_out_is_at_chance():
    from src.align.projectors import fit_projector

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 300, generator=g), torch.randn(80, 64, generator=g)  # unrelated
    owner = torch.arange(40)
    proj = fit_projector("linear", x[:40], y[:40], alpha=1e-3)
    r1 = {
        r["direction"]: r
        for r in retrieval_metrics(proj(x[:40]), proj.target(y[:40]), owner)
        if r["metric"] == "R@1"
    }
    assert r1["text_to_image"]["value"] > 0.9  # the seed's protocol: train = test
    held = [
        r
        for r in retrieval_metrics(proj(x[40:]), proj.target(y[40:]), owner)
        if r["metric"] == "R@5"
    ]
    assert all(r["value"] < 0.35 for r in held)  # chance 0.125


# ---- retrieval by hand ----------------------------------------------------------------------


def test_retrieval_and_mrr_match_a_hand_worked_example():
    s = 1 / math.sqrt(2)
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]])
    cap = torch.tensor([[1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    owner = torch.tensor([0, 0, 1, 2, 2])  # images 0 and 2 have two captions each
    # image 0: own c0 first; image 1: c1 (image 0's) beats its c2; image 2: own c3 first
    assert image_to_text_ranks(cosine_similarity(cap, img), owner).tolist() == [1, 2, 1]
    # c1 = (0, 1) finds image 0 third; c4 = (-1, 0) finds image 2 behind image 1 (cos 0)
    assert text_to_image_ranks(cosine_similarity(cap, img), owner).tolist() == [1, 3, 1, 1, 2]
    rows = {(r["direction"], r["metric"]): r for r in retrieval_metrics(img, cap, owner, ks=(1, 2))}
    assert rows["image_to_text", "R@1"]["value"] == pytest.approx(2 / 3)
    assert rows["image_to_text", "R@2"]["value"] == pytest.approx(1.0)
    assert rows["image_to_text", "MRR"]["value"] == pytest.approx(5 / 6)
    assert rows["text_to_image", "R@1"]["value"] == pytest.approx(3 / 5)
    assert rows["text_to_image", "MRR"]["value"] == pytest.approx((1 + 1 / 3 + 1 + 1 + 1 / 2) / 5)
    # chance: 2 of 5 captions -> 2/5 at k=1; the mean over images (2, 1, 2 captions) is 1/3
    assert rows["image_to_text", "R@1"]["chance"] == pytest.approx(1 / 3)
    assert chance_recall(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert chance_mrr(3, 1) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # ties count against the query: a constant scorer ranks last
    constant = cosine_similarity(torch.ones(5, 2), torch.ones(3, 2))
    assert image_to_text_ranks(constant, owner).tolist() == [4, 5, 4]


def test_measure_registry_looks_up_the_existing_functions():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(40, 12, generator=g), torch.randn(40, 7, generator=g)
    assert measure("cka_linear", x, y) == linear_cka(x, y)
    assert measure("cka_linear_unbiased", x, y) == linear_cka(x, y, unbiased=True)
    for name, m in MEASURES.items():
        v = m.fn(x, y)
        assert math.isfinite(v), name
    with pytest.raises(UserError, match="unknown measure"):
        get_measure("nope")


# ---- the stages, in process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def suite_data(tmp_path_factory):
    """Images with labels and captions; two vision spaces (one related to the text, one not);
    one text space with 1-2 captions per image, as extract_text writes them."""
    tmp = tmp_path_factory.mktemp("suite")
    rng = np.random.default_rng(0)
    types = {"charts": 24, "tables": 24, "scenes": 24}
    _write_images(tmp / "images", types, rng)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 40, generator=g), torch.randn(6, 24, generator=g)
    for shard, n in types.items():
        z = torch.randn(n, 6, generator=g) + 2 * torch.randn(1, 6, generator=g)  # type offset
        keys = [f"{shard}_{i:03d}" for i in range(n)]
        good = z @ a + 0.3 * torch.randn(n, 40, generator=g)
        bad = torch.randn(n, 40, generator=g)
        caps = [z[i] @ b + 0.3 * torch.randn(1 + i % 2, 24, generator=g) for i in range(n)]
        for name, rows in (("good", good), ("bad", bad)):
            d = tmp / "vision" / name / shard
            d.mkdir(parents=True)
            save_chunk(d, "ref", 0, Chunk.from_items(keys, list(rows.unsqueeze(1)), []))
            (d / "manifest.json").write_text(json.dumps({"reference": name}))
        d = text_layer_dir(tmp / "text" / "lm", "mean", -1) / shard
        d.mkdir(parents=True)
        save_chunk(d, "text", 0, Chunk.from_items(keys, caps, []))
        (d / "manifest.json").write_text(json.dumps({"text_model": "lm", "layer": -1}))
    spaces = [
        "--vision",
        f"good:ref:{tmp / 'vision' / 'good'}",
        "--vision",
        f"bad:ref:{tmp / 'vision' / 'bad'}",
        "--text",
        f"lm:{tmp / 'text' / 'lm'}",
        "--root",
        str(tmp / "images"),
        "--no_progress",
    ]
    return tmp, spaces


def test_compare_stage_gives_the_matrix_with_cis_and_nulls(suite_data):
    from src.eval import align_compare

    tmp, spaces = suite_data
    out = tmp / "out" / "compare"
    assert (
        align_compare.main(
            [*spaces, "--out_dir", str(out), "--bootstrap", "50", "--permutations", "50"]
        )
        == 0
    )
    df = pd.read_csv(out / "cka.csv")
    assert set(df.data_type) == {"all", "chart", "table", "scene"}
    assert set(df.measure) == {"cka_linear", "cka_linear_unbiased", "cka_rbf"}
    u = df[(df.measure == "cka_linear_unbiased") & (df.data_type == "all")].set_index("encoder")
    assert u.loc["good", "p_value"] < 0.05 < u.loc["bad", "p_value"]
    assert u.loc["good", "ci_low"] < u.loc["good", "value"] < u.loc["good", "ci_high"]
    assert abs(u.loc["bad", "value"]) < 0.1
    assert json.loads((out / "manifest.json").read_text())["inputs"]["text"]["lm@mean_L-1"]


def test_coral_and_scores_stages(suite_data):
    from src.eval import align_coral, align_scores

    tmp, spaces = suite_data
    assert (
        align_coral.main(
            [*spaces, "--out_dir", str(tmp / "coral"), "--dim", "6", "--permutations", "30"]
        )
        == 0
    )
    df = pd.read_csv(tmp / "coral" / "coral.csv").set_index(["encoder", "method"])
    assert df.loc[("good", "coral"), "p_value"] < 0.05 < df.loc[("bad", "coral"), "p_value"]
    assert df.loc[("bad", "coral_seed"), "similarity"] > 0.99  # the seed: ~1 for noise
    assert (
        align_scores.main(
            [
                *spaces,
                "--out_dir",
                str(tmp / "scores"),
                "--dim",
                "6",
                "--permutations",
                "20",
                "--bootstrap",
                "30",
            ]
        )
        == 0
    )
    s = pd.read_csv(tmp / "scores" / "scores.csv").set_index(["encoder", "score"])
    assert set(s.index.get_level_values("score")) == {"eas_seed", "elas_seed", "eas", "elas"}
    assert s.loc[("good", "elas"), "value"] > s.loc[("bad", "elas"), "value"] + 0.3
    assert s.loc[("bad", "elas"), "value"] < 0.15 < s.loc[("bad", "elas_seed"), "value"]
    assert s.loc[("good", "eas"), "ci_low"] <= s.loc[("good", "eas"), "value"]
    assert s[["value"]].dropna().apply(lambda v: (v >= 0) & (v <= 1)).all().all()


def test_e2e_stage_retrieval_and_correlation(suite_data):
    from src.eval import align_e2e

    tmp, spaces = suite_data
    out = tmp / "e2e"
    assert (
        align_e2e.main(
            [
                *spaces,
                "--out_dir",
                str(out),
                "--projectors",
                "linear,mlp",
                "--steps",
                "50",
                "--bootstrap",
                "50",
                "--permutations",
                "50",
            ]
        )
        == 0
    )
    r = pd.read_csv(out / "retrieval.csv")
    assert set(r.projector) == {"linear", "mlp"} and set(r.split) == {"held_out", "in_sample"}
    sel = r[
        (r.data_type == "all")
        & (r.metric == "R@5")
        & (r.split == "held_out")
        & (r.projector == "linear")
    ].set_index(["encoder", "direction"])
    assert (sel.loc["good", "value"] > 2 * sel.loc["good", "chance"]).all()
    c = pd.read_csv(out / "correlation.csv")
    assert set(c.cka) == {"cka_u", "cka_biased"} and (c.n_points >= 6).all()
    assert (c.ci_low <= c.rho).all() and (c.rho <= c.ci_high).all()


def test_cli_command_table(tmp_path, capsys):
    from src.align.__main__ import main

    root = tmp_path / "images"
    _write_images(root, {"charts": 3}, np.random.default_rng(0))
    assert main(["attention", "--data-root", str(root)]) == 2
    assert "attention needs --image" in capsys.readouterr().err
    from src.align.__main__ import get_args_parser
    from src.align.commands import COMMANDS, Plan

    # speed times what it can time alone: towers by id, causal LMs (not E_pre/E_post, not MiniLM)
    args = get_args_parser().parse_args(
        [
            "speed",
            "--encoders",
            "clip",
            "mini.pre",
            "efficientnet-lite0",
            "--llms",
            "qwen",
            "minilm",
        ]
    )
    plan = Plan(root, tmp_path / "w", tmp_path / "out", ["charts"], 3, "cpu", True, [-1])
    [(_, _, argv)] = COMMANDS["speed"][1](args, plan)
    i, j = argv.index("--encoders"), argv.index("--llms")
    assert argv[i + 1 : j] == ["openai/clip-vit-base-patch32", "efficientnet-lite0"]
    assert argv[j + 1] == "Qwen/Qwen2.5-7B" and argv[j + 2].startswith("--")
    # embedding extracts its vision spaces first, then maps them
    args = get_args_parser().parse_args(["embedding", "--encoders", "efficientnet-lite0"])
    steps = COMMANDS["embedding"][1](args, plan)
    assert [t for t, _, _ in steps] == ["vision efficientnet-lite0", "embedding maps"]
    space = steps[1][2][steps[1][2].index("--space") + 1]
    assert space == f"efficientnet-lite0={plan.vision_dir('efficientnet-lite0')}:ref"

    assert set(COMMANDS) == {
        "compare",
        "coral",
        "multi-llm",
        "speed",
        "attention",
        "embedding",
        "elas",
        "e2e",
        "all",
    }
