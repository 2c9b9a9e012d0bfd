"""Reference encoders: one pooled vector per image from CLIP / SigLIP / DINOv2 or offline parts.

Registry: the offline names below, or any hub id / local path of a CLIP, SigLIP or DINOv2 model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from src.data.images import LoadedImage
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


class HFReference(ReferenceEncoder):
    """CLIP / SigLIP image embeddings or DINOv2 features from a hub id or local path.

    pool='cls': the model's own image embedding (CLIP / SigLIP: the projected pooled output that
    get_image_features returns; DINOv2: the final CLS token after its layer norm).
    pool='mean': the mean of the last layer's patch tokens (class token excluded).
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
        from transformers import AutoImageProcessor, AutoModel

        self.name = model_id
        kw = {"revision": revision, "trust_remote_code": trust_remote_code}
        self.model = AutoModel.from_pretrained(model_id, dtype=dtype, **kw).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(model_id, **kw)
        # Dual encoders (CLIP, SigLIP) expose get_image_features; DINOv2 is the image tower.
        self.dual = hasattr(self.model, "get_image_features")

    @property
    def preprocessor(self) -> Any:
        return HFProcessorImages(self.processor)

    @torch.no_grad()
    def encode(self, inputs: dict[str, Any], items: list[LoadedImage]) -> torch.Tensor:
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        if self.dual and self.pool == "cls":
            out = self.model.get_image_features(pixel_values=pixels)
            # transformers 5.x returns an output object; the projected vector is pooler_output.
            feats = out if isinstance(out, torch.Tensor) else out.pooler_output
            return feats.float()
        tower = self.model.vision_model if self.dual else self.model
        hidden = tower(pixel_values=pixels)
        if self.pool == "cls":
            return hidden.pooler_output.float()
        tokens = hidden.last_hidden_state.float()
        # CLIP and DINOv2 put a class token first; SigLIP has none.
        has_cls = self.model.config.model_type not in ("siglip", "siglip2", "siglip_vision_model")
        return (tokens[:, 1:] if has_cls else tokens).mean(1)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model_type": self.model.config.model_type}


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
    """An offline reference by name, a folder FOLDER_REFERENCES knows, else a CLIP / SigLIP /
    DINOv2 model by hub id or path."""
    if model_id in OFFLINE_REFERENCES:
        return OFFLINE_REFERENCES[model_id](device, dtype, pool)
    for marker, loader in FOLDER_REFERENCES.items():
        if (Path(model_id) / marker).is_file():
            return loader(Path(model_id), device, dtype, pool)
    return HFReference(
        model_id, device, dtype, pool, revision=revision, trust_remote_code=trust_remote_code
    )
