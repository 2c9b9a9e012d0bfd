"""Live perturbation for the app: one image -> E_post with a VLM adapter -> perturbed E_post ->
the caption before and after, with the scores the perturbation study reports.

Nothing loads until the first request (the app opens with no model loaded); the adapter and the
BERTScore backbone are then kept for the next ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from PIL import Image

from src.metrics.text import BertScorer
from src.models import load_adapter
from src.models.base import DEFAULT_PROMPT, VLMAdapter
from src.models.perturb import perturb
from src.runtime import resolve_device


@dataclass
class LiveResult:
    caption: str  # from the unperturbed E_post
    perturbed_caption: str
    scores: dict[str, float]  # score name -> value (the names of score_perturb's columns)


class LivePerturber:
    """Perturbs one image's E_post with eval_perturb's functions and captions both versions."""

    def __init__(self, model: str = "mini", model_id: str | None = None, device: str = "auto"):
        self.model, self.model_id, self.device_name = model, model_id, device

    @property
    def loaded(self) -> bool:
        return "adapter" in self.__dict__

    @cached_property
    def adapter(self) -> VLMAdapter:
        return load_adapter(self.model, self.model_id, device=resolve_device(self.device_name))

    @cached_property
    def bert(self) -> BertScorer:
        return BertScorer()

    @torch.no_grad()
    def run(
        self,
        image: Image.Image,
        mode: str,
        level: float,
        key: str,
        references: list[str] | None = None,
        max_new_tokens: int = 32,
    ) -> LiveResult:
        """Caption `image` from its E_post and from perturb(E_post, mode, level, key)."""
        inputs = self.adapter.preprocessor([image], prompt=DEFAULT_PROMPT)
        post = self.adapter.encode(inputs).post[0]  # (T, D)
        changed = perturb(post.float(), mode, level, key).to(post.dtype)
        clean, pert = (self.adapter.generate(inputs, [p], max_new_tokens=max_new_tokens)[0]
                       for p in (post, changed))  # fmt: skip
        scores: dict[str, Any] = {
            "relative change of E_post (Frobenius)": float(
                (changed - post).float().norm() / post.float().norm().clamp_min(1e-12)
            ),
            "bertscore_f1 perturbed vs unperturbed caption": float(
                self.bert([pert], [clean])["bertscore_f1"][0]
            ),
        }
        loss = getattr(self.adapter.model, "caption_loss", None)
        if loss is not None:  # mini's NLL: the study's image-text score where no CLIP ships
            both = loss(torch.stack([post, post]).to(self.adapter.dtype), [clean, pert])
            scores["NLL of the unperturbed caption given the image"] = float(both[0])
            scores["NLL of the perturbed caption given the image"] = float(both[1])
        if references:
            f1 = self.bert([clean, pert], [references, references])["bertscore_f1"]
            scores["bertscore_f1 unperturbed caption vs reference"] = float(f1[0])
            scores["bertscore_f1 perturbed caption vs reference"] = float(f1[1])
        return LiveResult(clean, pert, scores)
