"""A dual encoder built on two frozen towers: an MLP adapter on each into one joint space, saved
as safetensors + JSON (dual_encoder.safetensors, dual_encoder.json), symmetrically.

    image: frozen vision tower (pooled vector, D_v) -> ImageAdapter -> (d_align,)
    text:  frozen text tower   (pooled vector, D_t) -> TextAdapter  -> (d_align,)
    joint space: L2-normalised; the first r coordinates (an MRL radius) normalised again are
    a smaller embedding of the same model.

`load_dual_encoder(folder)` gives the object later stages use: encode_image(pixels or tower
features), encode_text(texts), encode_image_tokens(tower tokens) and align_score(image, text).

Per-token image features (the alignment suite's patch-text maps): the adapter is a per-vector
MLP, so it applies to every token of the tower's token map as well as to the pooled vector
(their mean, for the offline towers). encode_image_tokens(tokens (B, T, D_v)) returns (B, T, d)
unit vectors in the joint space; their cosine with encode_text(...) is a patch-text similarity.
The adapter was trained on pooled vectors only, so token features lie off its training
distribution (a MaskCLIP-style reading): compare maps within a model, not across models.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from src.data.io import atomic_write, write_json_atomic
from src.errors import UserError
from src.metrics.contrastive import CLIP_MAX_SCALE, clamp_scale, init_log_scale

WEIGHTS_NAME = "dual_encoder.safetensors"
CONFIG_NAME = "dual_encoder.json"


@dataclass
class AlignArch:
    """The towers, the adapters and the loss a user chooses (train_align's model flags)."""

    vision: str = field(
        default="efficientnet-lite0",
        metadata={
            "help": "vision tower: efficientnet-lite0 or craft-vgg16 (offline), a CLIP / SigLIP "
            "/ DINOv2 hub id or path, or a folder loadable as one (pooled vectors)"
        },
    )
    vision_pool: str = field(
        default="cls", metadata={"help": "the tower's pooled vector: cls (its own) or mean"}
    )
    text: str = field(
        default="minilm",
        metadata={
            "help": "text tower: minilm (offline), an offline LM name (its text embedding, e.g. "
            "smollm2-135m-instruct) or a hub id / path of a sentence encoder"
        },
    )
    d_align: int = field(default=512, metadata={"help": "joint space width"})
    hidden_dim: int = field(default=1024, metadata={"help": "adapter hidden width"})
    dropout: float = field(
        default=0.1, metadata={"help": "dropout inside each adapter (never on its output)"}
    )
    radii: list[int] = field(
        default_factory=lambda: [128, 256, 512],
        metadata={"help": "MRL radii (nested prefixes of the joint space), each counted once"},
    )
    radius_weights: list[float] | None = field(
        default=None, metadata={"help": "one weight per radius (default: equal, summing to 1)"}
    )
    logit_scale: float = field(
        default=1 / 0.07, metadata={"help": "initial logit scale (CLIP: 1/0.07), clamped at 100"}
    )
    fixed_temperature: bool = field(
        default=False, metadata={"help": "keep the logit scale fixed instead of learning it"}
    )

    def weights(self) -> list[float]:
        """The radius weights actually used (recorded in the config)."""
        if self.radius_weights is None:
            return [1 / len(self.radii)] * len(self.radii)
        if len(self.radius_weights) != len(self.radii):
            raise UserError(
                f"--radius_weights has {len(self.radius_weights)} values for "
                f"{len(self.radii)} radii"
            )
        return list(self.radius_weights)

    def check(self) -> None:
        if max(self.radii) > self.d_align or len(set(self.radii)) != len(self.radii):
            raise UserError(
                f"--radii {self.radii} must be distinct and <= --d_align {self.d_align}"
            )
        self.weights()


@dataclass(kw_only=True)
class DualEncoderConfig(AlignArch):
    """Everything needed to rebuild a dual encoder (its dual_encoder.json)."""

    d_vision: int
    d_text: int
    revision: str | None = None
    training: dict[str, Any] = field(default_factory=dict)  # command, data, splits, results


class Adapter(torch.nn.Module):
    """(..., d_in) -> (..., d_out): LayerNorm, Linear, GELU, Dropout, Linear.

    The input LayerNorm puts frozen features of any scale (EfficientNet's pooled channels span
    orders of magnitude) on one footing; dropout sits inside only, so a training embedding is
    never randomly masked (seed E's adapter ended in dropout)."""

    def __init__(self, d_in: int, hidden: int, d_out: int, dropout: float) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.LayerNorm(d_in),
            torch.nn.Linear(d_in, hidden),
            torch.nn.GELU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, d_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class DualAdapters(torch.nn.Module):
    """The trainable part: an adapter per modality and the log logit scale."""

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.image = Adapter(c.d_vision, c.hidden_dim, c.d_align, c.dropout)
        self.text = Adapter(c.d_text, c.hidden_dim, c.d_align, c.dropout)
        self.log_scale = torch.nn.Parameter(
            torch.tensor(init_log_scale(c.logit_scale)), requires_grad=not c.fixed_temperature
        )

    def scale(self) -> torch.Tensor:
        """The logit scale, exp(log_scale) clamped at CLIP's 100: ()."""
        return clamp_scale(self.log_scale, CLIP_MAX_SCALE)


def save_dual(adapters: DualAdapters, folder: Path) -> Path:
    """folder/dual_encoder.safetensors + folder/dual_encoder.json (weights first, config last)."""
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in adapters.state_dict().items()}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, str(tmp)))
    config = {**asdict(adapters.config), "radius_weights": adapters.config.weights(),
              "final_logit_scale": adapters.scale().item()}  # fmt: skip
    write_json_atomic(folder / CONFIG_NAME, config)
    return folder


