"""Reference encoders: one pooled vector per image from a hub image encoder or offline parts.

Registry: the offline names below (OFFLINE_REFERENCES), or any hub id / local path of a model
whose family VISION_FAMILIES knows (CLIP, SigLIP, DINOv2, InternViT, PaliGemma's SigLIP tower).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from src.data.images import LoadedImage
from src.errors import UserError
from src.models.craft import CRAFT, CraftTokens, ImageNetSquareResize
from src.models.towers import EfficientNetTokens, SquareResize, minilm_dir

RefPool = Literal["cls", "mean"]


class ImageOnly:
    """Picklable preprocessor: images -> {'pixel_values': (B, 3, H, W)}."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, images: list[Image.Image]) -> dict[str, Any]:
        return {"pixel_values": self.transform(images)}


class ReferenceEncoder(ABC):
    """encode(inputs, items) -> (B, D) float32, one row per decoded image."""

    name: str
    modality: ClassVar[str] = "image"

    def __init__(self, device: torch.device, dtype: torch.dtype, pool: RefPool) -> None:
        self.device, self.dtype, self.pool = device, dtype, pool

    @property
    @abstractmethod
    def preprocessor(self) -> Any: ...

    @abstractmethod
    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor: ...

    @classmethod
    def preferred_dtype(cls) -> str:
        """The --dtype the main job runs this reference in ('auto': the stage's default)."""
        return "auto"

    def describe(self) -> dict[str, Any]:
        return {
            "reference": self.name,
            "modality": self.modality,
            "pool": self.pool,
            "dtype": str(self.dtype).removeprefix("torch."),
        }


class EfficientNetReference(ReferenceEncoder):
    """Global-average-pooled EfficientNet-Lite0 features (ImageNet), 1280-d. 'cls' = 'mean' here:
    a CNN has no class token."""

    name = "efficientnet-lite0"

    def __init__(self, device: torch.device, dtype: torch.dtype, pool: RefPool) -> None:
        super().__init__(device, dtype, pool)
        self.net = EfficientNetTokens(grid=7).to(device, dtype)

    @property
    def preprocessor(self) -> ImageOnly:
        return ImageOnly(SquareResize(224))

    @torch.no_grad()
    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor:
        # the mean of the 7 x 7 grid's 49 tokens, reused when extraction just computed it
        # (remember_pooled_features, inside the main job)
        return self.net.pooled(inputs["pixel_values"].to(self.device, self.dtype))


class CraftReference(ReferenceEncoder):
    """Mean over CRAFT's conv5_2 token map (VGG16-BN fine-tuned for scene-text detection),
    512-d: an image space from another network and another objective than mini's EfficientNet.
    'cls' = 'mean' here: a CNN has no class token.

    128 px, not 224: the trunk costs ~15 GMAC per image at 224 and a third of that at 128 (8 x 8
    tokens), which is what fits the sample study's 2,161 images into its minute on 2 cores (in
    bf16: 168 CPU-seconds for them at 160 px measured under load, so ~110 at 128); the detector
    finds text at 160 (tests/test_craft.py), and the reference is a pooled image vector, not a
    detection.
    """

    name = CRAFT
    image_size: ClassVar[int] = 128

    def __init__(self, device: torch.device, dtype: torch.dtype, pool: RefPool) -> None:
        super().__init__(device, dtype, pool)
        self.net = CraftTokens(grid=None).to(device, dtype)

    @property
    def preprocessor(self) -> ImageOnly:
        return ImageOnly(ImageNetSquareResize(self.image_size))

    @torch.no_grad()
    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor:
        tokens = self.net(inputs["pixel_values"].to(self.device, self.dtype))  # (B, 100, 512)
        return tokens.float().mean(1)

    @classmethod
    def preferred_dtype(cls) -> str:
        """bf16 where the CPU computes it natively (AVX512-BF16 / AMX): the VGG convolutions run
        about 4x faster per core than in float32 (283 vs 72 GMAC per CPU-second measured here),
        which is what fits the sample study's 2,161 images into a minute on 2 cores; the pooled
        vectors agree with float32 to cosine > 0.999 (tests/test_craft.py)."""
        return (
            "bf16" if torch.cuda.is_available() or torch.cpu._is_avx512_bf16_supported() else "auto"
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "image_size": self.image_size, "layer": "conv5_2"}


