"""`mini`: a VLM assembled from offline parts, vision tokens -> trained MLP connector -> causal LM.

Default: EfficientNet-Lite0 (16 pooled tokens of 1280) -> MLP -> SmolLM2-135M-Instruct (576).
The same class serves any vision tower / LM pair a connector folder names (train_connector),
each LM with its own prompt layout (towers.PromptLayout).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers.cache_utils import DynamicCache

from src.data.io import local_path, portable
from src.errors import UserError
from src.metrics.text import token_nll
from src.models.base import (
    DEFAULT_PROMPT,
    BatchInputs,
    LMSequences,
    Preprocessor,
    VisionOutput,
    VLMAdapter,
)
from src.models.connector import ConnectorConfig, MLPConnector, load_connector
from src.models.craft import CRAFT, CraftTokens, ImageNetSquareResize
from src.models.tower_folder import is_tower_folder, load_tower_folder
from src.models.towers import (
    CHATML,
    EFFICIENTNET,
    EfficientNetTokens,
    PromptLayout,
    SquareResize,
    load_causal_lm,
    prompt_layout,
)

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_CONNECTOR_DIR = WEIGHTS_DIR / "mini"
IMAGE_SIZE = 224


class HFVisionTokens(torch.nn.Module):
    """Patch tokens of a hub vision encoder (CLIP / SigLIP / DINOv2 ...): (B, T, D)."""

    def __init__(self, model_id: str, *, trust_remote_code: bool = False) -> None:
        super().__init__()
        from transformers import AutoModel

        model = AutoModel.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        # CLIPModel / SiglipModel hold the image tower as .vision_model; DINOv2 is the tower.
        self.net = getattr(model, "vision_model", model).eval().requires_grad_(False)
        self.dim = self.net.config.hidden_size

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.net(pixel_values=pixel_values).last_hidden_state


class HFImagePreprocessor:
    """Picklable wrapper of a hub image processor: list of images -> (B, 3, H, W)."""

    def __init__(self, model_id: str) -> None:
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(model_id)

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


def _efficientnet_tower(grid: int) -> tuple[torch.nn.Module, Any]:
    return EfficientNetTokens(grid=grid), SquareResize(IMAGE_SIZE)  # (B, grid^2, 1280)


def _craft_tower(grid: int) -> tuple[torch.nn.Module, Any]:
    # CRAFT's VGG16-BN expects ImageNet mean/std; 14 x 14 conv5_2 map pooled to (B, grid^2, 512)
    return CraftTokens(grid=grid), ImageNetSquareResize(IMAGE_SIZE)


# Offline towers by the name a connector config records: grid -> (tower, image transform).
# Any other name is a hub id or local path (HFVisionTokens).
OFFLINE_TOWERS: dict[str, Callable[[int], tuple[torch.nn.Module, Any]]] = {
    EFFICIENTNET: _efficientnet_tower,
    CRAFT: _craft_tower,
}


class AlignedTower(torch.nn.Module):
    """A train_align dual encoder's image side as a tower: (B, 3, H, W) -> (B, 1, d_align), the
    unit joint-space vector of its frozen tower + image adapter (seed E, phase 2)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        from src.models.dual_encoder import load_dual_encoder

        self.dual = load_dual_encoder(folder)
        self.adapters = self.dual.adapters  # registered, so .to() moves it
        ref = self.dual.vision_tower
        self.frozen = torch.nn.ModuleList(
            m for m in vars(ref).values() if isinstance(m, torch.nn.Module)
        )
        self.dim = self.dual.config.d_align

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.dual.encode_image(pixel_values.float())[:, None]


def _aligned_tower(folder: Path, _grid: int) -> tuple[torch.nn.Module, Any]:
    tower = AlignedTower(folder)
    return tower, PixelsOnly(tower.dual.preprocessor)


class PixelsOnly:
    """A reference preprocessor's pixel tensor: images -> (B, 3, H, W)."""

    def __init__(self, preprocess: Any) -> None:
        self.preprocess = preprocess

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        return self.preprocess(images)["pixel_values"]


# Folders usable as a tower, by the file that marks them: (folder, grid) -> (tower, transform).
FOLDER_TOWERS: dict[str, Callable[[Path, int], tuple[torch.nn.Module, Any]]] = {
    "dual_encoder.json": _aligned_tower,  # train_align's output: one joint-space vector
}


