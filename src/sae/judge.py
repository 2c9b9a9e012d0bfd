"""Seed C's LLM-judge protocol, offline-capable: is a feature's description about the image?

A feature's description is its logit-lens words (src.sae.runs.lens_tokens: the decoder
direction through the LLM's final norm and unembedding). A judge is asked, per (feature, image),
whether those words describe the image, and its answer is read from its next-token
distribution: P(YES) / (P(YES) + P(NO)) over the tokenizer's single tokens for " YES" / "YES"
(and the same for NO; where the tokenizer splits YES or NO, the first of Yes / No, yes / no
that it keeps whole, and the question asks for that pair), judged YES above 0.5. No free text
is generated or parsed, so the answer is deterministic.

Judges (JUDGES, by name):
- `text-lm`: a causal text LM (default the offline SmolLM2-135M-Instruct; any OFFLINE_LMS name,
  hub id or local path via --judge_model, loaded by load_causal_lm). It cannot see the image:
  it is shown the image's reference caption in its place (`shown` = "reference caption").
- `vlm`: a hub chat VLM (AutoModelForImageTextToText + its processor's chat template, id via
  --judge_model) shown the image itself (`shown` = "image"). For cluster users.

Per layer the share of YES is compared on three sets of features of each image: its top
features (own), as many features drawn at random (seeded) from those alive in that layer
(active on some measured image token) judged against its own caption / image (random), and its
top features judged against another image's caption / image (mismatched, the derangement
sae_semantic uses); bootstrap CIs over images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from src.errors import UserError
from src.metrics.stats import summarize

# answer words, in order of preference: the first pair the tokenizer keeps as single tokens
ANSWERS = (("YES", "NO"), ("Yes", "No"), ("yes", "no"))


@dataclass(frozen=True)
class Shown:
    """What a judge is shown about one image: its reference caption, and the image file."""

    caption: str
    image: Path | None = None


def question(words: str, caption: str | None, pair: tuple[str, str] = ANSWERS[0]) -> str:
    """The judge's question about one feature (`caption` None: the image is shown instead)."""
    about = "this image" if caption is None else f'an image described as "{caption}"'
    return (
        f"A feature of a vision-language model, active on {about}, is described by the words: "
        f"{words}.\nDo these words describe the image? Answer {pair[0]} or {pair[1]}."
    )


def answer_ids(
    tokenizer: Any, pairs: tuple[tuple[str, str], ...] = ANSWERS
) -> tuple[tuple[str, str], list[int], list[int]]:
    """The first (yes, no) pair of `pairs` whose words the tokenizer keeps whole, as " WORD" or
    "WORD" (one token, not unknown), and the ids of those tokens for each."""
    for pair in pairs:
        sets = []
        for word in pair:
            enc = [tokenizer.encode(v, add_special_tokens=False) for v in (f" {word}", word)]
            sets.append(sorted({e[0] for e in enc if len(e) == 1} - {tokenizer.unk_token_id}))
        if sets[0] and sets[1] and not set(sets[0]) & set(sets[1]):
            return pair, sets[0], sets[1]
    raise UserError(f"the judge's tokenizer keeps none of the answer pairs {pairs} as one token")


def yes_share(logits: torch.Tensor, yes: list[int], no: list[int]) -> torch.Tensor:
    """(B, V) next-token logits -> (B,) P(YES) / (P(YES) + P(NO)), float32."""
    p = logits.float().softmax(-1)
    y, n = p[:, yes].sum(-1), p[:, no].sum(-1)
    return y / (y + n)


def chat_text(tokenizer: Any, text: str) -> str:
    """The user turn and the assistant's start where the tokenizer has a chat template; a plain
    document ending in 'Answer:' where it has none."""
    if getattr(tokenizer, "chat_template", None):
        msgs = [{"role": "user", "content": text}]
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return f"{text}\nAnswer:"


@dataclass
class Judge:
    """What a judge is built from (make_judge); p_yes(words, shown) -> (n,) P(YES) per pair."""

    model_id: str
    device: torch.device
    dtype: torch.dtype
    batch_size: int = 16
    answers: tuple[tuple[str, str], ...] = ANSWERS
    shown: ClassVar[str]
    default_model: ClassVar[str | None]

    def p_yes(self, words: list[str], shown: list[Shown]) -> torch.Tensor:
        raise NotImplementedError


@dataclass
class TextLMJudge(Judge):
    """A causal text LM shown the reference caption in place of the image."""

    shown: ClassVar[str] = "reference caption"
    default_model: ClassVar[str | None] = "smollm2-135m-instruct"
    lm: Any = field(init=False)
    tok: Any = field(init=False)

    def __post_init__(self) -> None:
        from src.models.towers import load_causal_lm

        self.lm, self.tok = load_causal_lm(self.model_id, self.device, self.dtype)
        self.pair, self.yes, self.no = answer_ids(self.tok, self.answers)

    def prompts(self, words: list[str], shown: list[Shown]) -> list[str]:
        return [
            chat_text(self.tok, question(w, s.caption, self.pair))
            for w, s in zip(words, shown, strict=True)
        ]

    @torch.no_grad()
    def p_yes(self, words: list[str], shown: list[Shown]) -> torch.Tensor:
        """(n,) P(YES) per (description, what is shown) pair; left-padded batches whose
        positions count real tokens only, the last position's logits read."""
        texts, out = self.prompts(words, shown), []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tok(
                texts[s : s + self.batch_size], return_tensors="pt", padding=True,
                padding_side="left", add_special_tokens=False,
            ).to(self.device)  # fmt: skip
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = self.lm(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1]
            out.append(yes_share(logits, self.yes, self.no).cpu())
        return torch.cat(out) if out else torch.empty(0)


