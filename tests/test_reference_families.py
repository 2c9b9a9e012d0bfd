"""Reference encoder families (HFReference): each family's vector against a plain forward of the
same tiny random model plus pooling written out by hand; one dtype for all; InternViT only on the
user's --trust_remote_code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from src.errors import UserError
from src.models.reference import HFReference
from tests.conftest import write_noise_images

VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    image_size=32, patch_size=8,
)  # fmt: skip
TEXT = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    vocab_size=100, bos_token_id=1, eos_token_id=2, pad_token_id=0,
)  # fmt: skip
CPU = torch.device("cpu")


def _save(kind: str, folder: Path) -> None:
    import transformers as tf

    torch.manual_seed(0)
    size = {"height": 32, "width": 32}
    proc = tf.SiglipImageProcessor(size=size)
    if kind == "clip":
        model = tf.CLIPModel(tf.CLIPConfig(text_config=TEXT, vision_config=VISION,
                                           projection_dim=16))  # fmt: skip
        proc = tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=size)
    elif kind == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=TEXT, vision_config=VISION))
    elif kind == "siglip_vision":
        model = tf.SiglipVisionModel(tf.SiglipVisionConfig(**VISION))
    elif kind == "dinov2":
        model = tf.Dinov2Model(tf.Dinov2Config(**VISION))
        proc = tf.BitImageProcessor(size={"shortest_edge": 32}, crop_size=size)
    else:  # paligemma: its SigLIP tower has no head, as in google/paligemma-3b-pt-224
        text = dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                    vocab_size=300)  # fmt: skip
        vision = dict(model_type="siglip_vision_model", vision_use_head=False, **VISION)
        cfg = tf.PaliGemmaConfig(vision_config=vision, text_config=text, projection_dim=32,
                                 image_token_index=299)  # fmt: skip
        model = tf.PaliGemmaForConditionalGeneration(cfg)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)


def _hand(kind: str, model, x: torch.Tensor, pool: str) -> torch.Tensor:
    """The expected vector from the plain model: the forward, then pooling written out."""
    if kind == "clip":
        h = model.vision_model(pixel_values=x).last_hidden_state
        if pool == "mean":
            return h[:, 1:].mean(1)
        return model.visual_projection(model.vision_model.post_layernorm(h[:, 0]))
    if kind in ("siglip", "siglip_vision", "paligemma"):
        tower = model.model.vision_tower if kind == "paligemma" else getattr(model, "vision_model",
                                                                            model)  # fmt: skip
        h = tower(pixel_values=x).last_hidden_state  # after post_layernorm; no class token
        if pool == "mean" or kind == "paligemma":
            return h.mean(1)
        head = tower.head  # attention pooling: a learned probe attends to every patch
        q = head.probe.expand(len(x), -1, -1)
        a = head.attention(q, h, h)[0]
        return (a + head.mlp(head.layernorm(a)))[:, 0]
    h = model(pixel_values=x).last_hidden_state  # dinov2: after its final layer norm
    return h[:, 1:].mean(1) if pool == "mean" else h[:, 0]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    out = {}
    for kind in ("clip", "siglip", "siglip_vision", "dinov2", "paligemma"):
        _save(kind, root / kind)
        out[kind] = root / kind
    write_noise_images(root / "images", 3)
    out["images"] = root / "images"
    return out


@pytest.mark.parametrize("kind", ["clip", "siglip", "siglip_vision", "dinov2", "paligemma"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_family_vector_is_forward_plus_hand_pooling(folders, kind, pool):
    import transformers as tf

    ref = HFReference(str(folders[kind]), CPU, torch.float32, pool)
    ims = [Image.open(p).convert("RGB") for p in sorted((folders["images"]).glob("*.jpg"))]
    x = ref.preprocessor(ims)["pixel_values"]
    got = ref.encode({"pixel_values": x}, [])
    loader = tf.PaliGemmaForConditionalGeneration if kind == "paligemma" else tf.AutoModel
    model = loader.from_pretrained(folders[kind]).eval()
    with torch.no_grad():
        want = _hand(kind, model, x, pool)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    info = ref.describe()
    assert info["dim"] == got.shape[1]
    if kind == "clip" and pool == "cls":
        assert info["dim"] == 16  # projection_dim, not the tower's 32
    if kind == "paligemma":
        assert info["pooling"] == "patch_mean" and "mean of patch tokens" in info["pooling_detail"]
    if kind in ("siglip", "siglip_vision") and pool == "cls":
        tokens = model.vision_model if kind == "siglip" else model
        with torch.no_grad():
            patch0 = tokens(pixel_values=x).last_hidden_state[:, 0]
        assert not torch.allclose(got, patch0, atol=1e-3)  # patch 0 is never taken as a CLS


def test_one_dtype_for_every_family(folders):
    for kind in ("clip", "siglip", "dinov2", "paligemma"):
        ref = HFReference(str(folders[kind]), CPU, torch.bfloat16, "cls")
        assert {p.dtype for p in ref.model.parameters()} == {torch.bfloat16}, kind
        assert ref.describe()["dtype"] == "bfloat16"


CONFIG_CODE = """
from transformers import PretrainedConfig


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, hidden_size=32, patch_size=8, image_size=32, **kw):
        super().__init__(**kw)
        self.hidden_size, self.patch_size, self.image_size = hidden_size, patch_size, image_size
