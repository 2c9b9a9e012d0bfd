"""The caption scorers both scoring stages use: their settings (one dataclass, which also makes
the flags), their construction, and the inputs each needs (images for CLIPScore, stored E_post
and the model that made it for the NLL score)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from src.data.images import list_images, load_image
from src.data.io import atomic_write
from src.data.paths import shard_dirs
from src.data.vectors import iter_chunks
from src.errors import UserError
from src.metrics.caption_tables import clip_scores, nll_scores
from src.metrics.text import BertScorer, ClipScorer


@dataclass
class ScoringConfig:
    image_dir: Path | None = field(
        default=None, metadata={"help": "image root (needed for CLIPScore)"}
    )
    clip_model: str | None = field(
        default=None, metadata={"help": "CLIP hub id or path for CLIPScore (none ships offline)"}
    )
    clip_variant: Literal["torchmetrics", "hessel"] = field(
        default="torchmetrics",
        metadata={"help": "torchmetrics: max(100 cos, 0); hessel: 2.5 max(cos, 0), prefixed"},
    )
    bertscore_model: str = field(
        default="", metadata={"help": "bert-score backbone (default: the offline all-MiniLM-L6-v2)"}
    )
    bertscore_layers: int = field(default=6, metadata={"help": "layer bert-score reads"})
    idf: bool = field(default=False, metadata={"help": "idf weighting from the references"})
    rescale: bool = field(default=False, metadata={"help": "baseline rescaling (hub models)"})
    batch_size: int = field(default=64, metadata={"help": "captions per scorer batch"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the CIs"})
    seed: int = field(default=0, metadata={"help": "seeds the bootstrap and mismatched pairs"})
    device: str = field(default="cpu", metadata={"help": "where the scorers run"})
    nll_vec_dir: Path | None = field(
        default=None,
        metadata={
            "help": "an image-text score that exists offline: the caption's mean token NLL "
            "under `mini` given the image's stored E_post (data/vector/mini; the model is the "
            "one its manifests name); lower fits better"
        },
    )
    nll_vec_root: Path | None = field(
        default=None,
        metadata={
            "help": "instead of --nll_vec_dir: a folder of <model>/ vector folders (data/vector), "
            "so each table's captions get their NLL under the model that wrote them"
        },
    )
    nll_model: str | None = field(
        default=None, metadata={"help": "mini connector folder for the NLL (checked)"}
    )
    skip_existing: bool = field(default=False, metadata={"help": "keep finished tables"})


@dataclass
class Scorers:
    bert: BertScorer
    clip: ClipScorer | None
    cfg: ScoringConfig

    def describe(self) -> dict[str, Any]:
        clip = self.clip.describe() if self.clip else {"clipscore_model": None}
        return {**self.bert.describe(), **clip}

    def nll_vec_dir(self, model: str | None) -> Path | None:
        """The vectors whose model scores the NLL of `model`'s captions (None: no NLL)."""
        if self.cfg.nll_vec_root is not None and model is not None:
            return self.cfg.nll_vec_root / model if scores_nll(model) else None
        return self.cfg.nll_vec_dir

    def image_text(
        self, df: pd.DataFrame, columns: list[str], model: str | None = None
    ) -> pd.DataFrame:
        """The image-text scores that are configured: CLIPScore, the NLL under the offline VLM
        that made the vectors (`model`'s own with --nll_vec_root)."""
        if self.clip is not None:
            assert self.cfg.image_dir is not None  # build_scorers checked it
            df = clip_scores(df, columns, self.clip, table_images(df, self.cfg.image_dir))
        vec_dir = self.nll_vec_dir(model)
        if vec_dir is not None:
            adapter = nll_model(vec_dir, self.cfg.nll_model, self.cfg.device)
            post = stored_post(vec_dir, sorted(df["shard"].unique()))
            df = nll_scores(df, columns, post, adapter, self.cfg.seed)
        return df


SCORE_PREFIXES = ("bertscore_", "clipscore_", "mini_nll_")  # the score columns of a table


def score_tables(
    jobs: list[tuple[Path, Path]],
    score: Callable[[Path], pd.DataFrame],
    *,
    skip_existing: bool,
) -> pd.DataFrame:
    """Score each (table, target) pair: score(table) written atomically to target, or the
    target read back when it exists and skip_existing (a resumed run). All rows, concatenated."""
    scored = []
    for path, target in jobs:
        if skip_existing and target.exists():
            scored.append(pd.read_csv(target))
            continue
        df = score(path)
        atomic_write(target, lambda tmp, df=df: df.to_csv(tmp, index=False))
        scored.append(df)
    return pd.concat(scored, ignore_index=True)


def build_scorers(cfg: ScoringConfig) -> Scorers:
    """BERTScore always; CLIPScore only with a CLIP (none ships offline)."""
    if cfg.clip_model and not cfg.image_dir:
        raise UserError("--clip_model needs --image_dir (the images to score against)")
    bert = BertScorer(cfg.bertscore_model, cfg.bertscore_layers, cfg.idf, cfg.rescale,
                      cfg.batch_size)  # fmt: skip
    if not cfg.clip_model:
        print("note: no --clip_model, so no CLIPScore (no CLIP ships offline)")
        return Scorers(bert, None, cfg)
    return Scorers(bert, ClipScorer(cfg.clip_model, variant=cfg.clip_variant,
                                    device=cfg.device), cfg)  # fmt: skip


def table_images(df: pd.DataFrame, image_dir: Path) -> list:
    """The image of each row (shard, key) of a caption table, decoded as the stages do."""
    records = {(r.shard, r.key): r for s in df["shard"].unique() for r in list_images(image_dir, s)}
    rows = zip(df["shard"], df["key"], strict=True)
    return [load_image(records[row]).image for row in rows]


def stored_post(vec_dir: Path, shards: list[str]) -> dict[tuple[str, str], torch.Tensor]:
    """(shard, key) -> E_post (T, D) of those shards of a vector folder."""
    post: dict[tuple[str, str], torch.Tensor] = {}
    for d in shard_dirs(vec_dir, shards):
        for _, chunk in iter_chunks(d, "post"):
            post.update({(d.name, k): v for k, v in chunk.by_key().items()})
    return post


def scores_nll(model: str) -> bool:
    """Whether the NLL score applies to a registered model's captions: it continues the model's
    own LM from stored E_post, which a connector VLM (a MiniAdapter: mini, mini-gemma) can do."""
    from src.models import adapter_class
    from src.models.mini import MiniAdapter

    return issubclass(adapter_class(model), MiniAdapter)


@cache
def nll_model(vec_dir: Path, model_id: str | None, device: str):
    """The offline VLM (`mini`, `mini-gemma`: a MiniAdapter) that made the vectors, loaded once
    per process (score_perturb scores one table per model and mode)."""
    from src.models import load_for_vectors
    from src.models.mini import MiniAdapter

    adapter = load_for_vectors(vec_dir, vlm_id=model_id, device=device)[0]
    if not isinstance(adapter, MiniAdapter):
        raise UserError(
            f"the NLL score needs a connector VLM such as mini (it continues the LM from stored "
            f"E_post), but {vec_dir} was made by {adapter.name!r}"
        )
    return adapter
