"""extract_clip: tiny random CLIP / SigLIP / DINOv2 from configs and the offline references."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from src.data.images import list_images, load_image
from src.data.paths import reference_shard_dir
from src.data.vectors import iter_chunks
from src.extract import extract_clip
from tests.conftest import write_noise_images

TINY_VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    image_size=32, patch_size=8,
)  # fmt: skip
TINY_TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=100,
)  # fmt: skip


def _save_tiny(kind: str, folder: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    size = {"height": 32, "width": 32}
    if kind == "clip":
        cfg = tf.CLIPConfig(text_config=TINY_TEXT, vision_config=TINY_VISION, projection_dim=16)
        model, proc = (
            tf.CLIPModel(cfg),
            tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size),
        )
    elif kind == "siglip":
        cfg = tf.SiglipConfig(text_config=TINY_TEXT, vision_config=TINY_VISION)
        model, proc = tf.SiglipModel(cfg), tf.SiglipImageProcessor(size=size)
    else:
        vis = {k: v for k, v in TINY_VISION.items()}
        model = tf.Dinov2Model(tf.Dinov2Config(**vis))
        proc = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size=size)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)


def _stored(out: Path, shard: str) -> dict[str, torch.Tensor]:
    rows = {}
    for _, chunk in iter_chunks(reference_shard_dir(out, shard), "ref"):
        rows.update({k: v[0] for k, v in chunk.by_key().items()})
    return rows


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_hf_references_match_the_model(tmp_path, kind, pool):
    import transformers as tf

    model_dir = tmp_path / kind
    _save_tiny(kind, model_dir)
    root = tmp_path / "images"
    write_noise_images(root / "s", 5)
    out = tmp_path / "ref"
    argv = [
        "--root",
        str(root),
        "--out_dir",
        str(out),
        "--model_id",
        str(model_dir),
        "--pool",
        pool,
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--no_progress",
    ]
    assert extract_clip.main(argv) == 0
    got = _stored(out, "s")
    assert sorted(got) == [f"img_{i:03d}" for i in range(5)]

    model = tf.AutoModel.from_pretrained(model_dir).eval()
    proc = tf.AutoImageProcessor.from_pretrained(model_dir)
    rec = list_images(root, "s")[3]
    x = proc(images=[load_image(rec).image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        if kind in ("clip", "siglip") and pool == "cls":
            want = model.get_image_features(pixel_values=x).pooler_output[0]
        else:
            tower = getattr(model, "vision_model", model)
            h = tower(pixel_values=x)
            if pool == "cls":
                want = h.pooler_output[0]
            else:
                tokens = h.last_hidden_state[0]
                want = (tokens if kind == "siglip" else tokens[1:]).mean(0)
    torch.testing.assert_close(got[rec.key], want, rtol=1e-4, atol=1e-5)
    manifest = json.loads((reference_shard_dir(out, "s") / "manifest.json").read_text())
    assert manifest["reference_info"]["pool"] == pool
    assert manifest["shapes"]["ref"]["tokens_max"] == 1


def test_minilm_embeds_captions_and_skips_uncaptioned(tmp_path):
    root = tmp_path / "images"
    write_noise_images(root / "s", 3)
    Image.new("RGB", (40, 40)).save(root / "s" / "nocap.jpg")
    (root / "s" / "img_001.txt").write_text("a red circle\na circle that is red\n")
    out = tmp_path / "ref"
    argv = [
        "--root",
        str(root),
        "--out_dir",
        str(out),
        "--model_id",
        "minilm",
        "--num_workers",
        "0",
        "--no_progress",
    ]
    assert extract_clip.main(argv) == 0
    got = _stored(out, "s")
    assert sorted(got) == ["img_000", "img_001", "img_002"]
    manifest = json.loads((reference_shard_dir(out, "s") / "manifest.json").read_text())
    assert manifest["skipped"] == ["nocap: no caption (the minilm reference embeds the caption)"]

    from src.models.reference import MiniLMCaptionReference

    ref = MiniLMCaptionReference(torch.device("cpu"), torch.float32, "cls")
    two = ref.embed_texts(["a red circle", "a circle that is red"])
    torch.testing.assert_close(got["img_001"], two.mean(0), rtol=1e-4, atol=1e-5)
    assert torch.allclose(two.norm(dim=1), torch.ones(2), atol=1e-5)
    # Paraphrases sit closer than unrelated captions: the embedding carries meaning.
    assert float(two[0] @ two[1]) > float(two[0] @ ref.embed_texts(["noise picture number 2"])[0])


def test_efficientnet_reference_is_pooled_feature_map(tmp_path):
    root = tmp_path / "images"
    write_noise_images(root / "s", 2)
    out = tmp_path / "ref"
    argv = [
        "--root",
        str(root),
        "--out_dir",
        str(out),
        "--model_id",
        "efficientnet-lite0",
        "--num_workers",
        "0",
        "--no_progress",
    ]
    assert extract_clip.main(argv) == 0
    from src.models.towers import EfficientNetTokens, SquareResize

    net = EfficientNetTokens(grid=7)
    rec = list_images(root, "s")[1]
    x = SquareResize(224)([load_image(rec).image])
    with torch.no_grad():
        want = net.net.extract_features(x).mean((2, 3))[0]
    torch.testing.assert_close(_stored(out, "s")[rec.key], want, rtol=1e-4, atol=1e-5)


def test_efficientnet_reference_reuses_extractions_forward_bit_for_bit(noise_root, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    """Inside remember_pooled_features (the main job) the reference is the global average pool
    extraction's forward computed on the same pixels: the same vectors, the network not rerun."""
    from efficientnet_lite_pytorch import EfficientNet

    from src.extract import extract_vectors
    from src.models.towers import remember_pooled_features

    def reference(out: Path) -> dict:
        assert extract_clip.main(["--root", str(noise_root), "--out_dir", str(out), "--model_id",
                                  "efficientnet-lite0", "--num_workers", "0",
                                  "--no_progress"]) == 0  # fmt: skip
        return {(s, k): v for s in ("s0", "s1")
                for _, c in iter_chunks(out / s, "ref") for k, v in c.by_key().items()}  # fmt: skip

    alone = reference(tmp_path / "alone")
    calls = []
    original = EfficientNet.extract_features

    def counted(self, x):
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(EfficientNet, "extract_features", counted)
    with remember_pooled_features():
        assert extract_vectors.main(["--root", str(noise_root), "--out_dir", str(tmp_path / "v"),
                                     "--num_workers", "0", "--no_progress"]) == 0  # fmt: skip
        n_extract = sum(calls)
        shared = reference(tmp_path / "shared")
    assert n_extract == 13 and sum(calls) == n_extract  # the reference ran no forward
    assert shared.keys() == alone.keys()
    assert all(torch.equal(shared[k], alone[k]) for k in alone)
