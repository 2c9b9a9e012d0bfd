"""Patch-text similarity in a joint space: CLIP against a hand computation, SigLIP's head path,
the crop geometry through real processors, and the offline stage's clear message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from src.data.paths import align_table
from src.errors import UserError
from src.models.joint_space import (
    NO_OFFLINE_SPACE,
    ClipJoint,
    SiglipJoint,
    load_joint_space,
    patch_text_similarity,
    processor_view_box,
)
from src.plot import attention_maps

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    image_size=32, patch_size=8,
)  # fmt: skip
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=60, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
CPU = torch.device("cpu")


class CharTokenizer:
    """Characters -> ids (enough for a tiny random text tower): a tokenizer's call signature."""

    def __call__(self, texts, padding=True, truncation=True, return_tensors="pt"):
        ids = [[1, *[3 + ord(ch) % 50 for ch in t][:12], 2] for t in texts]
        width = 16 if padding == "max_length" else max(map(len, ids))
        mask = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
        ids = [i + [0] * (width - len(i)) for i in ids]
        from transformers import BatchEncoding

        return BatchEncoding({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)})


@pytest.fixture(scope="module")
def clip():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.CLIPModel(tf.CLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16))
    proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return ClipJoint(model.eval(), proc, CharTokenizer(), "tiny-clip")


@pytest.fixture(scope="module")
def siglip():
    import transformers as tf

    torch.manual_seed(0)
    model = tf.SiglipModel(tf.SiglipConfig(text_config=TEXT, vision_config=VISION))
    proc = tf.SiglipImageProcessor(size={"height": 32, "width": 32})
    return SiglipJoint(model.eval(), proc, CharTokenizer(), "tiny-siglip")


def test_clip_patches_are_projected_after_post_layernorm(clip):
    m = clip.model
    x = torch.randn(2, 3, 32, 32)
    texts = ["a red circle", "two blue squares"]
    got = patch_text_similarity(clip, x, texts)  # (2, 2, 4, 4)
    with torch.no_grad():
        h = m.vision_model(pixel_values=x).last_hidden_state  # before post_layernorm
        ln = m.vision_model.post_layernorm
        patches = m.visual_projection(ln(h[:, 1:]))  # (2, 16, 16)
        enc = CharTokenizer()(texts)
        t = m.text_projection(m.text_model(**enc).pooler_output)
        want = F.cosine_similarity(patches[:, None], t[None, :, None], dim=-1)  # (2, 2, 16)
        # the CLS token down the same path is CLIP's image embedding: one space
        cls = m.visual_projection(ln(h[:, 0]))
        torch.testing.assert_close(cls, m.get_image_features(pixel_values=x).pooler_output)
        skipped = F.cosine_similarity(m.visual_projection(h[:, 1:])[:, None], t[None, :, None],
                                      dim=-1)  # fmt: skip  # the seed's path, without the norm
    torch.testing.assert_close(got, want.reshape(2, 2, 4, 4), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, skipped.reshape(2, 2, 4, 4), atol=1e-2)


def test_siglip_patch_is_the_head_on_that_patch_alone(siglip):
    m = siglip.model
    x = torch.randn(1, 3, 32, 32)
    got = siglip.patch_embeddings(x)[0].reshape(16, -1)
    with torch.no_grad():
        h = m.vision_model(pixel_values=x).last_hidden_state[0]  # (16, 32)
        head = m.vision_model.head
        d = h.shape[1]
        # by hand: attention over one key has weight 1 -> the value path, then the residual MLP
        v = h @ head.attention.in_proj_weight[2 * d :].T + head.attention.in_proj_bias[2 * d :]
        a = head.attention.out_proj(v)
        want = a + head.mlp(head.layernorm(a))
        # an image whose every patch token is equal pools to exactly that patch's embedding
        same = head(h[3].expand(1, 16, d))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(same[0], got[3], rtol=1e-4, atol=1e-5)
    assert patch_text_similarity(siglip, x, ["a cat"]).shape == (1, 1, 4, 4)