"""
MODEL_CODE = """
import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_intern_vit import InternVisionConfig


class InternVisionModel(PreTrainedModel):
    config_class = InternVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.patch = torch.nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.block = torch.nn.TransformerEncoderLayer(config.hidden_size, 2, 64, batch_first=True)
        self.post_init()

    def _init_weights(self, module):
        pass

    def forward(self, pixel_values, **kw):
        x = self.patch(pixel_values).flatten(2).transpose(1, 2)
        x = self.block(torch.cat([self.cls.expand(len(x), -1, -1), x], 1))
        return BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=x[:, 0])
"""


@pytest.fixture(scope="module")
def internvit(tmp_path_factory) -> Path:
    """An InternViT-style checkpoint whose code lives in its folder (as on the hub)."""
    import transformers as tf

    folder = tmp_path_factory.mktemp("internvit")
    (folder / "configuration_intern_vit.py").write_text(CONFIG_CODE)
    (folder / "modeling_intern_vit.py").write_text(MODEL_CODE)
    cfg = {
        "model_type": "intern_vit_6b", "hidden_size": 32, "patch_size": 8, "image_size": 32,
        "architectures": ["InternVisionModel"],
        "auto_map": {"AutoConfig": "configuration_intern_vit.InternVisionConfig",
                     "AutoModel": "modeling_intern_vit.InternVisionModel"},
    }  # fmt: skip
    (folder / "config.json").write_text(json.dumps(cfg))
    config = tf.AutoConfig.from_pretrained(folder, trust_remote_code=True)
    torch.manual_seed(0)
    tf.AutoModel.from_config(config, trust_remote_code=True).save_pretrained(folder)
    tf.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                          ).save_pretrained(folder)  # fmt: skip
    return folder


def test_internvit_needs_the_users_flag(internvit):
    with pytest.raises(UserError, match="--trust_remote_code"):
        HFReference(str(internvit), CPU, torch.float32, "cls")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_internvit_with_the_flag_pools_its_class_token(internvit, pool):
    import transformers as tf

    ref = HFReference(str(internvit), CPU, torch.float32, pool, trust_remote_code=True)
    x = torch.randn(2, 3, 32, 32)
    got = ref.encode({"pixel_values": x}, [])
    model = tf.AutoModel.from_pretrained(internvit, trust_remote_code=True).eval()
    with torch.no_grad():
        h = model(pixel_values=x).last_hidden_state
    torch.testing.assert_close(got, h[:, 0] if pool == "cls" else h[:, 1:].mean(1))


def test_unknown_family_is_a_user_error(tmp_path):
    import transformers as tf

    cfg = tf.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, vocab_size=50)  # fmt: skip
    tf.BertModel(cfg).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="not a known reference encoder family"):
        HFReference(str(tmp_path), CPU, torch.float32, "cls")
