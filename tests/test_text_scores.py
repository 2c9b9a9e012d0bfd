"""Caption scores equal the reference packages on the same inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.metrics.text import BertScorer, ClipScorer


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIP with a real (word-level) tokenizer, saved like a hub model."""
    import transformers as tf

    from tests.tiny_vlms import tokenizer

    folder = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    from tokenizers.processors import TemplateProcessing

    tok = tokenizer(["<|startoftext|>", "<|endoftext|>"], eos="<|endoftext|>")
    bos, eos = (tok.convert_tokens_to_ids(t) for t in ("<|startoftext|>", "<|endoftext|>"))
    # like CLIP's tokenizer: every text starts and ends with its special tokens
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    cfg = tf.CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=len(tok), max_position_embeddings=12,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=28, patch_size=7),
        projection_dim=16,
    )  # fmt: skip
    tf.CLIPModel(cfg).save_pretrained(folder)
    proc = tf.CLIPProcessor(
        image_processor=tf.CLIPImageProcessor(size={"shortest_edge": 28},
                                              crop_size={"height": 28, "width": 28}),
        tokenizer=tok,
    )  # fmt: skip
    proc.save_pretrained(folder)
    return folder


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_clipscore_equals_torchmetrics(tiny_clip):
    from torchmetrics.multimodal import CLIPScore

    scorer = ClipScorer(str(tiny_clip))
    images, caps = _images(3), ["a red circle", "the blue square", "a picture of a circle"]
    ours = scorer(images, caps)
    assert (ours >= 0).all() and ours.shape == (3,)
    # torchmetrics clamps the batch mean; one pair at a time it is the per-pair definition
    for im, cap, mine in zip(images, caps, ours, strict=True):
        metric = CLIPScore(model_name_or_path=lambda: (scorer.model, scorer.processor))
        metric.update(torch.from_numpy(np.asarray(im)).permute(2, 0, 1), cap)
        torch.testing.assert_close(mine, metric.compute().cpu(), rtol=1e-5, atol=1e-4)


def test_long_captions_keep_the_end_token(tiny_clip):
    scorer = ClipScorer(str(tiny_clip))
    long = "a red circle " * 20
    short = scorer.truncate(long)
    ids = scorer.processor.tokenizer(short)["input_ids"]
    assert len(ids) <= scorer.max_len and ids[-1] == scorer.processor.tokenizer.eos_token_id
    assert scorer(_images(1), [long]).shape == (1,)  # no length error inside the model


def test_hessel_variant_is_scaled(tiny_clip):
    a = ClipScorer(str(tiny_clip), variant="hessel")(_images(2), ["a", "b"])
    assert (a <= 2.5).all()


def test_bertscore_equals_bert_score_package():
    import bert_score

    scorer = BertScorer()
    cands, refs = ["a red circle on the left", "a cat"], ["a red circle at the left", "a dog"]
    ours = scorer(cands, refs)
    p, _, f = bert_score.score(cands, refs, model_type=scorer.backbone, num_layers=6)
    torch.testing.assert_close(ours["bertscore_f1"], f)
    torch.testing.assert_close(ours["bertscore_p"], p)
    assert ours["bertscore_f1"][0] > ours["bertscore_f1"][1]  # paraphrase above mismatch
    assert scorer.describe()["bertscore_layer"] == 6
    with pytest.raises(ValueError):
        scorer(["a"], ["a", "b"])
    # Several references per caption (best match), and idf weighting, as the package does them.
    multi = [["a red disk at the left", "a red circle"], ["a dog", "a small cat"]]
    _, _, f = bert_score.score(cands, multi, model_type=scorer.backbone, num_layers=6)
    torch.testing.assert_close(scorer(cands, multi)["bertscore_f1"], f)
    _, _, f = bert_score.score(cands, refs, model_type=scorer.backbone, num_layers=6, idf=True)
    torch.testing.assert_close(BertScorer(idf=True)(cands, refs)["bertscore_f1"], f)


def test_bertscore_of_an_empty_caption_is_zero_and_the_rest_unchanged():
    scorer = BertScorer()
    cands = ["a red square on the left", "", "two blue circles"]
    refs = [["a red square"], ["a green star"], ["", "two blue circles in a row"]]
    got = scorer(cands, refs)["bertscore_f1"]
    assert got[1] == 0.0  # nothing in an empty caption matches
    alone = scorer([cands[0], cands[2]], [refs[0], [refs[2][1]]])["bertscore_f1"]
    assert got[[0, 2]].tolist() == pytest.approx(alone.tolist(), abs=1e-6)
