"""The LLM side of every adapter for the SAE stages, on tiny random models of each HF family and
on `mini`: hook_resid_post = hidden_states[l + 1], image / text positions where the adapter's
prefix puts them, a control with the caption and no image token, and splices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.models import load_adapter
from src.sae.residual import capture_resid, residuals, sequence_nll, splice_resid
from tests.tiny_vlms import BUILDERS

PROMPT = "describe the picture"
CAPTIONS = ["a red circle", "the blue square of a green picture", "a circle"]


@pytest.fixture(scope="module", params=list(BUILDERS))
def hf(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    BUILDERS[request.param](folder)
    return load_adapter(request.param, str(folder))


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in [(28, 28), (40, 60), (35, 21)]
    ]


def _all(adapter):
    return list(range(len(adapter.lm_blocks())))


def _check_hidden_states(adapter, seq):
    """Every block's hooked output equals hidden_states[l + 1] of a plain forward, except the
    last, whose hidden_states entry has the final norm applied."""
    layers = _all(adapter)
    with torch.no_grad(), capture_resid(adapter.lm_blocks(), layers) as store:
        out = (
            adapter.model(**seq.kwargs, output_hidden_states=True)
            if hasattr(adapter.model, "get_image_features")
            else adapter.model.lm(**seq.kwargs, output_hidden_states=True)
        )
    hs = out.hidden_states
    assert len(hs) == len(layers) + 1
    for layer in layers[:-1]:
        torch.testing.assert_close(store[layer], hs[layer + 1])
    norm, _ = adapter.lm_readout()
    torch.testing.assert_close(norm(store[layers[-1]]), hs[-1])


def _block0_input(adapter, seq):
    """What the LLM's first block receives (the embedded sequence with images merged in)."""
    seen = {}

    def pre(_m, args, kwargs):
        seen["x"] = args[0] if args else kwargs["hidden_states"]

    h = adapter.lm_blocks()[0].register_forward_pre_hook(pre, with_kwargs=True)
    try:
        with torch.no_grad():
            adapter.run_lm(seq)
    finally:
        h.remove()
    return seen["x"]


def test_hf_resid_post_is_hidden_states(hf, images):
    inputs = hf.preprocessor(images, PROMPT)
    _check_hidden_states(hf, hf.image_sequences(inputs))
    _check_hidden_states(hf, hf.control_sequences(CAPTIONS, PROMPT))


def test_hf_image_positions_hold_the_connector_output(hf, images):
    inputs = hf.preprocessor(images, PROMPT)
    seq = hf.image_sequences(inputs)
    post = hf.encode(inputs).post
    x = _block0_input(hf, seq)
    ids = seq.kwargs["input_ids"]
    for b, (img, txt) in enumerate(zip(seq.spans["image"], seq.spans["text"], strict=True)):
        assert len(img) == post[b].shape[0]
        torch.testing.assert_close(x[b, img], post[b], rtol=1e-4, atol=1e-5)
        # the text tokens follow the image and reach the end of the prompt
        assert int(txt.min()) > int(img.max()) and int(txt.max()) == ids.shape[1] - 1
        assert (ids[b, txt] != hf.image_token_id()).all()


def test_hf_control_has_the_caption_and_no_image_token(hf):
    seq = hf.control_sequences(CAPTIONS, PROMPT)
    ids, tok = seq.kwargs["input_ids"], hf.text_tokenizer()
    assert not (ids == hf.image_token_id()).any()
    words = tok(CAPTIONS[1], add_special_tokens=False)["input_ids"]
    if tok.decode(words).split() != CAPTIONS[1].split():
        pytest.skip(
            f"the tiny {hf.name} tokenizer does not round-trip words (its class reads "
            "the word-level vocabulary as BPE)"
        )
    for b, cap in enumerate(CAPTIONS):
        assert tok.decode(ids[b, seq.spans["control"][b]]).split() == cap.split()
        rest = tok.decode(ids[b, seq.spans["control_text"][b]])
        assert PROMPT in rest and "circle" not in rest.replace(cap, "")


def test_hf_identity_splice_keeps_the_caption_nll(hf, images):
    inputs = hf.preprocessor(images, PROMPT)
    seq = hf.image_sequences(inputs, CAPTIONS)
    with torch.no_grad():
        clean = sequence_nll(hf.run_lm(seq), seq.labels)
        with splice_resid(hf.lm_blocks(), 0, seq.spans["image"], lambda h: h):
            same = sequence_nll(hf.run_lm(seq), seq.labels)
        with splice_resid(hf.lm_blocks(), 0, seq.spans["image"], torch.zeros_like):
            moved = sequence_nll(hf.run_lm(seq), seq.labels)
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    assert (moved - clean).abs().max() > 1e-4
    # the caption tokens are the labelled ones, and the end token
    tok = hf.text_tokenizer()
    want = [len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in CAPTIONS]
    assert (seq.labels != -100).sum(1).tolist() == want


def test_mini_positions_resid_and_nll(mini_adapter, images):
    a = mini_adapter
    inputs = a.preprocessor(images, "Describe the image.")
    seq = a.image_sequences(inputs, CAPTIONS)
    post = a.encode(inputs).post
    x = _block0_input(a, seq)
    for b, img in enumerate(seq.spans["image"]):
        torch.testing.assert_close(x[b, img], post[b])
    # the spans cover the prefix: before + image + after, then the caption
    prefix = a.model.embed_prompt(torch.stack(post), "Describe the image.")
    assert int(seq.spans["text"][0].max()) == prefix.shape[1] - 1
    with torch.no_grad():
        nll = sequence_nll(a.run_lm(seq), seq.labels)
        want = a.model.caption_loss(torch.stack(post), CAPTIONS, "Describe the image.")
        torch.testing.assert_close(nll, want, rtol=1e-5, atol=1e-5)
        with splice_resid(a.lm_blocks(), 3, seq.spans["image"], lambda h: h):
            torch.testing.assert_close(sequence_nll(a.run_lm(seq), seq.labels), nll, rtol=0, atol=0)
    layers = [0, 5, len(a.lm_blocks()) - 1]
    acts, _ = residuals(a, seq, layers)
    with torch.no_grad():
        hs = a.model.lm(**seq.kwargs, output_hidden_states=True).hidden_states
    for layer in layers[:-1]:
        torch.testing.assert_close(acts[layer]["image"][1], hs[layer + 1][1, seq.spans["image"][1]])


def test_mini_control(mini_adapter):
    seq = mini_adapter.control_sequences(CAPTIONS, "Describe the image.")
    tok = mini_adapter.text_tokenizer()
    ids = seq.kwargs["input_ids"]
    for b, cap in enumerate(CAPTIONS):
        assert tok.decode(ids[b, seq.spans["control"][b]]) == cap
        assert tok.decode(ids[b, seq.spans["control_text"][b]]).startswith("\nDescribe the image.")
    _check_hidden_states(mini_adapter, seq)
