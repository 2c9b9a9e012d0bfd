"""Idefics2: SigLIP patch tokens (optionally of several crops per image) -> perceiver-resampler
connector (64 latents per crop) -> Mistral."""

from __future__ import annotations

import torch

from src.models.base import BatchInputs
from src.models.hf_common import HFAdapter, NestedImagesPreprocessor


class Idefics2Adapter(HFAdapter):
    name = "idefics2"
    default_model_id = "HuggingFaceM4/idefics2-8b"
    model_class = "Idefics2ForConditionalGeneration"
    hook_point = "model.connector"
    preprocessor_class = NestedImagesPreprocessor  # the processor wants one image list per text
    vision_keys = ("pixel_values", "pixel_attention_mask")

    def _layout(self, vis: BatchInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Which crops are real, per image, and which patches of each real crop are real.

        pixel_values (B, N, C, H, W) pads every image to N crops with all-zero crops, and every
        crop to H x W with a pixel mask; the model drops zero crops and masks padded patches the
        same way (Idefics2Model.get_image_features).
        Returns crops_per_image (B,) and patch_mask (n_real, H/p * W/p).
        """
        pv = vis["pixel_values"]
        b, n = pv.shape[:2]
        flat = pv.reshape(b * n, *pv.shape[2:])
        real = (flat == 0.0).flatten(1).sum(1) != flat[0].numel()
        crops = real.view(b, n).sum(1)
        mask = vis.get("pixel_attention_mask")
        if mask is None:
            mask = torch.ones(b * n, *pv.shape[-2:], dtype=torch.bool, device=pv.device)
        else:
            mask = mask.reshape(b * n, *mask.shape[2:])
        mask = mask[real].bool()
        p = self.model.config.vision_config.patch_size
        grid = mask.unfold(1, p, p).unfold(2, p, p)  # (n_real, H/p, W/p, p, p)
        patch_mask = grid.flatten(-2).all(-1).flatten(1)  # a patch is real if all its pixels are
        return crops, patch_mask

    def split(
        self, vis: BatchInputs, pre: torch.Tensor, post: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """pre (n_real, P, D_vis), post (n_real, 64, D_text) -> per image: the real patches of
        all its crops (sum_c P_c, D_vis) and all its latents (crops * 64, D_text)."""
        crops, patch_mask = self._layout(vis)
        pre_rows = [pre[c][patch_mask[c]] for c in range(pre.shape[0])]
        pre_out, post_out, start = [], [], 0
        for k in crops.tolist():
            pre_out.append(torch.cat(pre_rows[start : start + k]))
            post_out.append(post[start : start + k].reshape(-1, post.shape[-1]))
            start += k
        return pre_out, post_out

    def connect_batch(self, vis: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scatter each image's real patches back into its padded crops, then resample."""
        crops, patch_mask = self._layout(vis)
        dim = pre[0].shape[-1]
        padded = pre[0].new_zeros(patch_mask.shape[0], patch_mask.shape[1], dim)
        start = 0
        for rows, k in zip(pre, crops.tolist(), strict=True):
            padded[start : start + k][patch_mask[start : start + k]] = rows
            start += k
        out = self.connector()(padded, attention_mask=patch_mask)  # (n_real, latents, D_text)
        return list(o.reshape(-1, o.shape[-1]) for o in torch.split(out, crops.tolist()))

    def merge(self, vis: BatchInputs, post: list[torch.Tensor]) -> torch.Tensor:
        crops, _ = self._layout(vis)
        latents = self.model.config.perceiver_config.resampler_n_latents
        rows = [p.reshape(k, latents, -1) for p, k in zip(post, crops.tolist(), strict=True)]
        return torch.cat(rows)  # (n_real, 64, D_text)
