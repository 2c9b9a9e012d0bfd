"""CRAFT's VGG16-BN trunk: the packaged weights fit our layer layout, the full detector finds a
rendered line of text (which proves the weights and the wiring), token shapes, the transform,
and the `craft-vgg16` reference and tower registrations."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from src.data.images import list_images, load_image
from src.data.paths import reference_shard_dir
from src.data.vectors import iter_chunks
from src.extract import extract_clip
from src.models.connector import ConnectorConfig
from src.models.craft import (
    CRAFT,
    IMAGENET_MEAN,
    CraftDetector,
    CraftTokens,
    CraftTrunk,
    ImageNetSquareResize,
    craft_state_dict,
    load_craft_detector,
    vgg16_bn_layers,
)
from src.models.mini import build_vision
from tests.conftest import write_noise_images

PAPER = (235, 232, 225)  # light background
INK = (20, 20, 30)


@pytest.fixture(scope="module")
def detector() -> CraftDetector:
    return load_craft_detector()


@pytest.fixture(scope="module")
def tokens14() -> CraftTokens:
    return CraftTokens(grid=None)


def _font(size: int) -> ImageFont.FreeTypeFont | None:
    """matplotlib's DejaVuSans if present (it ships in matplotlib's wheel), else None."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size) if path.exists() else None


