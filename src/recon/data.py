"""The paired vectors a reconstructor learns from: (E_pre, E_post) per image, streamed chunk by
chunk, split into training and held-out images by a hash of the image key."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch

from src.data.identity import check_flags, vector_identity
from src.data.paths import chunk_path, list_chunk_indices
from src.data.vectors import Chunk, check_aligned, load_chunk
from src.errors import UserError
from src.recon.model import NormStats, ReconConfig, ReconOptions

Split = Literal["train", "val"]


def vectors_model(
    vec_dir: Path, shards: list[str] | None, embed_model: str | None, *, override: bool
) -> dict[str, Any]:
    """The identity of the model that made a vector folder (its manifests), checked against
    --embed_model when the user gives one."""
    found = vector_identity(vec_dir, shards)
    ident = check_flags(
        found, vec_dir, flags={"model": ("--embed_model", embed_model)}, override=override
    )
    if not ident.get("model"):
        raise UserError(
            f"the manifests under {vec_dir} name no model: pass --embed_model NAME --override_model"
        )
    return ident


def check_finite(chunk: Chunk, path: Path) -> None:
    """A chunk with NaN or Inf would poison the statistics and every gradient: refuse it."""
    if torch.isfinite(chunk.vectors).all():
        return
    bad = [k for k, x in zip(chunk.keys, chunk.items(), strict=True) if not torch.isfinite(x).all()]
    raise UserError(
        f"{path}: NaN or Inf in the vectors of image(s) {bad[:5]}; re-extract that shard "
        "(src.extract.extract_vectors without --skip_existing) or remove those images"
    )


@dataclass(frozen=True)
class PairSource:
    """One (pre, post) chunk pair of one shard."""

    shard_dir: Path
    index: int

    def load(self) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
        chunks = []
        for kind in ("pre", "post"):
            path = chunk_path(self.shard_dir, kind, self.index)
            chunks.append(load_chunk(path))
            check_finite(chunks[-1], path)
        pre, post = chunks
        check_aligned(pre, post, f"{self.shard_dir} chunk {self.index}")
        return pre.keys, pre.items(), post.items()


def pair_sources(dirs: list[Path]) -> list[PairSource]:
    out = []
    for d in dirs:
        pre, post = list_chunk_indices(d, "pre"), list_chunk_indices(d, "post")
        if pre != post:
            raise UserError(
                f"{d}: pre chunks {pre} and post chunks {post} differ; re-extract this shard"
            )
        out += [PairSource(d, i) for i in pre]
    return out


def is_validation(key: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic split by key: the same image is held out whatever the chunking or order."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


def iter_pairs(
    sources: list[PairSource],
    *,
    split: Split,
    val_fraction: float,
    split_seed: int = 0,
    shuffle_seed: int | None = None,
) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """(key, pre (T_pre, D_pre), post (T_post, D_post)) of one split, one chunk in memory.

    shuffle_seed: shuffle chunk order and items within each chunk (a function of the seed only).
    """
    order = list(range(len(sources)))
    g = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    if g is not None:
        order = torch.randperm(len(order), generator=g).tolist()
    for si in order:
        keys, pre, post = sources[si].load()
        idx = list(range(len(keys)))
        if g is not None:
            idx = torch.randperm(len(idx), generator=g).tolist()
        for i in idx:
            if is_validation(keys[i], val_fraction, split_seed) == (split == "val"):
                yield keys[i], pre[i], post[i]


def collate(items: list[tuple[str, torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Pad a batch of (key, pre (T_pre, D), post (T_post, D)) to its longest item."""
    keys = [k for k, _, _ in items]
    pre = torch.nn.utils.rnn.pad_sequence([p.float() for _, p, _ in items], batch_first=True)
    post = torch.nn.utils.rnn.pad_sequence([q.float() for _, _, q in items], batch_first=True)
    pre_mask = torch.zeros(pre.shape[:2], dtype=torch.bool)
    post_mask = torch.zeros(post.shape[:2], dtype=torch.bool)
    for i, (_, p, q) in enumerate(items):
        pre_mask[i, : p.shape[0]] = True
        post_mask[i, : q.shape[0]] = True
    return {"keys": keys, "pre": pre, "post": post, "pre_mask": pre_mask, "post_mask": post_mask}


