"""Gemma 3 270M as an offline LM: the cached de-quantised copy equals the GGUF-loaded model;
prompt embeddings built our way equal Gemma's own (its embedding scales by sqrt(640) inside);
the base-model prompt layout puts the image tokens where expected."""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from src.errors import UserError
from src.models.connector import ConnectorConfig, MLPConnector
from src.models.mini import ComposedVLM
from src.models.towers import (
    CHATML,
    GEMMA3,
    GEMMA_BASE,
    SMOLLM2,
    convert_gemma3,
    gemma3_cache_dir,
    load_causal_lm,
    prompt_layout,
)

CPU = torch.device("cpu")
PROMPT = "Describe the image."


@dataclass
class Gemma:
    reference: Any  # as transformers loads it from the GGUF file
    ref_tok: Any
    lm: Any  # through load_causal_lm, from the de-quantised cache
    tok: Any
    cache: Path


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gemma]:
    """Builds the cache in a temp folder: the GGUF is parsed once for the whole module (1.5-3.5
    min on 2 busy cores; transformers parses it for the tokenizer and again for the model)."""
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BRIDGESCOPE_CACHE", str(root))
        folder = gemma3_cache_dir()
        reference, ref_tok = convert_gemma3(folder)
        lm, tok = load_causal_lm(GEMMA3, CPU, torch.float32)
    yield Gemma(reference, ref_tok, lm, tok, folder)
    shutil.rmtree(root, ignore_errors=True)  # 1.1 GB; pytest keeps its last three temp trees


def composed(gemma: Gemma) -> ComposedVLM:
    """Gemma behind a placeholder vision tower and connector: the tests feed `post` directly."""
    connector = MLPConnector(ConnectorConfig(in_dim=8, out_dim=640, hidden_dim=8, lm=GEMMA3))
    return ComposedVLM(torch.nn.Identity(), connector, gemma.lm, gemma.tok, prompt_layout(GEMMA3))


def test_cached_gemma_equals_the_gguf_model(gemma: Gemma) -> None:
    lm, ref, tok = gemma.lm, gemma.reference, gemma.tok
    cfg = lm.config
    assert type(lm).__name__ == "Gemma3ForCausalLM"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size) == (640, 18, 262_144)
    assert not hasattr(cfg, "quantization_config")
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()  # tied
    assert tok.chat_template is None  # a base model
    # embed_scale is a non-persistent buffer, rebuilt at load: it must not come back as 1
    assert lm.get_input_embeddings().embed_scale.item() == pytest.approx(math.sqrt(640))
    texts = ["The capital of France is", "<bos>a red circle\n<eos>", "Zwei kleine Würfel, 3 Kreise"]
    for text in texts:
        assert tok(text)["input_ids"] == gemma.ref_tok(text)["input_ids"]
    batch = [tok(t, return_tensors="pt")["input_ids"] for t in texts[::2]]
    with torch.no_grad():
        for ids in batch:
            torch.testing.assert_close(lm(ids).logits, ref(ids).logits, rtol=0, atol=1e-4)
            greedy = {"max_new_tokens": 12, "do_sample": False}
            assert torch.equal(lm.generate(ids, **greedy), ref.generate(ids, **greedy))
    assert any(p.name == "model.safetensors" for p in gemma.cache.iterdir())


def test_prompt_embeddings_equal_gemmas_own(gemma: Gemma) -> None:
    """A text-only 'image' (token embeddings as post): logits, caption loss and greedy output
    from our inputs_embeds equal Gemma's from the same token ids."""
    model, tok, lm = composed(gemma), gemma.tok, gemma.lm
    emb = lm.get_input_embeddings()
    image = tok("a photo of two red squares", add_special_tokens=False)["input_ids"]
    caption = "two red squares"
    before, after = model._prompt_ids(PROMPT)
    cap = tok(caption, add_special_tokens=False)["input_ids"] + [model.eos_id]
    prefix = before.tolist() + image + after.tolist()
    ids = torch.tensor([prefix])
    with torch.no_grad():
        # the trap: the module scales, its weight does not; RMS ~1.0 (SmolLM2's: ~0.14)
        post = emb(torch.tensor([image]))  # (1, T, 640)
        torch.testing.assert_close(post, emb.weight[torch.tensor([image])] * math.sqrt(640))
        assert 0.5 < post.pow(2).mean().sqrt().item() < 2.0
        embeds = model.embed_prompt(post, PROMPT)
        torch.testing.assert_close(
            lm(inputs_embeds=embeds).logits, lm(input_ids=ids).logits, rtol=0, atol=1e-4
        )
        full = torch.tensor([prefix + cap])
        labels = full.clone()
        labels[0, : len(prefix)] = -100
        want = lm(input_ids=full, labels=labels).loss
        ours_loss = model.caption_loss(post, [caption], PROMPT)[0]
        torch.testing.assert_close(ours_loss, want, rtol=1e-5, atol=1e-5)
        ours = model.generate(post, PROMPT, max_new_tokens=8)
        theirs = lm.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=model.eos_id)
    text = tok.decode(theirs[0, ids.shape[1] :], skip_special_tokens=True).strip()
    assert ours == [text]


def test_layouts_put_image_tokens_where_expected(gemma: Gemma) -> None:
    model, tok = composed(gemma), gemma.tok
    assert prompt_layout(GEMMA3) is GEMMA_BASE
    assert prompt_layout(SMOLLM2) is CHATML and prompt_layout("some/hub-lm") is CHATML
    before, after = model._prompt_ids(PROMPT)
    # <bos> first (inputs_embeds bypass the tokenizer, which would add it), then the image
    assert before.tolist() == [tok.bos_token_id] == [2]
    assert tok.decode(after) == f"\n{PROMPT}\n"
    assert model.eos_id == tok.eos_token_id == 1
    post = torch.randn(3, 5, 640)
    with torch.no_grad():
        embeds = model.embed_prompt(post, PROMPT)
        emb = gemma.lm.get_input_embeddings()
    assert embeds.shape == (3, 1 + 5 + len(after), 640)
    assert torch.equal(embeds[:, 1:6], post)
    assert torch.equal(embeds[:, 0], emb(before).expand(3, -1))
    assert torch.equal(embeds[:, 6:], emb(after).expand(3, -1, -1))


def test_a_layout_token_missing_from_the_vocabulary_is_an_error() -> None:
    """An LM without ChatML tokens and no layout of its own: refused, not <unk> as eos."""
    import transformers as tf

    from tests.tiny_vlms import TEXT, tokenizer

    tok = tokenizer([])
    lm = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=len(tok), **TEXT))
    connector = MLPConnector(ConnectorConfig(in_dim=8, out_dim=TEXT["hidden_size"], hidden_dim=8))
    with pytest.raises(UserError, match=re.escape("'<|im_end|>'")):
        ComposedVLM(torch.nn.Identity(), connector, lm, tok, CHATML)
