"""Qwen2.5-VL and Qwen3.5: native-resolution ViT -> patch merger (2x2 patches -> one token) ->
Qwen LLM. Token counts differ per image (image_grid_thw)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from src.models.base import BatchInputs, Preprocessor
from src.models.hf_common import HFAdapter, HFPreprocessor

IMAGE_PAD = "<|image_pad|>"


class QwenImagePreprocessor(HFPreprocessor):
    """Images-only stand-in for Qwen's composite processor, used when that cannot load: its video
    half needs torchvision, which images do not. It does what the processor does for images:
    the image processor gives pixel_values and image_grid_thw, and each <|image_pad|> of the chat
    template becomes grid_thw.prod() // merge_size**2 tokens."""

    def __init__(self, image_processor: Any, tokenizer: Any, chat_template: str | None) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.chat_template = chat_template

    def __call__(self, images: list[Image.Image], prompt: str | None = None) -> BatchInputs:
        vis = dict(self.image_processor(images=images, return_tensors="pt"))
        if prompt is None:
            return vis
        text = self.prompt_text(prompt)
        if text.count(IMAGE_PAD) != 1:
            raise ValueError(f"the chat template must place one {IMAGE_PAD} per image")
        merge = self.image_processor.merge_size**2
        counts = (vis["image_grid_thw"].prod(-1) // merge).tolist()
        texts = [text.replace(IMAGE_PAD, IMAGE_PAD * n) for n in counts]
        enc = dict(self.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt"))
        # The models compute M-RoPE positions from per-token modality ids (1 = image token).
        pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        enc["mm_token_type_ids"] = (enc["input_ids"] == pad_id).int()
        return {**enc, **vis}

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def prompt_text(self, prompt: str) -> str:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=True
        )

    def text_tokenizer(self) -> Any:
        return self.tokenizer


def _processor_chat_template(model_id: str, kw: dict[str, Any]) -> str | None:
    """The processor's chat template as saved beside the weights (jinja or json file)."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(
            model_id, name, _raise_exceptions_for_missing_entries=False, revision=kw.get("revision")
        )
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


class QwenMergerAdapter(HFAdapter):
    """The merger sees each image's patches grouped by merge unit (the processor emits the 2x2
    patches of one merged token consecutively): pre rows 4j..4j+3 of an image become its post
    token j. Images are concatenated along the first axis."""

    hook_point = "model.visual.merger"
    vision_keys = ("pixel_values", "image_grid_thw")
    # the image between its start and end markers: the text-only control drops all three
    image_marker = "<|vision_start|><|image_pad|><|vision_end|>"
    token_keys = ("mm_token_type_ids",)

    @classmethod
    def build_preprocessor(cls, model_id: str, kw: dict[str, Any]) -> Preprocessor:
        from transformers import AutoImageProcessor, AutoTokenizer

        try:
            return super().build_preprocessor(model_id, kw)
        except (AttributeError, ImportError, ValueError, TypeError):
            # Without torchvision the composite processor fails on its video half.
            tok = AutoTokenizer.from_pretrained(model_id, **kw)
            template = _processor_chat_template(model_id, kw) or tok.chat_template
            return QwenImagePreprocessor(
                AutoImageProcessor.from_pretrained(model_id, **kw),
                tok,
                template,
            )

    def _counts(self, vis: BatchInputs) -> tuple[list[int], int]:
        unit = self.model.model.visual.spatial_merge_size**2
        pre_counts = vis["image_grid_thw"].prod(-1).tolist()
        return pre_counts, unit

    def _window_order(self, vis: BatchInputs) -> torch.Tensor | None:
        """Merged-token permutation the vision tower applies before the merger (None: none)."""
        return None

    def split(
        self, vis: BatchInputs, pre: torch.Tensor, post: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        counts, unit = self._counts(vis)
        order = self._window_order(vis)
        if order is not None:
            # Put merged groups back in spatial order, as the model does after the merger.
            reverse = torch.argsort(order)
            pre = pre.reshape(-1, unit, pre.shape[-1])[reverse].reshape(-1, pre.shape[-1])
            post = post[reverse]
        pre_out = list(torch.split(pre, counts))
        post_out = list(torch.split(post, [c // unit for c in counts]))
        return pre_out, post_out

    def connect_batch(self, vis: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        # The merger maps each group of `unit` consecutive rows on its own, so the window order
        # the ViT uses does not matter here: spatial order in, spatial order out.
        unit = self.model.model.visual.spatial_merge_size**2
        out = self.connector()(torch.cat(pre))
        return list(torch.split(out, [p.shape[0] // unit for p in pre]))

    def merge(self, vis: BatchInputs, post: list[torch.Tensor]) -> torch.Tensor:
        merged = torch.cat(post)
        order = self._window_order(vis)
        return merged if order is None else merged[order]


class Qwen25VLAdapter(QwenMergerAdapter):
    name = "qwen2.5vl"
    default_model_id = "Qwen/Qwen2.5-VL-7B-Instruct"
    model_class = "Qwen2_5_VLForConditionalGeneration"

    def _window_order(self, vis: BatchInputs) -> torch.Tensor:
        # Qwen2.5-VL's ViT uses windowed attention: it permutes merged groups into window order
        # before its blocks, so the merger's input and output are in window order; the model
        # undoes it after the merger (Qwen2_5_VisionTransformer.forward).
        from transformers.vision_utils import get_vision_window_index

        visual = self.model.model.visual
        order, _ = get_vision_window_index(
            vis["image_grid_thw"],
            spatial_merge_size=visual.spatial_merge_size,
            window_size=visual.window_size,
            patch_size=visual.patch_size,
        )
        return order.to(vis["image_grid_thw"].device)


class Qwen35Adapter(QwenMergerAdapter):
    name = "qwen3.5"
    default_model_id = "Qwen/Qwen3.5-9B"
    model_class = "Qwen3_5ForConditionalGeneration"
