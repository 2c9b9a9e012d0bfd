"""What the Hugging Face VLM adapters share: loading, chat-template preprocessing, the connector
hooks around get_image_features, and generation with substituted connector outputs."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from PIL import Image

from src.models.base import (
    BatchInputs,
    LMSequences,
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
        text = self.prompt_text(prompt)
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

    def prompt_text(self, prompt: str) -> str:
        """The chat template's text for one image and the prompt (the image as its marker)."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def text_tokenizer(self) -> Any:
        return self.processor.tokenizer

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class NestedImagesPreprocessor(HFPreprocessor):
    def images_argument(self, images: list[Image.Image]) -> Any:
        return [[im] for im in images]


class HFAdapter(VLMAdapter):
    """Base for transformers VLMs. A subclass names its class and connector and says how the
    connector's input and output split into images (and how to put them back)."""

    model_class: ClassVar[str]  # attribute of the transformers package
    # the text the chat template puts where the image goes (the processor expands it)
    image_marker: ClassVar[str] = "<image>"
    # per-token (B, L) inputs besides input_ids / attention_mask that a longer sequence extends
    token_keys: ClassVar[tuple[str, ...]] = ()
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

    # The LLM side for the SAE stages: positions come from the processor's own input_ids.

    def lm_blocks(self) -> torch.nn.ModuleList:
        return self.model.get_decoder().layers

    def lm_readout(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.model.get_decoder().norm, self.model.get_output_embeddings()

    def text_tokenizer(self) -> Any:
        return self.preprocessor.text_tokenizer()

    def image_token_id(self) -> int:
        cfg = self.model.config
        found = getattr(cfg, "image_token_id", None)
        return found if found is not None else cfg.image_token_index

    def image_sequences(
        self, inputs: BatchInputs, captions: list[str] | None = None
    ) -> LMSequences:
        if "input_ids" not in inputs:
            raise ValueError("image_sequences needs inputs made with a prompt")
        batch = self.to_device(inputs)
        ids, mask = batch["input_ids"], batch["attention_mask"].bool()
        image, text = [], []
        for row, keep in zip(ids == self.image_token_id(), mask, strict=True):
            pos = row.nonzero().squeeze(1)
            after = torch.arange(int(pos.max()) + 1, row.numel(), device=row.device)
            image.append(pos.cpu())
            text.append(after[keep[after]].cpu())  # left padding: every prompt ends at L - 1
        labels = None
        if captions is not None:
            batch, labels = self._append_captions(batch, captions)
        return LMSequences(batch, {"image": image, "text": text}, labels)

    def _append_captions(
        self, batch: BatchInputs, captions: list[str]
    ) -> tuple[BatchInputs, torch.Tensor]:
        """Each caption and the tokenizer's end token right after the (left-padded) prompt."""
        tok = self.preprocessor.text_tokenizer()
        end = tok.eos_token_id
        caps = [tok(c, add_special_tokens=False)["input_ids"] + [end] for c in captions]
        b, length = batch["input_ids"].shape
        width = max(len(c) for c in caps)
        pad = tok.pad_token_id if tok.pad_token_id is not None else end
        ext = torch.full((b, width), pad, dtype=torch.long)
        ext_mask = torch.zeros(b, width, dtype=batch["attention_mask"].dtype)
        labels = torch.full((b, length + width), -100, dtype=torch.long)
        for i, c in enumerate(caps):
            ext[i, : len(c)], ext_mask[i, : len(c)] = torch.tensor(c), 1
            labels[i, length - 1 : length - 1 + len(c)] = torch.tensor(c)
        out = dict(batch)
        dev = batch["input_ids"].device
        out["input_ids"] = torch.cat([batch["input_ids"], ext.to(dev)], 1)
        out["attention_mask"] = torch.cat([batch["attention_mask"], ext_mask.to(dev)], 1)
        for k in self.token_keys:
            if k in out:
                out[k] = torch.cat([out[k], out[k].new_zeros(b, width)], 1)
        return out, labels.to(dev)

    def control_sequences(self, captions: list[str], prompt: str) -> LMSequences:
        text = self.preprocessor.prompt_text(prompt)
        if text.count(self.image_marker) != 1:
            raise ValueError(f"the chat template must place one {self.image_marker} per image")
        before, after = text.split(self.image_marker)
        # An image token needs no space around it; words do, or the caption's last word and the
        # prompt's first one would merge into one token.
        before += "" if not before or before[-1].isspace() else " "
        after = after if after[:1].isspace() else " " + after
        tok = self.preprocessor.text_tokenizer()
        special = set(tok.all_special_ids)
        rows, control, rest = [], [], []
        for c in captions:
            # Tokenised whole, as the processor tokenises the prompt; the caption's tokens are
            # those whose characters overlap it (character offsets of the fast tokenizer).
            enc = tok(before + c + after, return_offsets_mapping=True)
            lo, hi = len(before), len(before) + len(c)
            cap = [
                j
                for j, (s, e) in enumerate(enc["offset_mapping"])
                if e > s and s < hi and e > lo and enc["input_ids"][j] not in special
            ]
            rows.append(enc["input_ids"])
            control.append(torch.tensor(cap, dtype=torch.long))
            start = cap[-1] + 1 if cap else len(enc["input_ids"])
            rest.append(torch.arange(start, len(enc["input_ids"])))
        width = max(len(r) for r in rows)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):  # right-padded: every row starts at position 0
            ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        kwargs: BatchInputs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
        }
        for k in self.token_keys:
            kwargs[k] = torch.zeros_like(kwargs["input_ids"])
        return LMSequences(kwargs, {"control": control, "control_text": rest})
