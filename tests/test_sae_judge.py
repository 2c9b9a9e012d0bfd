"""Seed C's judge (src/sae/judge.py): the YES/NO reading of a tiny random Llama against a plain
one-prompt-at-a-time computation, the random baseline's draws, and the per-layer table."""

from __future__ import annotations

import copy

import pytest
import torch

from src.errors import UserError
from src.metrics.stats import derangement
from src.sae.judge import (
    Shown,
    TextLMJudge,
    answer_ids,
    chat_text,
    judge_rows,
    question,
    random_features,
)
from tests.tiny_vlms import save_judge_lm


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("judge") / "llama"
    save_judge_lm(folder)
    return folder


def test_yes_no_reading_matches_a_plain_forward(tiny_lm):
    judge = TextLMJudge(str(tiny_lm), torch.device("cpu"), torch.float32, batch_size=3)
    assert judge.shown == "reference caption"
    yes, no = judge.yes, judge.no
    assert judge.tok.convert_ids_to_tokens(yes + no) == ["YES", "NO"]
    words = ["red", "blue circle", "a green square image", "circle", "red red red red red"]
    shown = [Shown(c) for c in ("a red circle", "a blue square", "green", "a circle", "red")]
    got = judge.p_yes(words, shown)  # batches of 3 of different lengths: left padding
    ref = []
    for w, s in zip(words, shown, strict=True):
        # no chat template: a plain document
        text = f"{question(w, s.caption, ('YES', 'NO'))}\nAnswer:"
        ids = torch.tensor([judge.tok.encode(text, add_special_tokens=False)])
        p = judge.lm(ids).logits[0, -1].softmax(-1)
        ref.append(p[yes].sum() / (p[yes].sum() + p[no].sum()))
    torch.testing.assert_close(got, torch.stack(ref), atol=1e-5, rtol=1e-5)
    assert got.std() > 0  # the answers depend on the prompt
    torch.testing.assert_close(judge.p_yes(words, shown), got)  # deterministic


def test_answer_tokens_and_chat_prompt(tiny_lm):
    tok = copy.deepcopy(TextLMJudge(str(tiny_lm), torch.device("cpu"), torch.float32).tok)
    with pytest.raises(UserError, match="none of the answer pairs"):
        answer_ids(tok, (("MAYBE", "NO"),))  # <unk>: not a word of the vocabulary
    with pytest.raises(UserError, match="none of the answer pairs"):
        answer_ids(tok, (("red circle", "blue"),))  # two tokens
    pair, yes, no = answer_ids(tok, (("Yes", "No"), ("YES", "NO")))  # the first kept whole
    assert pair == ("YES", "NO") and tok.convert_ids_to_tokens(yes + no) == ["YES", "NO"]
    tok.chat_template = "{% for m in messages %}USER: {{ m['content'] }}{% endfor %} ASSISTANT:"
    assert chat_text(tok, "is it red?") == "USER: is it red? ASSISTANT:"


def test_random_baseline_draws_alive_features_seeded():
    alive = torch.zeros(50, dtype=torch.bool)
    alive[[1, 4, 9, 16, 25, 36, 49]] = True
    a = random_features(alive, 20, 4, seed=3)
    assert a.shape == (20, 4) and alive[a].all()
    assert all(row.unique().numel() == 4 for row in a)  # without replacement per image
    assert torch.equal(a, random_features(alive, 20, 4, seed=3))
    assert not torch.equal(a, random_features(alive, 20, 4, seed=4))
    assert set(a.flatten().tolist()) == {1, 4, 9, 16, 25, 36, 49}  # all alive ones get drawn
    with pytest.raises(UserError, match="alive"):
        random_features(alive, 2, 8, seed=0)


class WordJudge:
    """YES when the description holds a word of the caption it is shown."""

    shown = "reference caption"

    def p_yes(self, words, shown):
        return torch.tensor([float(bool(set(w.split()) & set(s.caption.split())))
                             for w, s in zip(words, shown, strict=True)])  # fmt: skip


def test_judge_table_own_random_mismatched_with_cis():
    n, k, layer = 6, 2, 5
    alive = torch.zeros(10, dtype=torch.bool)
    alive[:8] = True
    top = [torch.tensor([i, (i + 1) % 8]) for i in range(n)]
    words = {layer: {f: f"w{f}" for f in range(10)}}
    shown = [Shown(f"a w{i} thing") for i in range(n)]  # each caption names its first feature
    other = derangement(n, 0).tolist()
    rows, per_image = judge_rows(WordJudge(), words, {layer: top}, {layer: alive}, shown, other,
                                 {"model": "m"}, n_boot=200, seed=0, progress=False)  # fmt: skip
    (row,) = rows
    assert row["own"] == pytest.approx(0.5)  # one of the two top features named, every image
    mism = [sum(f"w{int(f)}" in shown[other[i]].caption.split() for f in top[i]) / k
            for i in range(n)]  # fmt: skip
    assert row["mismatched"] == pytest.approx(sum(mism) / n)
    rand = random_features(alive, n, k, 0 + layer)
    exp = [sum(int(f) == i for f in rand[i]) / k for i in range(n)]
    assert row["random"] == pytest.approx(sum(exp) / n)
    assert [r["random"] for r in per_image] == pytest.approx(exp)
    for name in ("own", "random", "mismatched", "own_minus_random", "own_minus_mismatched"):
        assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"]
    assert row["own_minus_random"] == pytest.approx(row["own"] - row["random"])
    assert row["own_p_yes"] == pytest.approx(row["own"])  # the word judge answers 0 or 1
    assert row["n_images"] == n and row["alive_features"] == 8 and row["features_per_image"] == k


def test_vlm_judge_reads_a_tiny_llava_as_one_image_at_a_time(tmp_path):
    from PIL import Image

    from src.sae.judge import VLMJudge
    from tests.tiny_vlms import save_llava

    save_llava(tmp_path / "llava")
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((torch.rand(28, 28, 3) * 255).byte().numpy()).save(paths[-1])
    # the tiny vocabulary has no YES / NO: two of its words stand in for them
    judge = VLMJudge(str(tmp_path / "llava"), torch.device("cpu"), torch.float32, batch_size=2,
                     answers=(("red", "blue"),))  # fmt: skip
    assert judge.shown == "image"
    words = ["red", "blue circle square", "a green square image"]
    got = judge.p_yes(words, [Shown("unused", p) for p in paths])
    ref = []
    for w, p in zip(words, paths, strict=True):
        content = [{"type": "image"}, {"type": "text", "text": question(w, None, ("red", "blue"))}]
        msgs = [{"role": "user", "content": content}]
        text = judge.proc.apply_chat_template(msgs, add_generation_prompt=True)
        enc = judge.proc(text=[text], images=[Image.open(p).convert("RGB")], return_tensors="pt")
        q = judge.model(**enc).logits[0, -1].softmax(-1)
        ref.append(q[judge.yes].sum() / (q[judge.yes].sum() + q[judge.no].sum()))
    torch.testing.assert_close(got, torch.stack(ref), atol=1e-5, rtol=1e-5)
    with pytest.raises(UserError, match="image_dir"):
        judge.p_yes(["red"], [Shown("a red circle")])