def build_vision(
    config: ConnectorConfig, *, trust_remote_code: bool = False
) -> tuple[torch.nn.Module, Any]:
    """(tower, image transform) for the vision name a connector config records: an offline
    tower, a folder FOLDER_TOWERS knows, else a hub id or path."""
    if config.vision in OFFLINE_TOWERS:
        return OFFLINE_TOWERS[config.vision](config.grid)
    folder = local_path(config.vision)
    if is_tower_folder(folder):  # a fine-tuned tower (train_kernel_align): base name + delta

        def base(name: str, grid: int) -> tuple[torch.nn.Module, Any]:
            return build_vision(replace(config, vision=name, grid=grid),
                                trust_remote_code=trust_remote_code)  # fmt: skip

        return load_tower_folder(folder, config.grid, base)
    for marker, build in FOLDER_TOWERS.items():
        if (local_path(config.vision) / marker).is_file():
            return build(local_path(config.vision), config.grid)
    tower = HFVisionTokens(config.vision, trust_remote_code=trust_remote_code)
    return tower, HFImagePreprocessor(config.vision)


class MiniPreprocessor(Preprocessor):
    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, images: list[Image.Image], prompt: str | None = None) -> BatchInputs:
        out: BatchInputs = {"pixel_values": self.transform(images)}
        if prompt is not None:
            out["prompt"] = prompt
        return out


