"""mini's greedy loop (finished captions leave the batch) gives transformers' generate's
captions, and captioning several variants in one batch gives what one batch each gave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.sample import make_scene, render_scene
from src.models.base import DEFAULT_PROMPT


@pytest.fixture(scope="module")
def trained_mini():
    """The committed connector: its captions end at different lengths, unlike a random one's."""
    from src.models import load_adapter

    adapter = load_adapter("mini")
    images = [render_scene(make_scene(np.random.default_rng([3, i]))) for i in range(5)]
    post = torch.stack(adapter.encode(adapter.preprocessor(images)).post)
    return adapter, post


def transformers_generate(model, post: torch.Tensor, max_new_tokens: int) -> list[str]:
    """ComposedVLM.generate as it was before its own loop."""
    embeds = model.embed_prompt(post, DEFAULT_PROMPT)
    out = model.lm.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=model.eos_id,
        pad_token_id=model.eos_id,
    )
    return [t.strip() for t in model.tokenizer.batch_decode(out, skip_special_tokens=True)]


def test_greedy_loop_equals_transformers_generate(trained_mini):
    adapter, post = trained_mini
    post = torch.cat([post, post[:1] * 0])  # a row of zeros rambles on: rows end apart
    with torch.inference_mode():
        ours = adapter.model.generate(post, DEFAULT_PROMPT, 24)
        want = transformers_generate(adapter.model, post, 24)
        tokens = [len(adapter.model.tokenizer(c)["input_ids"]) for c in ours]
        assert adapter.model.generate(post, DEFAULT_PROMPT, 0) == [""] * len(post)
    assert ours == want
    assert max(tokens) > min(tokens) + 3  # some captions ended while others went on


def test_variants_in_one_batch_equal_one_batch_each(trained_mini):
    from src.models.perturb import perturb

    adapter, post = trained_mini
    keys = [f"k{i}" for i in range(len(post))]
    masked = torch.stack([perturb(p, "mask", 0.5, k) for k, p in zip(keys, post, strict=True)])
    with torch.inference_mode():
        joint = adapter.generate({}, [*post, *masked], max_new_tokens=16)
        apart = adapter.generate({}, list(post), max_new_tokens=16)
        apart += adapter.generate({}, list(masked), max_new_tokens=16)
    assert joint == apart
