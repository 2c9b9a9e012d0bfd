"""The interface every VLM adapter implements: load, preprocess, capture E_pre/E_post, generate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

# A batch of model inputs as the adapter's preprocessor makes them (pixel_values, grids, ids, ...).
BatchInputs = dict[str, Any]

DEFAULT_PROMPT = "Describe the image."


@dataclass
class VisionOutput:
    """Per-image connector input and output; token counts may differ between images.

    pre[i]:  (T_pre_i, D_pre)   what the connector receives for image i (E_pre)
    post[i]: (T_post_i, D_post) what the connector hands to the LLM for image i (E_post)
    """

    pre: list[torch.Tensor]
    post: list[torch.Tensor]


@dataclass
class LMSequences:
    """A batch of LLM input sequences and where each token set sits in them (the SAE stages).

    kwargs: keyword arguments of the adapter's run_lm (inputs_embeds or input_ids, masks, pixels)
    spans:  token set -> per row a (n_i,) long tensor of sequence positions. Image sequences:
            "image" (the image tokens) and "text" (the prompt's tokens after them); text-only
            controls: "control" (the caption, where the image was) and "control_text" (the
            prompt after it)
    labels: (B, L) the token each position predicts, -100 where none (captions appended), or None
    """

    kwargs: dict[str, Any]
    spans: dict[str, list[torch.Tensor]]
    labels: torch.Tensor | None = None


class Preprocessor(ABC):
    """Turns PIL images (and a prompt, for generation) into model inputs.

    Kept separate from the adapter so that it pickles cheaply into DataLoader workers (spawn start
    method on macOS) without dragging the model along.
    """

    @abstractmethod
    def __call__(self, images: list[Image.Image], prompt: str | None = None) -> BatchInputs:
        """prompt=None: inputs for `encode` only; a prompt: inputs for `generate` as well."""


class VLMAdapter(ABC):
    """One VLM family behind one interface. Quirks live in the subclass that has them."""

    name: ClassVar[str]
    default_model_id: ClassVar[str]
    hook_point: ClassVar[str]  # dotted path of the connector module inside the model
    # True where generate(inputs, post) reads nothing of the inputs but the prompt, so that the
    # captions of several E_post variants of the same images can be one batch (captioning.py)
    generates_from_post_alone: ClassVar[bool] = False

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessor: Preprocessor,
        *,
        model_id: str,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model = model
        self.preprocessor = preprocessor
        self.model_id = model_id
        self.revision = revision
        self.device = device
        self.dtype = dtype

    @classmethod
    @abstractmethod
    def load(
        cls,
        model_id: str | None = None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> VLMAdapter:
        """Load weights by hub id or local path (None: `default_model_id`)."""

    @abstractmethod
    def encode(self, inputs: BatchInputs) -> VisionOutput:
        """Run the vision side and the connector; return per-image E_pre and E_post."""

    @abstractmethod
    def generate(
        self,
        inputs: BatchInputs,
        post: list[torch.Tensor] | None = None,
        *,
        max_new_tokens: int = 32,
    ) -> list[str]:
        """Greedy captions for a batch made with a prompt.

        post=None: the model's own E_post. Otherwise post[i] (same shape as encode's post[i])
        replaces the connector output for image i, so captions come from modified E_post.
        """

    @abstractmethod
    def connect(self, inputs: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the connector alone on per-image E_pre (e.g. reconstructed): -> per-image E_post.

        inputs: the batch's preprocessor output (layouts such as crops come from it).
        """

    def connector(self) -> torch.nn.Module:
        return self.model.get_submodule(self.hook_point)

    # The LLM side, for the SAE stages (cache_activations, train_sae, sae_*). Not abstract, so an
    # adapter that does not implement them still serves every other stage.

    def lm_blocks(self) -> torch.nn.ModuleList:
        """The LLM's decoder blocks: block l's output is hook_resid_post of layer l."""
        raise NotImplementedError(f"the {self.name} adapter does not expose its LLM blocks")

    def lm_readout(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(final norm, unembedding) of the LLM: logits = unembedding(norm(residual))."""
        raise NotImplementedError(f"the {self.name} adapter does not expose its LLM readout")

    def image_sequences(
        self, inputs: BatchInputs, captions: list[str] | None = None
    ) -> LMSequences:
        """The LLM's input for a batch made with a prompt, spans "image" and "text"; with
        captions, each row's caption (and end token) follows the prompt, with labels."""
        raise NotImplementedError(f"the {self.name} adapter does not build LLM sequences")

    def control_sequences(self, captions: list[str], prompt: str) -> LMSequences:
        """Text-only controls: the same prompt with row i's image replaced by captions[i]
        (no image token anywhere), spans "control" and "control_text"."""
        raise NotImplementedError(f"the {self.name} adapter does not build LLM sequences")

    def text_tokenizer(self) -> Any:
        """The LLM's tokenizer (token strings for the logit lens)."""
        raise NotImplementedError(f"the {self.name} adapter does not expose its tokenizer")

    def run_lm(self, seq: LMSequences) -> torch.Tensor:
        """Logits (B, L, V) of the LLM on the sequences (hooks on lm_blocks() see the forward)."""
        return self.model(**seq.kwargs).logits

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the model."""
        return {
            "adapter": self.name,
            "model_id": self.model_id,
            "revision": self.revision,
            "hook_point": self.hook_point,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }

    def to_device(self, inputs: BatchInputs) -> BatchInputs:
        """Move tensors to the model's device; floating tensors also to its dtype."""
        out: BatchInputs = {}
        for k, v in inputs.items():
            if isinstance(v, torch.Tensor):
                v = v.to(self.device, dtype=self.dtype if v.is_floating_point() else None)
            out[k] = v
        return out


@contextmanager
def capture_io(module: torch.nn.Module) -> Iterator[dict[str, Any]]:
    """Record the first positional input and the output of `module` during the block."""
    store: dict[str, Any] = {}

    def hook(_m: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        store["input"] = args[0] if args else next(iter(kwargs.values()))
        store["output"] = output

    handle = module.register_forward_hook(hook, with_kwargs=True)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def replace_output(module: torch.nn.Module, fn: Callable[[Any], Any]) -> Iterator[None]:
    """Replace the output of `module` by fn(output) during the block (used to inject E_post)."""

    def hook(_m: torch.nn.Module, _args: tuple, output: Any) -> Any:
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
