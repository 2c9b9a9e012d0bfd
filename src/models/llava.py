"""LLaVA (1.5): CLIP ViT patch tokens -> 2-layer MLP projector -> Vicuna / Llama."""

from __future__ import annotations

import torch

from src.models.base import BatchInputs
from src.models.hf_common import HFAdapter


class LlavaAdapter(HFAdapter):
    name = "llava"
    default_model_id = "llava-hf/llava-1.5-7b-hf"
    model_class = "LlavaForConditionalGeneration"
    # transformers >= 4.52 nests the projector under .model (LlavaModel)
    hook_point = "model.multi_modal_projector"

    def split(
        self, vis: BatchInputs, pre: torch.Tensor, post: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        # Fixed resolution: every image gives the same patch count, (B, T, D) splits by row.
        return list(pre.unbind(0)), list(post.unbind(0))

    def merge(self, vis: BatchInputs, post: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(post)  # (B, T, D_text)

    def connect_batch(self, vis: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.connector()(torch.stack(pre)).unbind(0))