class MiniLMCaptionReference(ReferenceEncoder):
    """all-MiniLM-L6-v2 embedding of the image's caption (mean over tokens, L2-normalised, as
    sentence-transformers does for this model), 384-d. A text view of the image: images without
    a caption are skipped with that reason. Several caption lines are averaged."""

    name = "minilm"
    modality = "caption"

    def __init__(self, device: torch.device, dtype: torch.dtype, pool: RefPool) -> None:
        super().__init__(device, dtype, pool)
        from transformers import AutoModel, AutoTokenizer

        folder = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder, dtype=dtype).to(device).eval()

    @property
    def preprocessor(self) -> None:
        return None  # pixels are not needed

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), 384), unit norm."""
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=256, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**enc).last_hidden_state.float()  # (B, L, 384)
        mask = enc["attention_mask"].unsqueeze(-1).float()
        return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1)

    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor:
        out = torch.zeros(len(items), 384)
        texts, owner = [], []
        for i, it in enumerate(items):
            if not it.captions:
                it.error = "no caption (the minilm reference embeds the caption)"
            texts += it.captions
            owner += [i] * len(it.captions)
        if texts:
            emb = self.embed_texts(texts)
            idx = torch.tensor(owner)
            out.index_add_(0, idx, emb)
            out /= torch.bincount(idx, minlength=len(items)).clamp(min=1).unsqueeze(1)
        return out


@dataclass(frozen=True)
class VisionFamily:
    """How one hub model family gives an image vector, looked up by its config's model_type.

    tower(model)      the image transformer whose last_hidden_state holds the tokens
    embed(model, px)  the model's own image embedding (B, D), or None where it has none
    embed_name        what that embedding is, recorded in manifests
    class_token       True when token 0 is a class token (excluded from the patch mean)
    embed_dim(config) the width of the own embedding (CLIP: projection_dim, not hidden_size)
    """

    tower: Callable[[Any], Any]
    embed: Callable[[Any, torch.Tensor], torch.Tensor] | None
    embed_name: str
    class_token: bool
    embed_dim: Callable[[Any], int]
    loader: str = "AutoModel"  # the transformers class that loads the checkpoint
    remote_code: bool = False  # the family's modelling code lives in the checkpoint


def _pooler(out: Any) -> torch.Tensor:
    # transformers 5.x returns an output object; the vector is its pooler_output
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _vision_width(config: Any) -> int:
    return getattr(config, "vision_config", config).hidden_size


_SIGLIP_HEAD = VisionFamily(
    tower=lambda m: getattr(m, "vision_model", m),
    embed=lambda m, px: _pooler(getattr(m, "vision_model", m)(pixel_values=px)),
    embed_name="attention-pooling head (pooler_output)",
    class_token=False,
    embed_dim=_vision_width,
)
VISION_FAMILIES: dict[str, VisionFamily] = {
    "clip": VisionFamily(
        tower=lambda m: m.vision_model,
        embed=lambda m, px: _pooler(m.get_image_features(pixel_values=px)),
        embed_name="visual_projection(post_layernorm(CLS))",
        class_token=True,
        embed_dim=lambda c: c.projection_dim,
    ),
    "siglip": _SIGLIP_HEAD,
    "siglip2": _SIGLIP_HEAD,
    "siglip_vision_model": _SIGLIP_HEAD,
    "dinov2": VisionFamily(
        tower=lambda m: m,
        embed=lambda m, px: m(pixel_values=px).pooler_output,
        embed_name="layernorm(CLS)",
        class_token=True,
        embed_dim=_vision_width,
    ),
    # PaliGemma's SigLIP tower was trained without SigLIP's head (vision_use_head=False): it has
    # no pooled embedding and no class token, so its image vector is the mean of patch tokens.
    "paligemma": VisionFamily(
        tower=lambda m: m.model.vision_tower,
        embed=None,
        embed_name="",
        class_token=False,
        embed_dim=_vision_width,
        loader="PaliGemmaForConditionalGeneration",
    ),
    # InternViT (OpenGVLab/InternViT-300M-448px): modelling code from the checkpoint; token 0
    # is its class token and pooler_output is that token.
    "intern_vit_6b": VisionFamily(
        tower=lambda m: m,
        embed=lambda m, px: m(pixel_values=px).pooler_output,
        embed_name="CLS (pooler_output)",
        class_token=True,
        embed_dim=_vision_width,
        remote_code=True,
    ),
}


def vision_family(model_type: str, model_id: str) -> VisionFamily:
    try:
        return VISION_FAMILIES[model_type]
    except KeyError:
        raise UserError(
            f"{model_id}: model_type {model_type!r} is not a known reference encoder family "
            f"({', '.join(sorted(VISION_FAMILIES))})"
        ) from None


class HFReference(ReferenceEncoder):
    """A hub image encoder (CLIP, SigLIP, DINOv2, InternViT, PaliGemma's tower) by id or path.

    pool='cls': the model's own image embedding (VISION_FAMILIES[...].embed_name: CLIP's
    projected CLS, SigLIP's attention-pooling head, DINOv2's CLS, InternViT's CLS); a tower
    without one (PaliGemma's) gives the mean of its patch tokens, recorded as 'patch_mean'.
    pool='mean': the mean of the last layer's patch tokens (a class token excluded; SigLIP-family
    towers have none, so every token counts; token 0 is never taken as a class token there).
    Every family loads in the one dtype asked for.
    """

    def __init__(
        self,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
        pool: RefPool,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(device, dtype, pool)
        import transformers
        from transformers import AutoConfig, AutoImageProcessor

        self.name = model_id
        kw = {"revision": revision, "trust_remote_code": trust_remote_code}
        config = _hub_config(AutoConfig, model_id, kw)
        self.family = vision_family(config.model_type, model_id)
        if self.family.remote_code and not trust_remote_code:
            raise UserError(
                f"{model_id} ({config.model_type}) runs modelling code from its checkpoint: "
                "read it, then pass --trust_remote_code"
            )
        cls = getattr(transformers, self.family.loader)
        self.model = cls.from_pretrained(model_id, dtype=dtype, **kw).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id, **kw)
        self.pooling = "patch_mean" if pool == "mean" or self.family.embed is None else "embed"

    @property
    def preprocessor(self) -> Any:
        return HFProcessorImages(self.processor)

    @torch.no_grad()
    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor:
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        if self.pooling == "embed":
            assert self.family.embed is not None
            return self.family.embed(self.model, pixels).float()
        tokens = self.family.tower(self.model)(pixel_values=pixels).last_hidden_state.float()
        return (tokens[:, 1:] if self.family.class_token else tokens).mean(1)

    @property
    def dim(self) -> int:
        if self.pooling == "embed":
            return self.family.embed_dim(self.model.config)
        return _vision_width(self.family.tower(self.model).config)

    def describe(self) -> dict[str, Any]:
        how = self.family.embed_name if self.pooling == "embed" else "mean of patch tokens"
        if self.pooling == "patch_mean" and self.family.class_token:
            how += " (class token excluded)"
        return {**super().describe(), "model_type": self.model.config.model_type,
                "pooling": self.pooling, "pooling_detail": how, "dim": self.dim}  # fmt: skip


def _hub_config(auto_config: Any, model_id: str, kw: dict[str, Any]) -> Any:
    """The checkpoint's config; one whose code lives in the checkpoint needs the user's flag."""
    try:
        return auto_config.from_pretrained(model_id, **kw)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(
                f"{model_id} runs modelling code from its checkpoint: read it, then pass "
                "--trust_remote_code"
            ) from None
        raise


class HFProcessorImages:
    """Picklable wrapper of a hub image processor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: list[Image.Image]) -> dict[str, Any]:
        return {"pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"]}


