"""Frozen text towers for a dual encoder: texts -> one pooled vector each.

Registry: `minilm` (all-MiniLM-L6-v2 offline, as sentence-transformers pools it), the offline
LMs by their OFFLINE_LMS name (an LLM's text embedding: the masked mean of its last hidden
layer), or any hub id / local path of a sentence encoder or decoder (the same masked mean of
AutoModel's last_hidden_state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from src.models.towers import OFFLINE_LMS, load_causal_lm


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """hidden (B, L, D), mask (B, L) -> (B, D) mean over the unmasked tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class TextTower:
    """embed(texts) -> (N, dim) float32 on CPU, in batches of `batch_size`."""

    name: str
    dim: int
    pooling: str = "masked mean of the last hidden layer"

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, batch_size: int) -> None:
        self.model, self.tokenizer = model.eval().requires_grad_(False), tokenizer
        self.device, self.batch_size = device, batch_size
        if self.tokenizer.pad_token is None:  # decoders often ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def hidden(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**enc).last_hidden_state

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s : s + self.batch_size], padding=True, truncation=True,
                                 max_length=256, return_tensors="pt").to(self.device)  # fmt: skip
            out.append(_masked_mean(self.hidden(enc).float(), enc["attention_mask"]).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def describe(self) -> dict[str, Any]:
        return {"text_tower": self.name, "dim": self.dim, "pooling": self.pooling}


class MiniLMTower(TextTower):
    """all-MiniLM-L6-v2 from its PyPI package, 384-d, mean pooled and L2-normalised (as
    sentence-transformers does; the same vectors as the `minilm` reference)."""

    pooling = "masked mean, L2-normalised (sentence-transformers' pooling for this model)"

    def __init__(self, device: torch.device, dtype: torch.dtype, batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        from src.models.towers import minilm_dir

        folder = minilm_dir()
        model = AutoModel.from_pretrained(folder, dtype=dtype).to(device)
        super().__init__(model, AutoTokenizer.from_pretrained(folder), device, batch_size)
        self.name, self.dim = "minilm", model.config.hidden_size

    def embed(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(super().embed(texts), dim=-1)


class CausalLMTower(TextTower):
    """An offline LM's text embedding (OFFLINE_LMS name): its last hidden layer (after the final
    norm), mean over the text's tokens."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, batch_size: int = 32):
        lm, tok = load_causal_lm(name, device, dtype)
        super().__init__(lm, tok, device, batch_size)
        self.name, self.dim = name, lm.config.hidden_size

    def hidden(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(**enc, output_hidden_states=True).hidden_states[-1]


class HubTextTower(TextTower):
    """A hub id or local path: AutoModel's last_hidden_state (a sentence encoder, or the base
    model of a decoder), masked mean."""

    def __init__(
        self,
        model_id: str,
        device: torch.device,
        dtype: torch.dtype,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        kw = {"revision": revision, "trust_remote_code": trust_remote_code}
        model = AutoModel.from_pretrained(model_id, dtype=dtype, **kw).to(device)
        super().__init__(model, AutoTokenizer.from_pretrained(model_id, **kw), device, batch_size)
        self.name, self.dim = model_id, model.config.hidden_size


OFFLINE_TEXT_TOWERS: dict[str, Callable[[torch.device, torch.dtype], TextTower]] = {
    "minilm": MiniLMTower,
    **{name: (lambda d, t, n=name: CausalLMTower(n, d, t)) for name in OFFLINE_LMS},
}


def load_text_tower(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> TextTower:
    """An offline text tower by name, else a hub id / local path."""
    if name in OFFLINE_TEXT_TOWERS:
        return OFFLINE_TEXT_TOWERS[name](device, dtype)
    return HubTextTower(name, device, dtype, revision=revision, trust_remote_code=trust_remote_code)