def _coordinate_image(w: int, h: int) -> Image.Image:
    """Red encodes x / w, green encodes y / h (smooth, so resizing keeps them)."""
    xs = np.broadcast_to((np.arange(w) + 0.5) / w, (h, w))
    ys = np.broadcast_to(((np.arange(h) + 0.5) / h)[:, None], (h, w))
    rgb = np.stack([xs, ys, np.zeros((h, w))], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@pytest.mark.parametrize("size", [(200, 100), (90, 160), (64, 64)])
@pytest.mark.parametrize("kind", ["clip_crop", "siglip_stretch"])
def test_view_box_undoes_the_processors_resize_and_crop(kind, size):
    import transformers as tf

    if kind == "clip_crop":
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size={"height": 32,
                                     "width": 32}, do_normalize=False)  # fmt: skip
    else:
        proc = tf.SiglipImageProcessor(size={"height": 32, "width": 32}, do_normalize=False)
    w, h = size
    px = proc(images=[_coordinate_image(w, h)], return_tensors="pt")["pixel_values"][0]
    box = processor_view_box(proc, w, h)
    # each processed pixel's centre, mapped back through the box, is where it came from
    u = (np.arange(32) + 0.5) / 32
    want_x = (box.left + u * (box.right - box.left)) / w
    want_y = (box.top + u * (box.bottom - box.top)) / h
    got_x, got_y = px[0].mean(0).numpy(), px[1].mean(1).numpy()
    np.testing.assert_allclose(got_x[2:-2], want_x[2:-2], atol=2.5 / min(w, h) + 0.01)
    np.testing.assert_allclose(got_y[2:-2], want_y[2:-2], atol=2.5 / min(w, h) + 0.01)
    if kind == "clip_crop" and w != h:
        assert (box.right - box.left) < w or (box.bottom - box.top) < h  # something was cut


def test_offline_says_no_joint_space_is_installed(tmp_path, capsys):
    with pytest.raises(UserError, match="no joint image-text space is installed"):
        load_joint_space(None, CPU, torch.float32)
    im = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(im)
    assert attention_maps.main(["--image", str(im), "--out_dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {NO_OFFLINE_SPACE}"


def test_stage_on_a_tiny_clip_folder(tmp_path, clip, monkeypatch):
    from src.models import joint_space

    monkeypatch.setitem(joint_space.OFFLINE_JOINT_SPACES, "tiny", lambda device, dtype: clip)
    im = tmp_path / "wide.png"
    _coordinate_image(80, 40).save(im)
    out = tmp_path / "o"
    assert attention_maps.main(["--image", str(im), "--text", "a", "bb", "--out_dir", str(out),
                                "--model_id", "tiny", "--device", "cpu"]) == 0  # fmt: skip
    t = pd.read_csv(align_table(out, "similarity"))
    assert len(t) == 2 * 16 and t.similarity.between(-1, 1).all()
    # the 32 x 32 crop of a 64 x 32 resize: the middle half of the original's width
    assert t.left.min() == pytest.approx(20) and t.right.max() == pytest.approx(60)
    assert t.top.min() == 0 and t.bottom.max() == pytest.approx(40)
    assert (out / "wide_0.png").exists() and (out / "wide_1.png").exists()


def test_dual_encoder_joint_space_is_its_adapters_on_the_pooled_tower_grid(tmp_path):
    """A train_align folder is a joint space: its 7 x 7 token grid averages to exactly the pooled
    vector the image adapter was trained on, and each patch is that adapter on one cell."""
    from src.models.dual_encoder import DualAdapters, DualEncoderConfig, save_dual
    from src.models.joint_space import Box, DualJoint
    from src.models.reference import load_reference

    torch.manual_seed(0)
    cfg = DualEncoderConfig(d_vision=1280, d_text=384, d_align=32, hidden_dim=16, radii=[32])
    folder = tmp_path / "dual"
    save_dual(DualAdapters(cfg).eval(), folder)
    space = load_joint_space(str(folder), torch.device("cpu"), torch.float32)
    assert isinstance(space, DualJoint)
    im = Image.fromarray((np.random.default_rng(0).random((90, 140, 3)) * 255).astype(np.uint8))
    pixels = space.preprocess([im])
    grid = space.tower(pixels)  # (1, 49, 1280)
    pooled = load_reference("efficientnet-lite0", device=torch.device("cpu"), dtype=torch.float32)
    ref = pooled.encode(pooled.preprocessor([im]), [])
    torch.testing.assert_close(grid.mean(1), ref, rtol=1e-4, atol=1e-5)
    patches = space.patch_embeddings(pixels)  # (1, 7, 7, 32)
    assert patches.shape == (1, 7, 7, 32)
    cell = space.dual.encode_image(grid[:, 10])  # row 1, col 3
    torch.testing.assert_close(patches[0, 1, 3], cell[0])
    assert space.view_box(140, 90) == Box(0.0, 0.0, 140.0, 90.0)
