"""Caption stages on the real `mini` parts (random connector) and a few noise images."""

from __future__ import annotations

import pandas as pd
import pytest

from src.data.images import list_images, load_image
from src.eval import eval_captions, eval_perturb
from src.extract import extract_vectors
from src.metrics.caption_tables import other_image_rows
from src.metrics.text import BertScorer
from src.train import train_recon
from tests.conftest import write_noise_images


@pytest.fixture(scope="module")
def study(tmp_path_factory, random_connector_dir):
    root = tmp_path_factory.mktemp("captions")
    write_noise_images(root / "images" / "s0", 20)
    assert extract_vectors.main([
        "--root", str(root / "images"), "--out_dir", str(root / "vec"), "--model_id",
        f"mini={random_connector_dir}", "--num_workers", "0", "--no_progress",
    ]) == 0  # fmt: skip
    assert train_recon.main([
        "--vec_dir", str(root / "vec" / "mini"), "--embed_model", "mini", "--out_dir",
        str(root / "recon"), "--normalize", "--epochs", "1", "--hidden_size", "32",
        "--val_fraction", "0.2", "--no_progress",
    ]) == 0  # fmt: skip
    return root


def test_captions_from_stored_post_equal_the_models_own(study, mini_adapter, random_connector_dir):
    out = study / "caps"
    assert eval_captions.main([
        "--vec_dir", str(study / "vec" / "mini"), "--image_dir", str(study / "images"),
        "--embed_model", "mini", "--vlm_id", str(random_connector_dir), "--model_path",
        str(study / "recon"), "--compare_post_vs_recon", "--out_dir", str(out),
        "--shard_limit", "5", "--max_new_tokens", "6", "--batch_size", "2", "--no_progress",
        "--with_bertscore",
    ]) == 0  # fmt: skip
    df = pd.read_csv(out / "s0.csv", keep_default_na=False)
    assert list(df.columns)[:5] == ["shard", "key", "reference", "caption_post", "caption_recon"]
    assert {"bertscore_caption_post_ref", "bertscore_recon_vs_post"} <= set(df.columns)
    assert len(df) == 5 and df.reference.iloc[0] == "noise picture number 0"
    recs = list_images(study / "images", "s0")[:5]
    inputs = mini_adapter.preprocessor([load_image(r).image for r in recs], "Describe the image.")
    assert df.caption_post.tolist() == mini_adapter.generate(inputs, max_new_tokens=6)