def is_dual_encoder(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_NAME).is_file()


def load_adapters(folder: Path) -> DualAdapters:
    folder = Path(folder)
    if not is_dual_encoder(folder) or not (folder / WEIGHTS_NAME).is_file():
        raise UserError(f"{folder} is not a dual encoder (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
    raw = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    raw.pop("final_logit_scale", None)
    adapters = DualAdapters(DualEncoderConfig(**raw))
    try:
        adapters.load_state_dict(load_file(str(folder / WEIGHTS_NAME)))
    except RuntimeError as e:
        raise UserError(f"{folder / WEIGHTS_NAME} does not match its {CONFIG_NAME}: {e}") from None
    return adapters.eval().requires_grad_(False)


class DualEncoder:
    """A trained dual encoder with its frozen towers (loaded on first use): vectors in the joint
    space, unit norm, at the full width or at an MRL radius."""

    def __init__(self, adapters: DualAdapters, device: torch.device, dtype: torch.dtype,
                 folder: Path | None = None) -> None:  # fmt: skip
        self.adapters = adapters.to(device)
        self.config = adapters.config
        self.device, self.dtype, self.folder = device, dtype, folder
        self._vision: Any = None
        self._text: Any = None

    @property
    def vision_tower(self) -> Any:
        """The frozen pooled vision tower (a src.models.reference.ReferenceEncoder)."""
        if self._vision is None:
            from src.models.reference import load_reference

            self._vision = load_reference(self.config.vision, device=self.device,
                                          dtype=self.dtype, pool=self.config.vision_pool,
                                          revision=self.config.revision)  # fmt: skip
        return self._vision

    @property
    def preprocessor(self) -> Any:
        """PIL images -> {'pixel_values': ...} for encode_image."""
        return self.vision_tower.preprocessor

    @property
    def text_tower(self) -> Any:
        if self._text is None:
            from src.models.text_towers import load_text_tower

            self._text = load_text_tower(self.config.text, device=self.device, dtype=self.dtype)
        return self._text

    def _joint(self, z: torch.Tensor, radius: int | None) -> torch.Tensor:
        return F.normalize(z[..., : radius or z.shape[-1]].float(), dim=-1)

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor, radius: int | None = None) -> torch.Tensor:
        """pixels (B, 3, H, W) (the preprocessor's) or tower features (B, D_v) -> (B, r)."""
        if x.dim() == 4:
            x = self.vision_tower.encode({"pixel_values": x}, [])
        if x.shape[-1] != self.config.d_vision:
            raise UserError(f"{x.shape[-1]}-d image features; this dual encoder expects "
                            f"{self.config.d_vision}-d {self.config.vision} features")  # fmt: skip
        return self._joint(self.adapters.image(x.to(self.device, torch.float32)), radius)

    @torch.no_grad()
    def encode_image_tokens(self, tokens: torch.Tensor, radius: int | None = None) -> torch.Tensor:
        """tower tokens (B, T, D_v) -> (B, T, r): each token through the image adapter (see the
        module docstring for what these per-token features mean)."""
        return self.encode_image(tokens.reshape(-1, tokens.shape[-1]), radius).view(
            *tokens.shape[:-1], -1
        )

    @torch.no_grad()
    def encode_text_features(self, x: torch.Tensor, radius: int | None = None) -> torch.Tensor:
        """text tower features (N, D_t) -> (N, r)."""
        return self._joint(self.adapters.text(x.to(self.device, torch.float32)), radius)

    def encode_text(self, texts: list[str], radius: int | None = None) -> torch.Tensor:
        """texts -> (N, r) unit vectors in the joint space."""
        return self.encode_text_features(self.text_tower.embed(texts), radius)

    def align_score(self, image: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine in the joint space of image b (pixels or features, (B, ...)) and texts[b]:
        (B,) in [-1, 1]. An offline image-text score of this dual encoder (not CLIPScore)."""
        return (self.encode_image(image) * self.encode_text(texts)).sum(-1)

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {"dual_encoder": str(self.folder) if self.folder else None, "vision": c.vision,
                "text": c.text, "d_align": c.d_align, "radii": c.radii}  # fmt: skip


def load_dual_encoder(
    folder: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> DualEncoder:
    """A dual encoder folder (train_align's output) -> DualEncoder."""
    return DualEncoder(load_adapters(Path(folder)), torch.device(device), dtype, Path(folder))


class DualImageReference:
    """A dual encoder's image side as a reference encoder (src.models.reference's interface):
    pixels -> its frozen tower -> image adapter -> unit vectors in the joint space (d_align).
    load_reference(folder) returns one for a dual encoder folder, so any stage that takes a
    vision tower by name or folder (eval_probe, extract_clip) reads the aligned space."""

    modality = "image"

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, pool: str) -> None:
        self.dual = load_dual_encoder(folder, device=device, dtype=dtype)
        self.name, self.device, self.dtype, self.pool = str(folder), device, dtype, pool

    @property
    def preprocessor(self) -> Any:
        return self.dual.preprocessor

    def encode(self, inputs: dict[str, Any], items: list) -> torch.Tensor:
        return self.dual.encode_image(self.dual.vision_tower.encode(inputs, items))

    def describe(self) -> dict[str, Any]:
        return {"reference": self.name, "modality": "image", "space": "dual encoder joint space",
                **self.dual.describe()}  # fmt: skip
