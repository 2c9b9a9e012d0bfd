"""The scoring speed-ups change no score beyond float rounding: the NLL under mini continued
from cached prefixes equals the full-sequence loss, and BERTScore computed in one call over
distinct pairs equals one call per column."""

from __future__ import annotations

import pandas as pd
import torch

from src.metrics.caption_tables import nll_scores, other_image_rows
from src.models.mini import PrefixStates

CAPTIONS = [
    "a small red circle at the top left.",
    "two large blue squares",
    "x",
    "a green star in the center and a small white triangle at the bottom right.",
]
# float rounding of attention over cached keys: measured up to 2e-6 relative (NLLs of 2-11)
# float32 over a 49k vocabulary: the cached-prefix and full-sequence paths sum in different
# orders; alone they agree to ~1e-6 relative, after other tests in one process up to 4.5e-5
# (measured). An off-by-one position or a wrong prefix moves the NLL by O(1).
NLL_TOL = {"rtol": 1e-4, "atol": 1e-4}


def tiny_table() -> tuple[pd.DataFrame, dict]:
    """3 images x 2 levels; repeated originals, one caption identical to its original."""
    torch.manual_seed(0)
    post = {("s", k): torch.randn(16, 576) * 0.13 for k in "abc"}
    df = pd.DataFrame({
        "shard": ["s"] * 6, "key": list("aabbcc"), "level": [0.5, 1.0] * 3,
        "caption_original": [CAPTIONS[0]] * 2 + [CAPTIONS[1]] * 2 + [CAPTIONS[3]] * 2,
        "caption": [CAPTIONS[0], CAPTIONS[2], CAPTIONS[3], CAPTIONS[1], CAPTIONS[0], ""],
    })  # fmt: skip
    return df, post


def test_caption_nll_from_cached_prefixes_equals_the_full_sequence_loss(mini_adapter):
    model = mini_adapter.model
    torch.manual_seed(1)
    post = torch.randn(3, 16, 576) * 0.13
    image = [0, 2, 1, 0, 2, 1, 1]
    caps = [CAPTIONS[i % 4] for i in range(len(image))]
    with torch.no_grad():
        want = model.caption_loss(post[image], caps)
        states = PrefixStates.cat([model.prefix_states(post[:2]), model.prefix_states(post[2:])])
        got = model.caption_nll(states, image, caps)
        # a batch whose captions are empty: only <|im_end|>, predicted by the prefix's last logit
        empty = model.caption_nll(states, [1, 0], ["", ""])
    torch.testing.assert_close(got, want, **NLL_TOL)
    torch.testing.assert_close(empty, model.caption_loss(post[[1, 0]], ["", ""]), **NLL_TOL)


def test_nll_scores_equal_one_full_sequence_per_row(mini_adapter):
    df, post = tiny_table()
    cols = ["caption", "caption_original"]
    # small batches and prefix groups, so that a group and a batch boundary both fall inside
    out = nll_scores(df.copy(), cols, post, mini_adapter, seed=0, batch_size=3, prefix_group=2)
    other = other_image_rows(df, 0)
    keys = list(zip(df["shard"], df["key"], strict=True))
    for col in cols:
        for suffix, image_of in (("", range(len(df))), ("_mismatched", other)):
            x = torch.stack([post[keys[j]] for j in image_of])
            with torch.no_grad():
                want = mini_adapter.model.caption_loss(x, [c or " " for c in df[col]])
            got = torch.tensor(out[f"mini_nll_{col}{suffix}"].tolist())
            torch.testing.assert_close(got, want, **NLL_TOL)


def test_bertscore_in_one_call_equals_one_call_per_column():
    from src.eval.score_perturb import bertscore_perturb
    from src.metrics.caption_tables import bertscore_columns
    from src.metrics.text import BertScorer, split_references

    bert = BertScorer()
    f1 = "bertscore_f1"
    cands, refs = [CAPTIONS[0], CAPTIONS[1], CAPTIONS[0]], [CAPTIONS[3], CAPTIONS[1], CAPTIONS[3]]
    multi = [[CAPTIONS[3], CAPTIONS[2]], [CAPTIONS[1]]]
    got = bert.many([(cands, refs), (cands[:2], multi), ([], [])])
    torch.testing.assert_close(got[0], bert(cands, refs)[f1], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1], bert(cands[:2], multi)[f1], rtol=0, atol=1e-6)
    assert got[2].shape == (0,)

    # score_perturb's columns: names, order, dtypes and values as one call per column gave them
    df, _ = tiny_table()
    df.loc[5, "caption"] = "a"  # bert-score 0.3.13 fails on an empty sentence (transformers 5)
    df["reference"] = [CAPTIONS[0]] * 2 + [""] * 2 + [f"{CAPTIONS[3]} | {CAPTIONS[1]}"] * 2
    want = df.copy()
    want["bertscore_vs_original"] = bert(df["caption"].tolist(), df["caption_original"].tolist())[
        f1
    ]
    other = other_image_rows(df, 0)
    want["bertscore_vs_original_mismatched"] = bert(
        df["caption_original"].tolist(), df["caption_original"].iloc[other].tolist()
    )[f1]
    refs_of = df["reference"].map(split_references)
    rows = refs_of.map(bool).to_numpy().nonzero()[0]
    other_rows = rows[other_image_rows(df.iloc[rows], 0)]
    for name, image_rows in (("ref", rows), ("ref_mismatched", other_rows)):
        col = f"bertscore_caption_{name}"
        want[col] = float("nan")
        scores = bert(df["caption"].iloc[rows].tolist(), refs_of.iloc[image_rows].tolist())[f1]
        want.loc[want.index[rows], col] = scores.numpy()
    got = bertscore_perturb(df.copy(), bert, 0)
    assert list(got.columns) == list(want.columns) and (got.dtypes == want.dtypes).all()
    pd.testing.assert_frame_equal(got, want, rtol=0, atol=1e-6)

    # eval_captions' columns: post and recon against references, recon against post
    caps = df.rename(columns={"caption": "caption_post", "caption_original": "caption_recon"})
    got = bertscore_columns(caps.copy(), bert, 0)
    assert got.columns[-1] == "bertscore_recon_vs_post" and got.dtypes.iloc[-1] == "float32"
    recon = bert(caps["caption_recon"].tolist(), caps["caption_post"].tolist())[f1]
    torch.testing.assert_close(torch.tensor(got["bertscore_recon_vs_post"].to_numpy()), recon,
                               rtol=0, atol=1e-6)  # fmt: skip