@dataclass
class PrefixStates:
    """Per-layer (keys, values) of U image prefixes, (U, heads, P, head_dim) each, and the logit
    at each prefix's last position (U, V)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_logit: torch.Tensor

    @property
    def length(self) -> int:
        return self.kv[0][0].shape[-2]

    @classmethod
    def cat(cls, parts: list[PrefixStates]) -> PrefixStates:
        kv = [(torch.cat([p.kv[i][0] for p in parts]), torch.cat([p.kv[i][1] for p in parts]))
              for i in range(len(parts[0].kv))]  # fmt: skip
        return cls(kv, torch.cat([p.last_logit for p in parts]))


class ComposedVLM(torch.nn.Module):
    """vision (frozen) -> connector (trained) -> LM (frozen), in the LM's prompt layout.

    Sequence given to the LM: layout.before + [image tokens] + layout.after (the prompt in it),
    and, in training, the caption followed by layout.eos. With SmolLM2's ChatML (no system turn):
        <|im_start|>user\\n  [image tokens]  \\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n
    The prefix length is the same for every image, so batched generation from inputs_embeds needs
    no padding.
    """

    def __init__(
        self,
        vision: torch.nn.Module,
        connector: MLPConnector,
        lm: torch.nn.Module,
        tokenizer: Any,
        layout: PromptLayout = CHATML,
    ) -> None:
        super().__init__()
        self.vision = vision
        self.connector = connector
        self.lm = lm
        self.tokenizer = tokenizer
        self.layout = layout
        self.eos_id = tokenizer.convert_tokens_to_ids(layout.eos)
        # A token missing from the vocabulary maps to <unk> silently: captions would then end
        # with <unk> and generation would never stop on it.
        if self.eos_id is None or self.eos_id == tokenizer.unk_token_id:
            raise UserError(
                f"the LM's tokenizer has no {layout.eos!r} token to end captions with: this LM "
                "needs its own prompt layout (src.models.towers.OFFLINE_LMS)"
            )

    @cache  # noqa: B019 - one model per process; the cache holds a few small id tensors
    def _prompt_ids(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids before and after the image tokens: (L_before,), (L_after,)."""
        enc, layout = self.tokenizer, self.layout
        before = enc(layout.before, add_special_tokens=False)["input_ids"]
        after = enc(layout.after.format(prompt=prompt), add_special_tokens=False)["input_ids"]
        return torch.tensor(before, dtype=torch.long), torch.tensor(after, dtype=torch.long)

    def embed_prompt(self, post: torch.Tensor, prompt: str) -> torch.Tensor:
        """post (B, T, D) -> inputs_embeds (B, L_before + T + L_after, D)."""
        before, after = (t.to(post.device) for t in self._prompt_ids(prompt))
        # The embedding module's forward, not its .weight: Gemma's multiplies by sqrt(hidden)
        # there, so this gives exactly the vectors the LM computes from input_ids itself.
        emb = self.lm.get_input_embeddings()
        b = post.shape[0]
        return torch.cat(
            [
                emb(before).unsqueeze(0).expand(b, -1, -1).to(post.dtype),
                post,
                emb(after).unsqueeze(0).expand(b, -1, -1).to(post.dtype),
            ],
            dim=1,
        )

    def caption_loss(
        self, post: torch.Tensor, captions: list[str], prompt: str = DEFAULT_PROMPT
    ) -> torch.Tensor:
        """Per-image mean token NLL of caption + layout.eos given the image prefix: (B,)."""
        prefix = self.embed_prompt(post, prompt)  # (B, P, D)
        target = self._caption_targets(captions, post.device)
        width = target.shape[1]
        # The logit at position p predicts token p + 1: caption token j sits at P + j, so the
        # last caption token is not fed (it predicts nothing) and only the last `width` logits
        # are computed (the LM head over Gemma's 262k entries at every prefix position was a
        # third of a training step): (B, width, V), contiguous, one row per target.
        text_emb = self.lm.get_input_embeddings()(target[:, :-1].clamp(min=0)).to(post.dtype)
        mask = torch.ones(prefix.shape[0], prefix.shape[1] + width - 1, device=post.device)
        mask[:, prefix.shape[1] :] = (target[:, :-1] != -100).float()
        logits = self.lm(inputs_embeds=torch.cat([prefix, text_emb], 1), attention_mask=mask,
                         logits_to_keep=width).logits  # fmt: skip
        nll = token_nll(logits, target)  # (B, width)
        return nll.sum(1) / (target != -100).sum(1)

    def _caption_targets(self, captions: list[str], device: torch.device) -> torch.Tensor:
        """caption + <|im_end|> token ids, right-padded with -100: (B, width)."""
        ids = [
            self.tokenizer(c, add_special_tokens=False)["input_ids"] + [self.eos_id]
            for c in captions
        ]
        target = torch.full((len(ids), max(len(i) for i in ids)), -100, dtype=torch.long)
        for row, seq in enumerate(ids):
            target[row, : len(seq)] = torch.tensor(seq)
        return target.to(device)

    @torch.no_grad()
    def prefix_states(self, post: torch.Tensor, prompt: str = DEFAULT_PROMPT) -> PrefixStates:
        """The LM's keys and values over each image's prefix (image tokens and prompt), and the
        prefix's last logit: what caption_nll continues from. post (U, T, D)."""
        out = self.lm(inputs_embeds=self.embed_prompt(post, prompt), use_cache=True,
                      logits_to_keep=1)  # fmt: skip
        kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        return PrefixStates(kv, out.logits[:, -1])

    @torch.no_grad()
    def caption_nll(
        self, prefix: PrefixStates, image: list[int], captions: list[str]
    ) -> torch.Tensor:
        """caption_loss(post[image], captions) continued from cached prefix states: (B,).

        Scoring tables pair each image with several captions (levels, the original, another
        image's) and the prefix is about half of every sequence, so it is computed once per image
        (prefix_states) and row b continues image[b]'s. Equal to caption_loss up to float
        rounding (attention over cached keys sums in another order; tests/test_scoring.py pins
        the tolerance).
        """
        rows = torch.as_tensor(image, dtype=torch.long, device=prefix.last_logit.device)
        target = self._caption_targets(captions, rows.device)  # (B, W)
        # The prefix's last logit predicts caption token 0, caption token j's predicts j + 1:
        # the last token is not fed, so the logits are (B, W - 1, V) in place, with no copy.
        nll = [token_nll(prefix.last_logit[rows, None], target[:, :1])]
        if target.shape[1] > 1:
            cache = DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in prefix.kv],
                                 config=self.lm.config)  # fmt: skip
            fed = target[:, :-1]
            text_emb = self.lm.get_input_embeddings()(fed.clamp(min=0)).to(prefix.kv[0][0].dtype)
            mask = torch.ones(len(rows), prefix.length + fed.shape[1], device=rows.device)
            mask[:, prefix.length :] = (fed != -100).float()
            logits = self.lm(inputs_embeds=text_emb, attention_mask=mask,
                             past_key_values=cache).logits  # fmt: skip
            nll.append(token_nll(logits, target[:, 1:]))
        return torch.cat(nll, 1).sum(1) / (target != -100).sum(1)

    @torch.no_grad()
    def generate(
        self, post: torch.Tensor, prompt: str = DEFAULT_PROMPT, max_new_tokens: int = 32
    ) -> list[str]:
        """Greedy captions from connector outputs post (B, T, D).

        The greedy loop of transformers' generate (no logits processors: SmolLM2's generation
        config sets none), except that a caption that has ended leaves the batch: generate keeps
        every row to the longest caption, and the sample's captions (18 tokens on average, the
        longest of a batch of 16 about 28) spent a third of their decoding steps on finished
        rows. The prefix has one length for every image, so no row needs padding or a mask.
        """
        rows = post.shape[0]
        if max_new_tokens <= 0:
            return [""] * rows
        out = self.lm(inputs_embeds=self.embed_prompt(post, prompt), use_cache=True,
                      logits_to_keep=1)  # fmt: skip
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1)
        alive = torch.arange(rows, device=post.device)
        tokens: list[list[int]] = [[] for _ in range(rows)]
        for step in range(max_new_tokens):
            for row, t in zip(alive.tolist(), token.tolist(), strict=True):
                tokens[row].append(t)
            going = token != self.eos_id
            if step == max_new_tokens - 1 or not going.any():
                break
            if not going.all():
                keep = going.nonzero().squeeze(1)
                cache.reorder_cache(keep)
                alive, token = alive[keep], token[keep]
            out = self.lm(input_ids=token[:, None], past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1)
        return [t.strip() for t in self.tokenizer.batch_decode(tokens, skip_special_tokens=True)]


