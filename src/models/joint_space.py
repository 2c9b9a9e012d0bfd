"""Joint image-text spaces for patch-text similarity maps (seed A's attention maps, done right).

A JointSpace gives per-patch image embeddings IN THE SPACE WHERE THE MODEL COMPARES IMAGES WITH
TEXT, the text embedding in that space, and where in the original image its input came from:

  CLIP    each patch token through the vision tower's post_layernorm and visual_projection,
          the path the CLS token takes to become the image embedding (get_image_features).
  SigLIP  no CLS: the image embedding is an attention-pooling head (a learned probe attends to
          every patch, then a residual MLP). Each patch token is passed through that head ALONE
          (a one-token sequence: the probe's attention weight on it is 1), so it lands where the
          image embedding would be if the image were that one patch. The attention-weighted mix
          of the patches' value vectors is exactly what the head pools; only the MLP acts on the
          mix rather than on each patch. This is MaskCLIP's value-path idea (Zhou et al., 2022)
          applied to SigLIP's head; the similarity of a patch is its cosine to the text
          embedding (get_text_features), the quantity SigLIP's sigmoid logit scales.

  dual    a train_align dual encoder folder (offline: EfficientNet-Lite0 + MiniLM adapters): the
          tower's token grid (the feature map before its global pool, whose mean IS the pooled
          vector the adapter was trained on) through the image adapter token by token, so a
          patch lands where the image would if it were that cell alone (the same value-path
          reading as SigLIP's); text through the text adapter. The tower resizes the whole
          image to a square, so the view box is the whole image.

Offline there is no fixed install: the main job trains the dual encoder (data/align/<name>) and
passes its folder as --model_id; without one an offline run says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from src.errors import UserError


@dataclass(frozen=True)
class Box:
    """The part of an original image (pixels, left/top inclusive, right/bottom exclusive) that
    the model's input covers: the processor's resize and centre crop, undone."""

    left: float
    top: float
    right: float
    bottom: float


class JointSpace(Protocol):
    """What a patch-text similarity map needs from a dual encoder."""

    name: str
    method: str  # how patch tokens reach the joint space (recorded in manifests)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, 3, H, W) model input."""
        ...

    def view_box(self, width: int, height: int) -> Box:
        """Where the model input of an original width x height image came from."""
        ...

    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, rows, cols, D) per-patch embeddings in the joint space."""
        ...

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """(N, D) text embeddings in the joint space."""
        ...


def patch_text_similarity(
    space: JointSpace, pixels: torch.Tensor, texts: list[str]
) -> torch.Tensor:
    """(B, N, rows, cols) cosine similarity of every patch to every text."""
    p = F.normalize(space.patch_embeddings(pixels).float(), dim=-1)
    t = F.normalize(space.encode_text(texts).float(), dim=-1)
    return torch.einsum("brcd,nd->bnrc", p, t)


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)


def processor_view_box(processor: Any, width: int, height: int) -> Box:
    """Undo a transformers image processor's geometry: resize (shortest edge kept in aspect,
    the long edge truncated as transformers does; or a fixed height x width, stretched), then
    an optional centre crop. Returns the original-pixel box the model input covers."""
    size = processor.size if processor.do_resize else None
    if size is None:
        new_w, new_h = width, height
    elif _get(size, "shortest_edge") and not _get(size, "longest_edge"):
        s = int(_get(size, "shortest_edge"))
        short, long = sorted((width, height))
        new_short, new_long = s, int(s * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    elif _get(size, "height") and _get(size, "width"):
        new_w, new_h = int(_get(size, "width")), int(_get(size, "height"))
    else:
        raise UserError(f"{type(processor).__name__}: resize rule {size} is not supported")
    left, top, crop_w, crop_h = 0, 0, new_w, new_h
    if getattr(processor, "do_center_crop", False):
        crop = processor.crop_size
        crop_w, crop_h = int(_get(crop, "width")), int(_get(crop, "height"))
        left, top = (new_w - crop_w) // 2, (new_h - crop_h) // 2
    sx, sy = new_w / width, new_h / height
    return Box(left / sx, top / sy, (left + crop_w) / sx, (top + crop_h) / sy)


class _HFJoint:
    """Shared parts of the hub dual encoders: processor, tokenizer, device and dtype."""

    method = ""
    text_padding: bool | str = True

    def __init__(self, model: Any, processor: Any, tokenizer: Any, name: str) -> None:
        self.model, self.processor, self.tokenizer, self.name = model, processor, tokenizer, name
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def view_box(self, width: int, height: int) -> Box:
        return processor_view_box(self.processor, width, height)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(texts, padding=self.text_padding, truncation=True,
                             return_tensors="pt").to(self.device)  # fmt: skip
        out = self.model.get_text_features(**enc)
        return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()

    @staticmethod
    def _grid(tokens: torch.Tensor) -> torch.Tensor:
        b, t, d = tokens.shape
        side = round(t**0.5)
        if side * side != t:
            raise UserError(f"{t} patch tokens do not form a square grid")
        return tokens.reshape(b, side, side, d)


class ClipJoint(_HFJoint):
    method = "patch tokens -> post_layernorm -> visual_projection (CLIP's image-embedding path)"

    @torch.no_grad()
    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        h = vm(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        return self._grid(self.model.visual_projection(vm.post_layernorm(h[:, 1:])).float())


class SiglipJoint(_HFJoint):
    method = ("each patch token through the attention-pooling head alone (value path + "
              "residual MLP; MaskCLIP-style), cosine to get_text_features")  # fmt: skip
    text_padding = "max_length"  # SigLIP's text tower was trained on max-length padding

    @torch.no_grad()
    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        vm = self.model.vision_model
        h = vm(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        b, t, d = h.shape  # after post_layernorm: what the head reads
        alone = vm.head(h.reshape(b * t, 1, d))  # a one-token sequence per patch
        return self._grid(alone.reshape(b, t, -1).float())


JOINT_FAMILIES: dict[str, type[_HFJoint]] = {
    "clip": ClipJoint,
    "siglip": SiglipJoint,
    "siglip2": SiglipJoint,
}


class DualJoint:
    """A train_align dual encoder folder as a JointSpace (see the module docstring)."""

    method = "tower token grid through the image adapter, token by token"

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype) -> None:
        from src.models.dual_encoder import load_dual_encoder
        from src.models.mini import OFFLINE_TOWERS

        self.dual = load_dual_encoder(folder, device=device, dtype=dtype)
        vision = self.dual.config.vision
        if vision not in OFFLINE_TOWERS:
            raise UserError(f"{folder}: its vision tower {vision!r} has no offline token grid")
        tower, self.transform = OFFLINE_TOWERS[vision](TOKEN_GRID)
        self.tower = tower.to(device=device, dtype=dtype).eval()
        self.name, self.device, self.dtype = str(folder), device, dtype

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return self.transform(images)

    def view_box(self, width: int, height: int) -> Box:
        return Box(0.0, 0.0, float(width), float(height))  # squashed to a square, not cropped

    @torch.no_grad()
    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.tower(pixel_values.to(self.device, self.dtype))  # (B, g*g, D_v)
        joint = self.dual.encode_image_tokens(tokens.float())  # (B, g*g, r)
        return joint.reshape(tokens.shape[0], TOKEN_GRID, TOKEN_GRID, -1)

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return self.dual.encode_text(texts)


TOKEN_GRID = 7  # EfficientNet-Lite0's 7 x 7 map at 224 px: its own resolution, nothing pooled
# Offline dual encoders by name -> loader(device, dtype); a train_align folder is taken as is.
OFFLINE_JOINT_SPACES: dict[str, Callable[[torch.device, torch.dtype], JointSpace]] = {}
NO_OFFLINE_SPACE = (
    "no joint image-text space is installed offline: the offline encoders (EfficientNet-Lite0, "
    "CRAFT) have no text side. Pass --model_id with a train_align dual-encoder folder (the main "
    "job trains one in data/align/), or a CLIP or SigLIP hub id or local path."
)


def load_joint_space(
    model_id: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> JointSpace:
    """An offline dual encoder by name (None: the default one), a train_align folder, else a hub
    CLIP / SigLIP."""
    from src.models.dual_encoder import is_dual_encoder

    if model_id is not None and is_dual_encoder(model_id):
        return DualJoint(Path(model_id), device, dtype)
    if model_id is None or model_id in OFFLINE_JOINT_SPACES:
        if not OFFLINE_JOINT_SPACES:
            raise UserError(NO_OFFLINE_SPACE)
        name = model_id or next(iter(OFFLINE_JOINT_SPACES))
        return OFFLINE_JOINT_SPACES[name](device, dtype)
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    model_type = AutoConfig.from_pretrained(model_id, **kw).model_type
    if model_type not in JOINT_FAMILIES:
        raise UserError(
            f"{model_id} ({model_type}) has no joint image-text space; use one of "
            f"{', '.join(JOINT_FAMILIES)} (a DINOv2 or a vision tower alone has no text side)"
        )
    model = AutoModel.from_pretrained(model_id, dtype=dtype, **kw).to(device).eval()
    return JOINT_FAMILIES[model_type](
        model,
        AutoImageProcessor.from_pretrained(model_id, **kw),
        AutoTokenizer.from_pretrained(model_id, **kw),
        model_id,
    )
