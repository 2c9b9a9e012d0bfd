"""What the Hugging Face VLM adapters share: loading, chat-template preprocessing, the connector
hooks around get_image_features, and generation with substituted connector outputs."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from PIL import Image

from src.models.base import (
    BatchInputs,
    Preprocessor,
    VisionOutput,
    VLMAdapter,
    capture_io,
    replace_output,
)


class HFPreprocessor(Preprocessor):
    """Wraps a transformers processor (picklable). Without a prompt: only the image processor's
    outputs; with one: the chat template with one image and the prompt, left-padded."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, images: list[Image.Image], prompt: str | None = None) -> BatchInputs:
        if prompt is None:
            improc = self.processor.image_processor
            return dict(improc(images=self.images_argument(images), return_tensors="pt"))
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        tok = self.processor.tokenizer
        side, tok.padding_side = tok.padding_side, "left"  # new tokens follow every prompt
        try:
            out = self.processor(
                text=[text] * len(images),
                images=self.images_argument(images),
                padding=True,
                return_tensors="pt",
            )
        finally:
            tok.padding_side = side
        return dict(out)

    def images_argument(self, images: list[Image.Image]) -> Any:
        """Processors that take several images per text want one list per text."""
        return images

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class NestedImagesPreprocessor(HFPreprocessor):
    def images_argument(self, images: list[Image.Image]) -> Any:
        return [[im] for im in images]


class HFAdapter(VLMAdapter):
    """Base for transformers VLMs. A subclass names its class and connector and says how the
    connector's input and output split into images (and how to put them back)."""

    model_class: ClassVar[str]  # attribute of the transformers package
    preprocessor_class: ClassVar[type[HFPreprocessor]] = HFPreprocessor
    vision_keys: ClassVar[tuple[str, ...]] = ("pixel_values",)

    @classmethod
    def load(
        cls,
        model_id: str | None = None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> HFAdapter:
        import transformers

        model_id = model_id or cls.default_model_id
        kw = {"revision": revision, "trust_remote_code": trust_remote_code}
        preprocessor = cls.build_preprocessor(model_id, kw)
        model_cls = getattr(transformers, cls.model_class)
        model = model_cls.from_pretrained(model_id, dtype=dtype, **kw).to(device).eval()
        return cls(
            model,
            preprocessor,
            model_id=model_id,
            revision=revision,
            device=device,
            dtype=dtype,
        )

    @classmethod
    def build_preprocessor(cls, model_id: str, kw: dict[str, Any]) -> Preprocessor:
        from transformers import AutoProcessor

        return cls.preprocessor_class(AutoProcessor.from_pretrained(model_id, **kw))

    def vision_inputs(self, inputs: BatchInputs) -> BatchInputs:
        return {k: v for k, v in self.to_device(inputs).items() if k in self.vision_keys}

    @torch.no_grad()
    def encode(self, inputs: BatchInputs) -> VisionOutput:
        vis = self.vision_inputs(inputs)
        with capture_io(self.connector()) as store:
            self.model.get_image_features(**vis)
        pre, post = self.split(vis, store["input"], store["output"])
        return VisionOutput(pre, post)

    @torch.no_grad()
    def generate(
        self,
        inputs: BatchInputs,
        post: list[torch.Tensor] | None = None,
        *,
        max_new_tokens: int = 32,
    ) -> list[str]:
        if "input_ids" not in inputs:
            raise ValueError("generate needs inputs made with a prompt (preprocessor(images, p))")
        batch = self.to_device(inputs)
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        if post is None:
            out = self.model.generate(**batch, **kwargs)
        else:
            vis = {k: v for k, v in batch.items() if k in self.vision_keys}
            try:
                merged = self.merge(vis, [p.to(self.device, self.dtype) for p in post])
            except (RuntimeError, IndexError) as e:  # E_post of the wrong size: say so
                shapes = [tuple(p.shape) for p in post]
                raise ValueError(f"substituted E_post shapes {shapes} do not fit: {e}") from None

            def substitute(original: torch.Tensor) -> torch.Tensor:
                if original.shape != merged.shape:
                    raise ValueError(
                        f"substituted E_post has shape {tuple(merged.shape)}, the connector "
                        f"emits {tuple(original.shape)}"
                    )
                return merged.to(original.dtype)

            with replace_output(self.connector(), substitute):
                out = self.model.generate(**batch, **kwargs)
        return self.preprocessor.decode(out[:, batch["input_ids"].shape[1] :])

    @torch.no_grad()
    def connect(self, inputs: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        vis = self.vision_inputs(inputs)
        return self.connect_batch(vis, [p.to(self.device, self.dtype) for p in pre])

    @abstractmethod
    def connect_batch(self, vis: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        """The connector on per-image E_pre (split's layout) -> per-image E_post."""

    @abstractmethod
    def split(
        self, vis: BatchInputs, pre: torch.Tensor, post: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Connector input/output of a batch -> per-image (T_i, D) lists, spatial order."""

    @abstractmethod
    def merge(self, vis: BatchInputs, post: list[torch.Tensor]) -> torch.Tensor:
        """The inverse of split's post half: per-image E_post -> what the connector emits."""
