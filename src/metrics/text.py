"""Caption scores: BERTScore through the bert-score package, CLIPScore through torchmetrics,
and the per-token NLL of a caption under an LM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from src.models.towers import minilm_dir

HESSEL_PREFIX = "A photo depicts "


def token_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target] per position, 0 where target is -100: logits (B, L, V),
    target (B, L) -> (B, L), float32.

    One contiguous (V,) row per token: float32 cross-entropy over a strided vocabulary dim (the
    (B, V, L) layout) was off by 6e-5 relative at Gemma's 262k entries against float64,
    contiguous rows by 8e-6. Given contiguous logits, as the callers build them, nothing is
    copied (a slice of a larger logits tensor made cross-entropy 4x slower at 262k entries).
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    nll = F.cross_entropy(flat, target.reshape(-1), ignore_index=-100, reduction="none")
    return nll.view_as(target)


@dataclass(frozen=True)
class BertScorer:
    """bert_score.score with its backbone and layer fixed and recorded.

    The default backbone is the offline all-MiniLM-L6-v2 (6 layers; its last layer is used).
    idf weighting and baseline rescaling only when asked (rescaling needs a baseline file for the
    backbone, which bert-score ships only for hub models).
    """

    model_type: str = ""
    num_layers: int = 6
    idf: bool = False
    rescale: bool = False
    batch_size: int = 64

    @property
    def backbone(self) -> str:
        return self.model_type or str(minilm_dir())

    def describe(self) -> dict[str, Any]:
        name = "all-MiniLM-L6-v2 (offline)" if not self.model_type else self.model_type
        return {"bertscore_model": name, "bertscore_layer": self.num_layers, "idf": self.idf,
                "rescale_with_baseline": self.rescale}  # fmt: skip

    def __call__(
        self, cands: Sequence[str], refs: Sequence[str] | Sequence[list[str]]
    ) -> dict[str, torch.Tensor]:
        """Per-pair precision, recall and F1: (N,) each. A list of references per candidate
        scores against the best-matching one (bert-score's multi-reference mode).

        An empty candidate (a caption that ended at once) or one whose references are all
        empty scores 0: nothing in it matches. bert-score cannot encode an empty sentence with
        transformers 5 (it calls a tokenizer method that no longer exists), and an empty
        reference is dropped from a list of several."""
        if len(cands) != len(refs):
            raise ValueError(f"{len(cands)} candidates for {len(refs)} references")
        kept_refs = [r if isinstance(r, str) else [x for x in r if x.strip()] for r in refs]
        ok = [
            bool(c.strip()) and (bool(r.strip()) if isinstance(r, str) else bool(r))
            for c, r in zip(cands, kept_refs, strict=True)
        ]
        if all(ok):
            return self._score(cands, kept_refs)
        out = {k: torch.zeros(len(cands)) for k in ("bertscore_p", "bertscore_r", "bertscore_f1")}
        idx = [i for i, good in enumerate(ok) if good]
        if idx:
            scored = self._score([cands[i] for i in idx], [kept_refs[i] for i in idx])
            for k, v in scored.items():
                out[k][torch.tensor(idx)] = v.float()
        return out

    def _score(
        self, cands: Sequence[str], refs: Sequence[str] | Sequence[list[str]]
    ) -> dict[str, torch.Tensor]:
        import bert_score

        if self.idf:  # idf weights come from this call's references
            p, r, f = bert_score.score(
                list(cands), list(refs), model_type=self.backbone, num_layers=self.num_layers,
                idf=True, rescale_with_baseline=self.rescale,
                lang="en" if self.rescale else None, batch_size=self.batch_size, verbose=False,
            )  # fmt: skip
        else:  # the same computation with the backbone loaded once, not on every call
            scorer = _loaded_bert_scorer(self.backbone, self.num_layers, self.rescale)
            p, r, f = scorer.score(list(cands), list(refs), batch_size=self.batch_size)
        return {"bertscore_p": p, "bertscore_r": r, "bertscore_f1": f}

    def many(self, jobs: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[torch.Tensor]:
        """F1 of several (candidates, references) lists, in one bert-score call over their
        distinct pairs: (N_i,) per job, as separate calls would give them up to float rounding
        (padding within bert-score's batches differs; tests/test_scoring.py pins it).

        bert-score embeds each distinct sentence of a call once but every call afresh, and the
        scoring stages ask for several columns over the same sentences (captions against
        references, against another image's references, against the original caption), often
        with repeated pairs (the original caption at every perturbation level). With idf the
        weights come from each call's references, so the calls stay separate.
        """
        if self.idf:
            return [self(c, r)["bertscore_f1"] for c, r in jobs]
        index: dict[tuple[str, tuple[str, ...]], int] = {}
        where = []
        for cands, refs in jobs:
            if len(cands) != len(refs):
                raise ValueError(f"{len(cands)} candidates for {len(refs)} references")
            keys = [
                (c, (r,) if isinstance(r, str) else tuple(r))
                for c, r in zip(cands, refs, strict=True)
            ]
            where.append([index.setdefault(k, len(index)) for k in keys])
        if not index:
            return [torch.zeros(0) for _ in jobs]
        pairs = list(index)
        # Every pair in the multi-reference form: with one reference, its best match is itself.
        f1 = self([c for c, _ in pairs], [list(r) for _, r in pairs])["bertscore_f1"]
        return [f1[torch.tensor(w, dtype=torch.long)] for w in where]


@cache
def _loaded_bert_scorer(backbone: str, num_layers: int, rescale: bool) -> Any:
    import bert_score

    return bert_score.BERTScorer(
        model_type=backbone, num_layers=num_layers, rescale_with_baseline=rescale,
        lang="en" if rescale else None,
    )  # fmt: skip


class _TensorFeatures(torch.nn.Module):
    """transformers 5.x returns output objects from get_image_features / get_text_features (the
    projected vector is pooler_output); torchmetrics 1.9 calls .norm on the result. This hands it
    the tensor and leaves its metric logic alone."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def _tensor(self, out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


class ClipScorer:
    """CLIPScore = max(100 cos(E_image, E_caption), 0) as torchmetrics defines it, per pair.

    variant 'hessel': 2.5 max(cos, 0) with the "A photo depicts" prefix (Hessel et al. 2021).
    Captions longer than the text model's limit are truncated here, keeping the end-of-text
    token (the text tower pools at it); torchmetrics' own truncation would cut it off.
    """

    def __init__(self, model_id: str, *, variant: str = "torchmetrics", device: str = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        if variant not in ("torchmetrics", "hessel"):
            raise ValueError(f"unknown CLIPScore variant {variant!r}")
        self.model_id, self.variant, self.device = model_id, variant, torch.device(device)
        model = CLIPModel.from_pretrained(model_id).to(self.device).eval()
        self.model = _TensorFeatures(model)
        self.processor = CLIPProcessor.from_pretrained(model_id)
        self.max_len = model.config.text_config.max_position_embeddings

    def describe(self) -> dict[str, Any]:
        return {"clipscore_model": self.model_id, "clipscore_variant": self.variant}

    def truncate(self, caption: str) -> str:
        tok = self.processor.tokenizer
        ids = tok(caption, truncation=True, max_length=self.max_len)["input_ids"]
        return tok.decode(ids, skip_special_tokens=True) if len(ids) >= self.max_len else caption

    def __call__(self, images: Sequence[Image.Image], captions: Sequence[str]) -> torch.Tensor:
        """(N,) scores for N (image, caption) pairs."""
        # A private helper of torchmetrics 1.9.0 (pinned): its public CLIPScore only returns the
        # batch mean, and a study needs one score per image. tests/test_text_scores.py checks
        # that the mean of these equals the public metric.
        from torchmetrics.functional.multimodal.clip_score import _clip_score_update

        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images for {len(captions)} captions")
        texts = [self.truncate(HESSEL_PREFIX + c if self.variant == "hessel" else c)
                 for c in captions]  # fmt: skip
        tensors = [torch.from_numpy(np.asarray(im.convert("RGB"))).permute(2, 0, 1)
                   for im in images]  # fmt: skip
        with torch.no_grad():
            score, _ = _clip_score_update(tensors, texts, self.model, self.processor)
        score = score.clamp(min=0).cpu()
        return score * 0.025 if self.variant == "hessel" else score  # 2.5 x cos


def split_references(cell: str) -> list[str]:
    """'a | b' (how caption tables store several references) -> ['a', 'b']; '' -> []."""
    return [r.strip() for r in str(cell).split(" | ") if r.strip()] if cell == cell else []


def score_summary(
    df: Any, by: list[str], columns: list[str], n_boot: int = 1000, seed: int = 0
) -> Any:
    """Tidy table: one row per group x score column, with mean, bootstrap CI, n (NaN ignored)."""
    import pandas as pd

    from src.metrics.stats import summarize

    rows = []
    groups = df.groupby(by) if by else [((), df)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for col in columns:
            vals = torch.tensor(
                pd.to_numeric(g[col], errors="coerce").to_numpy(), dtype=torch.float64
            )
            vals = vals[torch.isfinite(vals)]
            if vals.numel() == 0:
                continue
            s = summarize(vals, n_boot=n_boot, seed=seed)
            rows.append({**dict(zip(by, key, strict=True)), "score": col, "mean": s["mean"],
                         "ci_low": s["ci_low"], "ci_high": s["ci_high"], "std": s["std"],
                         "n": s["n"]})  # fmt: skip
    return pd.DataFrame(rows)