def test_perturbation_levels(study, random_connector_dir):
    argv = [
        "--vec_dir", str(study / "vec" / "mini"), "--image_dir", str(study / "images"),
        "--model_name", "mini", "--vlm_id", str(random_connector_dir), "--mode", "mask",
        "--limit", "4", "--max_new_tokens", "5", "--no_progress", "--level", "0", "1",
    ]  # fmt: skip
    assert eval_perturb.main([*argv, "--out_dir", str(study / "p1")]) == 0
    assert eval_perturb.main([*argv, "--out_dir", str(study / "p2")]) == 0
    a = pd.read_csv(study / "p1" / "mini" / "mask" / "s0.csv", keep_default_na=False)
    b = pd.read_csv(study / "p2" / "mini" / "mask" / "s0.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(a, b)  # seeded by key: the same captions every run
    assert sorted(a.level.unique()) == [0.0, 1.0] and len(a) == 8
    zero = a[a.level == 0.0]
    assert (zero.caption == zero.caption_original).all()  # level 0 is the identity
    assert eval_perturb.main([*argv[:-3], "--level", "1.5", "--out_dir", str(study / "p3")]) == 2


def test_compare_needs_a_reconstructor(study, capsys):
    assert eval_captions.main([
        "--vec_dir", str(study / "vec" / "mini"), "--image_dir", str(study / "images"),
        "--embed_model", "mini", "--compare_post_vs_recon", "--out_dir", str(study / "x"),
    ]) == 2  # fmt: skip
    assert "--model_path" in capsys.readouterr().err


def test_scoring_stages(study, random_connector_dir, capsys):
    from src.eval import score_captions, score_perturb

    caps = study / "caps2"
    assert eval_captions.main([
        "--vec_dir", str(study / "vec" / "mini"), "--image_dir", str(study / "images"),
        "--embed_model", "mini", "--vlm_id", str(random_connector_dir), "--model_path",
        str(study / "recon"), "--compare_post_vs_recon", "--out_dir", str(caps),
        "--shard_limit", "4", "--max_new_tokens", "4", "--no_progress",
    ]) == 0  # fmt: skip
    table = pd.read_csv(caps / "s0.csv", keep_default_na=False)
    table.loc[0, "reference"] = ""  # an image without reference caption
    table.to_csv(caps / "s0.csv", index=False)
    assert score_captions.main(["--caption_dir", str(caps), "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "1 image(s) without reference caption" in out and "no CLIPScore" in out
    scored = pd.read_csv(caps / "scored" / "s0.csv")
    assert scored.bertscore_caption_post_ref.isna().tolist() == [True, False, False, False]
    assert scored.bertscore_recon_vs_post.between(0, 1.0001).all()
    summary = pd.read_csv(caps / "scored" / "summary.csv")
    assert set(summary.score) >= {"bertscore_caption_post_ref", "bertscore_recon_vs_post",
                                  "bertscore_caption_post_ref_mismatched"}  # fmt: skip
    # The chance column scores each caption against another image's references.
    has = scored.reference.notna().to_numpy().nonzero()[0]
    other = has[other_image_rows(scored.iloc[has], seed=0)]
    assert (scored.key.iloc[has].to_numpy() != scored.key.iloc[other].to_numpy()).all()
    want = BertScorer()(scored.caption_post.iloc[has].fillna("").tolist(),
                        [[r] for r in scored.reference.iloc[other]])["bertscore_f1"]  # fmt: skip
    got = scored.bertscore_caption_post_ref_mismatched.iloc[has].to_numpy()
    assert got == pytest.approx(want.numpy(), abs=1e-5)

    pert = study / "p_score"
    assert eval_perturb.main([
        "--vec_dir", str(study / "vec" / "mini"), "--image_dir", str(study / "images"),
        "--model_name", "mini", "--vlm_id", str(random_connector_dir), "--mode", "lowrank",
        "--level", "1", "0", "--limit", "3", "--max_new_tokens", "4", "--no_progress",
        "--out_dir", str(pert),
    ]) == 0  # fmt: skip
    assert (
        score_perturb.main(
            ["--perturb_dir", str(pert), "--out_dir", str(pert / "scored"), "--bootstrap", "50"]
        )
        == 0
    )
    s = pd.read_csv(pert / "scored" / "summary.csv")
    full = s[(s.level == 1.0) & (s.score == "bertscore_vs_original")].iloc[0]
    assert full["mean"] == pytest.approx(1.0, abs=1e-4)  # full rank: the original caption
    changed = s[(s.level == 1.0) & (s.score == "caption_changed")].iloc[0]
    assert changed["mean"] == 0.0
    # Chance level: two different images' clean captions, never an image with itself although
    # every image has a row per level.
    rows = pd.read_csv(pert / "scored" / "mini" / "lowrank" / "s0.csv", keep_default_na=False)
    other = other_image_rows(rows, seed=0)
    assert (rows.key.to_numpy() != rows.key.to_numpy()[other]).all()
    want = BertScorer()(rows.caption_original.tolist(),
                        rows.caption_original.iloc[other].tolist())["bertscore_f1"]  # fmt: skip
    assert rows.bertscore_vs_original_mismatched.to_numpy() == pytest.approx(want.numpy(),
                                                                             abs=1e-5)  # fmt: skip


def test_offline_image_text_score_is_mini_caption_nll(study, random_connector_dir):
    """score_captions --nll_vec_dir: the caption's NLL under mini given the stored E_post."""
    import torch

    from src.data.vectors import iter_chunks
    from src.eval import score_captions
    from src.models import load_adapter

    caps = study / "caps_nll"
    assert eval_captions.main([
        "--vec_dir", str(study / "vec" / "mini"), "--image_dir", str(study / "images"),
        "--embed_model", "mini", "--vlm_id", str(random_connector_dir), "--out_dir", str(caps),
        "--shard_limit", "3", "--max_new_tokens", "4", "--no_progress",
    ]) == 0  # fmt: skip
    assert score_captions.main([
        "--caption_dir", str(caps), "--nll_vec_dir", str(study / "vec" / "mini"),
        "--nll_model", str(random_connector_dir), "--bootstrap", "20",
    ]) == 0  # fmt: skip
    scored = pd.read_csv(caps / "scored" / "s0.csv", keep_default_na=False)
    adapter = load_adapter("mini", str(random_connector_dir))
    _, chunk = next(iter_chunks(study / "vec" / "mini" / "s0", "post"))
    post = torch.stack(chunk.items()[:3])
    with torch.no_grad():
        want = adapter.model.caption_loss(post, scored.caption_post.tolist())
    torch.testing.assert_close(torch.tensor(scored.mini_nll_caption_post.tolist()), want,
                               rtol=1e-4, atol=1e-4)  # fmt: skip
    # Chance level: the same captions given other images' E_post.
    with torch.no_grad():
        mismatched = adapter.model.caption_loss(post[other_image_rows(scored, seed=0)],
                                                scored.caption_post.tolist())  # fmt: skip
    torch.testing.assert_close(torch.tensor(scored.mini_nll_caption_post_mismatched.tolist()),
                               mismatched, rtol=1e-4, atol=1e-4)  # fmt: skip