OFFLINE_REFERENCES: dict[str, type[ReferenceEncoder]] = {
    "efficientnet-lite0": EfficientNetReference,
    CRAFT: CraftReference,
    "minilm": MiniLMCaptionReference,
}


def _dual_encoder_images(
    folder: Path, device: torch.device, dtype: torch.dtype, pool: RefPool
) -> ReferenceEncoder:
    from src.models.dual_encoder import DualImageReference

    return DualImageReference(folder, device, dtype, pool)


class TowerFolderReference(ReferenceEncoder):
    """A fine-tuned tower folder (train_kernel_align: a base tower + the weights it changed),
    the mean of its tokens (7 x 7 grid for the offline CNNs: their global average pool)."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, pool: RefPool):
        super().__init__(device, dtype, pool)
        from src.models.connector import ConnectorConfig
        from src.models.mini import build_vision

        self.name = str(folder)
        cfg = ConnectorConfig(vision=str(folder), grid=7, in_dim=1, out_dim=1, hidden_dim=1)
        net, self.transform = build_vision(cfg)
        self.net = net.to(device, dtype).eval()

    @property
    def preprocessor(self) -> ImageOnly:
        return ImageOnly(self.transform)

    @torch.no_grad()
    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor:
        return self.net(inputs["pixel_values"].to(self.device, self.dtype)).float().mean(1)


# Folders holding a trained image encoder, by the file that marks them: marker -> loader. Any
# other folder is a hub-format CLIP / SigLIP / DINOv2 save (HFReference).
FOLDER_REFERENCES: dict[
    str, Callable[[Path, torch.device, torch.dtype, RefPool], ReferenceEncoder]
] = {
    "dual_encoder.json": _dual_encoder_images,  # train_align: its image side, joint space
    "tower.json": TowerFolderReference,  # train_kernel_align: a fine-tuned tower
}


def preferred_dtype(model_id: str) -> str:
    """The --dtype the main job gives extract_clip for a reference: the offline reference's own
    choice, 'auto' for a hub id or path."""
    ref = OFFLINE_REFERENCES.get(model_id)
    return ref.preferred_dtype() if ref is not None else "auto"


def load_reference(
    model_id: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    pool: RefPool = "cls",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> ReferenceEncoder:
    """An offline reference by name, a folder FOLDER_REFERENCES knows, else a hub image
    encoder (VISION_FAMILIES) by id or path."""
    if model_id in OFFLINE_REFERENCES:
        return OFFLINE_REFERENCES[model_id](device, dtype, pool)
    for marker, loader in FOLDER_REFERENCES.items():
        if (Path(model_id) / marker).is_file():
            return loader(Path(model_id), device, dtype, pool)
    return HFReference(
        model_id, device, dtype, pool, revision=revision, trust_remote_code=trust_remote_code
    )