@dataclass
class VLMJudge(Judge):
    """A hub chat VLM shown the image itself (its processor's chat template and batching)."""

    batch_size: int = 8
    shown: ClassVar[str] = "image"
    default_model: ClassVar[str | None] = None
    model: Any = field(init=False)
    proc: Any = field(init=False)

    def __post_init__(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.proc = AutoProcessor.from_pretrained(self.model_id)
        self.model = AutoModelForImageTextToText.from_pretrained(self.model_id, dtype=self.dtype)
        self.model.to(self.device).eval().requires_grad_(False)
        self.pair, self.yes, self.no = answer_ids(self.proc.tokenizer, self.answers)

    @torch.no_grad()
    def p_yes(self, words: list[str], shown: list[Shown]) -> torch.Tensor:
        from PIL import Image

        out = []
        for s in range(0, len(words), self.batch_size):
            texts, images = [], []
            for w, sh in zip(words[s : s + self.batch_size], shown[s : s + self.batch_size],
                             strict=True):  # fmt: skip
                if sh.image is None:
                    raise UserError("the vlm judge needs the images: give --image_dir")
                content = [
                    {"type": "image"},
                    {"type": "text", "text": question(w, None, self.pair)},
                ]
                msgs = [{"role": "user", "content": content}]
                texts.append(self.proc.apply_chat_template(msgs, add_generation_prompt=True))
                images.append(Image.open(sh.image).convert("RGB"))
            self.proc.tokenizer.padding_side = "left"
            enc = self.proc(text=texts, images=images, padding=True, return_tensors="pt")
            logits = self.model(**enc.to(self.device), logits_to_keep=1).logits[:, -1]
            out.append(yes_share(logits, self.yes, self.no).cpu())
        return torch.cat(out) if out else torch.empty(0)


JUDGES: dict[str, type[Judge]] = {"text-lm": TextLMJudge, "vlm": VLMJudge}


def make_judge(
    name: str, model_id: str | None, device: torch.device, dtype: torch.dtype, batch_size: int
) -> Judge:
    cls = JUDGES[name]
    model_id = model_id or cls.default_model
    if model_id is None:
        raise UserError(f"--judge {name} needs --judge_model (a hub id or local folder)")
    return cls(model_id, device, dtype, batch_size=batch_size)


def random_features(alive: torch.Tensor, n: int, count: int, seed: int) -> torch.Tensor:
    """(n, count) feature ids drawn without replacement per row, uniformly from the features
    where alive (F,) bool is True; seeded."""
    ids = alive.nonzero().flatten()
    if ids.numel() < count:
        raise UserError(f"only {ids.numel()} features alive, fewer than {count} to draw")
    g = torch.Generator().manual_seed(seed)
    return torch.stack([ids[torch.randperm(ids.numel(), generator=g)[:count]] for _ in range(n)])


def judge_rows(
    judge: Any,
    words: dict[int, dict[int, str]],
    top: dict[int, list[torch.Tensor]],
    alive: dict[int, torch.Tensor],
    shown: list[Shown],
    other: list[int],
    meta: dict[str, Any],
    n_boot: int,
    seed: int,
    progress: bool = True,
) -> tuple[list[dict], list[dict]]:
    """Per layer: the share of YES on each image's top features (own), on as many random alive
    features (random) and on its top features shown another image (mismatched); summarised
    with bootstrap CIs over images, and the differences own - random, own - mismatched; the
    mean P(YES) of each (<set>_p_yes).
    words: {layer: {feature: description}}; top: {layer: [(k,) per image]}."""
    rows, per_image = [], []
    for layer in tqdm(sorted(top), desc="judge layers", disable=not progress):
        tops = torch.stack(top[layer])
        n, k = tops.shape
        rand = random_features(alive[layer], n, k, seed + layer)
        feats = {"own": tops, "random": rand, "mismatched": tops}
        ask = {"own": range(n), "random": range(n), "mismatched": other}
        share, prob = {}, {}
        for name, f in feats.items():
            lens = [words[layer][int(x)] for x in f.flatten()]
            seen = [shown[j] for j in ask[name] for _ in range(k)]
            p = judge.p_yes(lens, seen).view(n, k)
            share[name], prob[f"{name}_p_yes"] = (p > 0.5).float().mean(1), p.mean(1)
        per_image += [{"image": i, "layer": layer,
                       **{m: float(v[i]) for m, v in (share | prob).items()}}
                      for i in range(n)]  # fmt: skip
        # the mean P(YES) beside the shares: how far from the 0.5 line the answers are
        row: dict[str, Any] = {**meta, "layer": layer,
                               **{m: float(v.mean()) for m, v in prob.items()}}  # fmt: skip
        for name, v in [*share.items(), ("own_minus_random", share["own"] - share["random"]),
                        ("own_minus_mismatched", share["own"] - share["mismatched"])]:  # fmt: skip
            s = summarize(v, n_boot, seed)
            row.update({name: s["mean"], f"{name}_ci_low": s["ci_low"],
                        f"{name}_ci_high": s["ci_high"]})  # fmt: skip
        rows.append({**row, "n_images": n, "features_per_image": k,
                     "alive_features": int(alive[layer].sum())})  # fmt: skip
    return rows, per_image