def render_text_line(text: str, side: int = 224) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """Dark text on a light square, centred horizontally in the upper third.

    Returns (image, (left, top, right, bottom) of the ink in pixels).
    """
    font = _font(28)
    if font is None:  # PIL's default font (small) drawn on a third-size page, scaled up 3x
        small = Image.new("RGB", (side // 3, side // 3), PAPER)
        box = _draw_centred(small, text, ImageFont.load_default())
        big = small.resize((side, side), Image.Resampling.NEAREST)
        return big, (box[0] * 3, box[1] * 3, box[2] * 3, box[3] * 3)
    im = Image.new("RGB", (side, side), PAPER)
    return im, _draw_centred(im, text, font)


def _draw_centred(im: Image.Image, text: str, font: ImageFont.ImageFont) -> tuple[int, ...]:
    d = ImageDraw.Draw(im)
    x0, y0, x1, y1 = d.textbbox((0, 0), text, font=font)
    x, y = (im.width - (x1 - x0)) // 2 - x0, (im.height - (y1 - y0)) // 3 - y0
    d.text((x, y), text, fill=INK, font=font)
    return d.textbbox((x, y), text, font=font)


def test_layout_is_vgg16_bn_and_loads_the_checkpoint_strictly():
    layers = vgg16_bn_layers()
    # torchvision's vgg16_bn features: 13 x (conv, BN, ReLU) and 5 pools at these indices
    assert len(layers) == 44
    pools = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [6, 13, 23, 33, 43]
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert all(isinstance(layers[i + 1], torch.nn.BatchNorm2d) for i in convs)
    state = craft_state_dict()
    assert all(k.split(".")[0] in {"basenet", "upconv1", "upconv2", "upconv3", "upconv4",
                                   "conv_cls"} for k in state)  # fmt: skip
    result = CraftDetector().load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # the checkpoint's trunk convs sit exactly where the VGG16-BN list has its convs
    used = sorted({int(k.split(".")[2]) for k in state if k.startswith("basenet.slice")
                   and not k.startswith("basenet.slice5")})  # fmt: skip
    assert set(convs[:-1]) <= set(used) and convs[-1] not in used  # conv5_3 (40) is unused


@pytest.mark.parametrize("size", [224, 160])
def test_detector_finds_a_rendered_line_of_text(detector, size):
    im, box = render_text_line("Hello World 42")
    x = ImageNetSquareResize(size)([im])  # the 224 px render, resized to `size`
    with torch.no_grad():
        region = detector(x)[0, 0]  # (size/2, size/2): the score map is at half resolution
    assert region.shape == (size // 2, size // 2)
    s = size / 224 / 2
    x0, y0, x1, y1 = (round(v * s) for v in box)  # the ink box on the score map
    inside = region[y0:y1, x0:x1]
    outside = torch.ones_like(region, dtype=torch.bool)
    # a 3-cell margin for the Gaussians' tails (clamped: a negative start would wrap around)
    outside[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = False
    # Measured with DejaVuSans (224 and 160 px): inside mean 0.42-0.46 (per-character Gaussians,
    # lower between letters), about half the box above 0.4; outside mean ~0.002, max <= 0.1.
    assert inside.mean() > 0.3
    assert (inside > 0.4).float().mean() > 0.3
    assert region[outside].mean() < 0.02
    assert region[outside].max() < 0.3


def test_detector_sees_nothing_on_a_blank_page(detector):
    blank = ImageNetSquareResize(160)([Image.new("RGB", (224, 224), PAPER)])
    with torch.no_grad():
        assert detector(blank).max() < 0.2  # measured max 0.012


def test_token_shapes(tokens14):
    with torch.no_grad():
        full = tokens14(torch.randn(1, 3, 224, 224))
        small = tokens14(torch.randn(1, 3, 160, 160))
    assert full.shape == (1, 14 * 14, 512)  # conv5_2 at H/16
    assert small.shape == (1, 10 * 10, 512)
    assert not tokens14.net.training and not any(p.requires_grad for p in tokens14.parameters())


def test_imagenet_transform_is_picklable_and_normalises_per_channel():
    t = pickle.loads(pickle.dumps(ImageNetSquareResize(16)))
    mean_rgb = tuple(round(255 * m) for m in IMAGENET_MEAN)
    x = t([Image.new("RGB", (32, 20), mean_rgb)])
    assert x.shape == (1, 3, 16, 16)
    assert x.abs().max() < 0.02  # the ImageNet mean colour maps to ~0 in every channel
    white = t([Image.new("RGB", (16, 16), (255, 255, 255))])[0, :, 0, 0]
    torch.testing.assert_close(white, torch.tensor([2.2489, 2.4286, 2.6400]), rtol=0, atol=1e-3)


def test_craft_reference_through_extract_clip(tmp_path, tokens14):
    root = tmp_path / "images"
    write_noise_images(root / "s", 3)
    out = tmp_path / "ref"
    argv = ["--root", str(root), "--out_dir", str(out), "--model_id", CRAFT, "--pool", "mean",
            "--batch_size", "2", "--num_workers", "0", "--no_progress"]  # fmt: skip
    assert extract_clip.main(argv) == 0
    rows = {}
    for _, chunk in iter_chunks(reference_shard_dir(out, "s"), "ref"):
        rows.update({k: v[0] for k, v in chunk.by_key().items()})
    assert sorted(rows) == ["img_000", "img_001", "img_002"]
    assert all(v.shape == (512,) for v in rows.values())
    rec = list_images(root, "s")[2]
    with torch.no_grad():  # the reference = mean of the 8 x 8 token map at 128 px
        want = tokens14(ImageNetSquareResize(128)([load_image(rec).image]))[0].mean(0)
    torch.testing.assert_close(rows[rec.key], want, rtol=1e-4, atol=1e-4)
    info = json.loads((reference_shard_dir(out, "s") / "manifest.json").read_text())
    assert info["reference_info"]["image_size"] == 128


def test_build_vision_gives_the_craft_tower_with_a_pooled_grid(tokens14):
    cfg = ConnectorConfig(in_dim=512, out_dim=576, hidden_dim=64, vision=CRAFT, grid=4)
    tower, transform = build_vision(cfg)
    assert isinstance(tower, CraftTokens) and tower.dim == 512 and tower.grid == 4
    assert isinstance(transform, ImageNetSquareResize) and transform.size == 224
    im, _ = render_text_line("grid", side=300)
    x = transform([im])
    with torch.no_grad():
        pooled = tower(x)  # (1, 16, 512)
        fmap = tokens14(x).transpose(1, 2).reshape(1, 512, 14, 14)
    assert pooled.shape == (1, 16, 512)
    # adaptive pooling 14 -> 4: bin i spans rows floor(14 i / 4) .. ceil(14 (i + 1) / 4)
    torch.testing.assert_close(pooled[0, 0], fmap[0, :, 0:4, 0:4].mean((1, 2)))
    torch.testing.assert_close(pooled[0, 5], fmap[0, :, 3:7, 3:7].mean((1, 2)))
    torch.testing.assert_close(pooled[0, 15], fmap[0, :, 10:14, 10:14].mean((1, 2)))


def test_folded_tokens_equal_the_unfolded_trunk(tokens14):
    """CraftTokens folds each BatchNorm into its conv and skips the skip maps' ReLUs: the same
    conv5_2 map as CraftTrunk with the packaged weights, to float rounding; and its bf16 run
    (the main job's, where the CPU has native bf16) keeps the pooled vector's direction."""
    trunk = CraftTrunk()
    trunk.load_state_dict(craft_state_dict("basenet."), strict=True)
    trunk.eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tokens14.modules())
    x = ImageNetSquareResize(160)([render_text_line("fold", side=200)[0]])
    with torch.no_grad():
        want = trunk(x, fc7=False).conv5_2.flatten(2).transpose(1, 2)
        got = tokens14(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        half = CraftTokens(grid=None).to(torch.bfloat16)(x.to(torch.bfloat16)).float()
    cos = torch.nn.functional.cosine_similarity(half.mean(1), want.mean(1)).item()
    assert cos > 0.999  # measured 0.99994 on 96 sample scenes (min)