def build_composed(
    connector: MLPConnector,
    *,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
    check_dims: bool = True,
) -> tuple[ComposedVLM, Any]:
    """The VLM a connector belongs to, and its image transform.

    check_dims=False builds the frozen parts around a placeholder connector (training sizes the
    real one from them afterwards).
    """
    cfg = connector.config
    vision, transform = build_vision(cfg, trust_remote_code=trust_remote_code)
    if check_dims and vision.dim != cfg.in_dim:
        raise UserError(
            f"connector expects {cfg.in_dim}-d vision tokens but {cfg.vision} gives {vision.dim}"
        )
    lm, tok = load_causal_lm(cfg.lm, device, dtype, trust_remote_code=trust_remote_code)
    if check_dims and lm.config.hidden_size != cfg.out_dim:
        raise UserError(
            f"connector outputs {cfg.out_dim}-d vectors but {cfg.lm} embeds at "
            f"{lm.config.hidden_size}: this connector was trained for another LM"
        )
    model = ComposedVLM(vision, connector, lm, tok, prompt_layout(cfg.lm)).to(device=device)
    model.vision.to(dtype=dtype)
    model.connector.to(dtype=dtype)
    return model.eval(), transform


class MiniAdapter(VLMAdapter):
    name = "mini"
    # Recorded as '<repo>/src/models/weights/mini', so a moved checkout still matches its vectors.
    default_model_id = portable(DEFAULT_CONNECTOR_DIR)
    hook_point = "connector"
    # the prefix is image tokens and a fixed prompt: nothing else of the inputs is read
    generates_from_post_alone = True

    model: ComposedVLM

    @classmethod
    def load(
        cls,
        model_id: str | None = None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> MiniAdapter:
        """model_id: a connector folder (connector.safetensors + config.json)."""
        folder = local_path(model_id or cls.default_model_id)
        connector = load_connector(folder)
        model, transform = build_composed(
            connector, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        return cls(
            model,
            MiniPreprocessor(transform),
            model_id=portable(folder),
            revision=revision,
            device=device,
            dtype=dtype,
        )

    def describe(self) -> dict[str, Any]:
        cfg = self.model.connector.config
        return {**super().describe(), "vision": cfg.vision, "lm": cfg.lm, "grid": cfg.grid}

    @torch.no_grad()
    def encode(self, inputs: BatchInputs) -> VisionOutput:
        x = self.to_device(inputs)["pixel_values"]
        pre = self.model.vision(x)  # (B, T, 1280): fixed token count, so a plain unbind is right
        post = self.model.connector(pre)  # (B, T, 576)
        return VisionOutput(list(pre.unbind(0)), list(post.unbind(0)))

    @torch.no_grad()
    def connect(self, inputs: BatchInputs, pre: list[torch.Tensor]) -> list[torch.Tensor]:
        x = torch.stack([p.to(self.device, self.dtype) for p in pre])
        return list(self.model.connector(x).unbind(0))

    @torch.no_grad()
    def generate(
        self,
        inputs: BatchInputs,
        post: list[torch.Tensor] | None = None,
        *,
        max_new_tokens: int = 32,
    ) -> list[str]:
        if post is None:
            post = self.encode(inputs).post
        prompt = inputs.get("prompt") or DEFAULT_PROMPT
        stacked = torch.stack([p.to(self.device, self.dtype) for p in post])
        return self.model.generate(stacked, prompt, max_new_tokens)

    # The LLM side for the SAE stages. The prefix is before + image tokens + after, one length
    # for every image, so the spans are the same ranges in every row.

    def lm_blocks(self) -> torch.nn.ModuleList:
        return self.model.lm.get_decoder().layers

    def lm_readout(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        return self.model.lm.get_decoder().norm, self.model.lm.get_output_embeddings()

    @torch.no_grad()
    def image_sequences(
        self, inputs: BatchInputs, captions: list[str] | None = None
    ) -> LMSequences:
        post = torch.stack([p.to(self.device, self.dtype) for p in self.encode(inputs).post])
        prompt = inputs.get("prompt") or DEFAULT_PROMPT
        embeds = self.model.embed_prompt(post, prompt)  # (B, P, D)
        (b, p), lb, t = embeds.shape[:2], len(self.model._prompt_ids(prompt)[0]), post.shape[1]
        spans = {"image": [torch.arange(lb, lb + t)] * b, "text": [torch.arange(lb + t, p)] * b}
        mask = torch.ones(b, p, device=self.device)
        labels = None
        if captions is not None:
            # as caption_loss builds it: caption + eos after the prompt, right-padded
            target = self.model._caption_targets(captions, self.device)  # (B, W)
            text = self.model.lm.get_input_embeddings()(target.clamp(min=0)).to(embeds.dtype)
            embeds = torch.cat([embeds, text], 1)
            mask = torch.cat([mask, (target != -100).float()], 1)
            labels = torch.full(mask.shape, -100, dtype=torch.long, device=self.device)
            labels[:, p - 1 : p - 1 + target.shape[1]] = target  # position p - 1 predicts token 0
        return LMSequences({"inputs_embeds": embeds, "attention_mask": mask}, spans, labels)

    def control_sequences(self, captions: list[str], prompt: str) -> LMSequences:
        before, after = self.model._prompt_ids(prompt)
        tok = self.model.tokenizer
        caps = [torch.tensor(tok(c, add_special_tokens=False)["input_ids"], dtype=torch.long)
                for c in captions]  # fmt: skip
        rows = [torch.cat([before, c, after]) for c in caps]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.model.eos_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for i, r in enumerate(rows):  # right-padded: every row starts at position 0
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        lb, la = len(before), len(after)
        spans = {
            "control": [torch.arange(lb, lb + len(c)) for c in caps],
            "control_text": [torch.arange(lb + len(c), lb + len(c) + la) for c in caps],
        }
        kwargs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        return LMSequences(kwargs, spans)

    def text_tokenizer(self) -> Any:
        return self.model.tokenizer

    def run_lm(self, seq: LMSequences) -> torch.Tensor:
        return self.model.lm(**seq.kwargs).logits


class MiniGemmaAdapter(MiniAdapter):
    """`mini-gemma`: the same EfficientNet-Lite0 tokens (16 of 1280) -> 2-layer MLP -> Gemma 3
    270M (base, GEMMA_BASE prompt layout), trained by train_connector like `mini`. Everything
    about the model is in its connector folder's config; only the default folder differs."""

    name = "mini-gemma"
    default_model_id = portable(WEIGHTS_DIR / "mini-gemma")