def batches(
    sources: list[PairSource],
    cfg: ReconOptions,
    *,
    split: Split,
    batch_size: int,
    shuffle_seed: int | None = None,
    rank: int = 0,
    world: int = 1,
) -> Iterator[dict[str, Any]]:
    """Batches of one split of cfg's held-out split; with a shuffle seed, dealt to ranks."""
    buf, j = [], 0
    for item in iter_pairs(
        sources,
        split=split,
        val_fraction=cfg.val_fraction,
        split_seed=cfg.split_seed,
        shuffle_seed=shuffle_seed,
    ):
        buf.append(item)
        if len(buf) == batch_size:
            if j % world == rank:
                yield collate(buf)
            buf, j = [], j + 1
    if buf and j % world == rank:
        yield collate(buf)


class RunningMoments:
    """Per-channel mean / std over streamed rows, in float64 (sums of squares of 1e5 x 576 rows
    lose digits in float32)."""

    def __init__(self) -> None:
        self.n = 0
        self.s: torch.Tensor | None = None
        self.ss: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        self.n += x.shape[0]
        self.s = x.sum(0) if self.s is None else self.s + x.sum(0)
        self.ss = (x * x).sum(0) if self.ss is None else self.ss + (x * x).sum(0)

    def result(self, rel_floor: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std). std is floored at rel_floor x the mean channel std: a channel
        that barely moves in the training split (dead ReLU units, padding) would otherwise turn
        any later movement into a huge standardised error."""
        if self.n < 2 or self.s is None or self.ss is None:
            raise ValueError("need at least two rows to estimate normalisation statistics")
        mean = self.s / self.n
        var = (self.ss / self.n - mean * mean).clamp(min=0) * self.n / (self.n - 1)
        std = var.sqrt()
        floor = max(float(std.mean()) * rel_floor, 1e-8)
        return mean.float(), std.clamp(min=floor).float()


@dataclass
class DataSurvey:
    """What one pass over the vectors found: the reconstructor they call for, the training
    split's statistics, and how many images each split holds."""

    config: ReconConfig
    stats: NormStats
    n_train: int
    n_val: int


def survey(sources: list[PairSource], options: ReconOptions, embed_model: str) -> DataSurvey:
    """One pass over both splits: shapes, the token-count rule, statistics of the training split."""
    pre_m, post_m = RunningMoments(), RunningMoments()
    t_pre, t_post, ratios = set(), set(), set()
    n = {"train": 0, "val": 0}
    d_pre = d_post = 0
    for split in ("train", "val"):
        for _, pre, post in iter_pairs(
            sources, split=split, val_fraction=options.val_fraction, split_seed=options.split_seed
        ):
            t_pre.add(pre.shape[0])
            t_post.add(post.shape[0])
            ratios.add(pre.shape[0] / post.shape[0])
            n[split] += 1
            if split == "train":
                pre_m.update(pre)
                post_m.update(post)
            d_pre, d_post = pre.shape[1], post.shape[1]
    if n["train"] < 2 or n["val"] < 1:
        raise UserError(
            f"need >= 2 training and >= 1 held-out images, got {n['train']} and {n['val']}; "
            f"change --val_fraction ({options.val_fraction}) or add images"
        )
    expand = 1
    if options.model_type == "mlp":
        if len(ratios) != 1 or (r := ratios.pop()) != int(r) or r < 1:
            raise UserError(
                "the mlp reconstructor needs E_pre tokens = k x E_post tokens for every image; "
                "use --model_type transformer"
            )
        expand = int(r)
    cfg = ReconConfig(
        **{f.name: getattr(options, f.name) for f in fields(ReconOptions)},
        d_post=d_post,
        d_pre=d_pre,
        t_post=t_post.pop() if len(t_post) == 1 else None,
        t_pre=t_pre.pop() if len(t_pre) == 1 else None,
        expand=expand,
        embed_model=embed_model,
    )
    if options.normalize:
        stats = NormStats(*pre_m.result(), *post_m.result())
    else:
        stats = NormStats.identity(d_pre, d_post)
    return DataSurvey(cfg, stats, n["train"], n["val"])
