"""Caption embeddings from an LLM or a sentence encoder: hidden states at any layers, pooled.

Registry: seed A's LLMs by their short names (hub ids), the offline LMs of towers.OFFLINE_LMS
(SmolLM2, Gemma 3 270M) and MiniLM; anything else is a hub id or local path, loaded as a causal
LM (AutoModelForCausalLM) when its config is one, else as an encoder (AutoModel).

Layer l = hidden_states[l] of the base model: 0 is the embedding output, -1 the last layer
(after the final norm, as transformers returns it). Pooling over a caption's own tokens:
  mean  the mean over its tokens; padding and the special tokens the tokenizer adds (<bos>,
        [CLS], [SEP]) are excluded, so a causal LM's attention-sink BOS does not dominate
  last  its last own token (a causal LM's summary of the whole caption)
Captions are tokenised one by one, sorted by length and batched with right padding (a causal
LM's real tokens never see the pads; an encoder's are masked), then put back in order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from src.models.towers import GEMMA3, SMOLLM2, load_causal_lm, minilm_dir

Pool = Literal["mean", "last"]

# seed A's config.yaml names -> hub ids
SEED_LLMS: dict[str, str] = {
    "llama": "huggyllama/llama-7b",
    "llama3.1": "meta-llama/Llama-3.1-8B",
    "qwen": "Qwen/Qwen2.5-7B",
    "gemma3": "google/gemma-3-4b-pt",
    "internlm": "internlm/internlm2_5-7b",
}
# short offline names -> towers' OFFLINE_LMS names
OFFLINE_ALIASES: dict[str, str] = {"smollm2": SMOLLM2, "gemma3-270m": GEMMA3}
MINILM_NAME = "minilm"
CAUSAL_SUFFIXES = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")


@dataclass
class TextEncoder:
    """A frozen text model: base (returns hidden_states), its tokenizer, what it is."""

    name: str
    base: torch.nn.Module
    tokenizer: Any
    kind: str  # causal_lm | encoder
    n_layers: int  # hidden_states has n_layers + 1 entries
    device: torch.device

    def resolve_layer(self, layer: int) -> int:
        idx = layer if layer >= 0 else self.n_layers + 1 + layer
        if not 0 <= idx <= self.n_layers:
            raise ValueError(f"layer {layer} out of range for {self.name} (0..{self.n_layers})")
        return idx

    def describe(self) -> dict[str, Any]:
        cfg = self.base.config
        return {
            "text_model": self.name,
            "kind": self.kind,
            "model_type": cfg.model_type,
            "n_layers": self.n_layers,
            "hidden_size": cfg.hidden_size,
            "dtype": str(next(self.base.parameters()).dtype).removeprefix("torch."),
        }


def from_model(name: str, model: torch.nn.Module, tokenizer: Any, kind: str) -> TextEncoder:
    """Wrap a loaded model; a causal LM's base model (no LM head: the 262k-vocab logits of Gemma
    would cost more than the layers)."""
    base = model.base_model if kind == "causal_lm" else model
    base.eval().requires_grad_(False)
    n = int(
        getattr(base.config, "num_hidden_layers", 0)
        or base.config.get_text_config().num_hidden_layers
    )
    return TextEncoder(name, base, tokenizer, kind, n, next(base.parameters()).device)


def _load_minilm(device: torch.device, dtype: torch.dtype) -> TextEncoder:
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_dir()
    model = AutoModel.from_pretrained(folder, dtype=dtype).to(device)
    return from_model(MINILM_NAME, model, AutoTokenizer.from_pretrained(folder), "encoder")


def _load_offline_lm(name: str) -> Callable[[torch.device, torch.dtype], TextEncoder]:
    def load(device: torch.device, dtype: torch.dtype) -> TextEncoder:
        lm, tok = load_causal_lm(OFFLINE_ALIASES[name], device, dtype)
        return from_model(name, lm, tok, "causal_lm")

    return load


OFFLINE_TEXT: dict[str, Callable[[torch.device, torch.dtype], TextEncoder]] = {
    MINILM_NAME: _load_minilm,
    **{n: _load_offline_lm(n) for n in OFFLINE_ALIASES},
}


def model_id_of(name: str) -> str:
    """The id a name stands for: a seed short name's hub id, else the name itself."""
    return SEED_LLMS.get(name, OFFLINE_ALIASES.get(name, name))


def load_text_encoder(
    name: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> TextEncoder:
    """An offline text model by name, a seed short name, or a hub id / local path."""
    if name in OFFLINE_TEXT:
        return OFFLINE_TEXT[name](device, dtype)
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    mid = model_id_of(name)
    kw = {"revision": revision, "trust_remote_code": trust_remote_code}
    cfg = AutoConfig.from_pretrained(mid, **kw)
    # the checkpoint's own architecture says what it is (BertModel vs LlamaForCausalLM, ...)
    causal = any(a.endswith(CAUSAL_SUFFIXES) for a in getattr(cfg, "architectures", None) or [])
    cls = AutoModelForCausalLM if causal else AutoModel
    model = cls.from_pretrained(mid, dtype=dtype, **kw).to(device)
    tok = AutoTokenizer.from_pretrained(mid, **kw)
    return from_model(mid, model, tok, "causal_lm" if causal else "encoder")


def own_token_mask(ids: list[int], special: list[int]) -> list[bool]:
    """Which tokens are the caption's own (not a special token the tokenizer added)."""
    own = [not s for s in special]
    return own if any(own) else [True] * len(ids)  # an all-special caption: keep what there is


@torch.no_grad()
def embed_texts(
    enc: TextEncoder,
    texts: list[str],
    layers: list[int],
    pool: Pool,
    *,
    batch_size: int = 32,
    max_length: int = 256,
) -> dict[int, Tensor]:
    """{layer: (len(texts), D) float32}, one pooled row per text, in the given order."""
    tok = enc.tokenizer(
        texts,
        add_special_tokens=True,
        truncation=True,
        max_length=max_length,
        return_special_tokens_mask=True,
    )
    ids, special = tok["input_ids"], tok["special_tokens_mask"]
    idx = [enc.resolve_layer(lay) for lay in layers]
    out = {lay: torch.zeros(len(texts), enc.base.config.hidden_size) for lay in layers}
    order = sorted(range(len(texts)), key=lambda i: (len(ids[i]), i))
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.zeros(len(rows), width, dtype=torch.long)
        attn = torch.zeros(len(rows), width, dtype=torch.long)
        own = torch.zeros(len(rows), width, dtype=torch.bool)
        for r, i in enumerate(rows):
            n = len(ids[i])
            input_ids[r, :n] = torch.tensor(ids[i])
            attn[r, :n] = 1
            own[r, :n] = torch.tensor(own_token_mask(ids[i], special[i]))
        hs = enc.base(
            input_ids=input_ids.to(enc.device),
            attention_mask=attn.to(enc.device),
            output_hidden_states=True,
        ).hidden_states
        for lay, j in zip(layers, idx, strict=True):
            out[lay][rows] = pool_tokens(hs[j].float().cpu(), own, pool)
    return out


def pool_tokens(h: Tensor, own: Tensor, pool: Pool) -> Tensor:
    """h (B, L, D), own (B, L) bool -> (B, D): the mean of the own tokens, or the last one."""
    if pool == "mean":
        m = own.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    if pool == "last":
        pos = torch.arange(own.shape[1]).expand_as(own)
        last = pos.masked_fill(~own, -1).max(1).values  # (B,)
        return h[torch.arange(h.shape[0]), last]
    raise ValueError(f"unknown pooling {pool!r}; expected mean or last")
