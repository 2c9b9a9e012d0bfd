"""E_post -> E_pre reconstructors, their normalisation statistics and the streamed paired data."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from src.data.io import atomic_write, write_json_atomic
from src.data.paths import chunk_path, list_chunk_indices
from src.data.vectors import check_aligned, load_chunk

STATS_NAME = "norm_stats.safetensors"  # beside the reconstructor's weights

# --------------------------------------------------------------------------------------------
# Paired data, streamed chunk by chunk


@dataclass(frozen=True)
class PairSource:
    """One (pre, post) chunk pair of one shard."""

    shard_dir: Path
    index: int

    def load(self) -> tuple[list[str], list[torch.Tensor], list[torch.Tensor]]:
        pre = load_chunk(chunk_path(self.shard_dir, "pre", self.index))
        post = load_chunk(chunk_path(self.shard_dir, "post", self.index))
        check_aligned(pre, post, f"{self.shard_dir} chunk {self.index}")
        return pre.keys, pre.items(), post.items()


def pair_sources(dirs: list[Path]) -> list[PairSource]:
    out = []
    for d in dirs:
        pre, post = list_chunk_indices(d, "pre"), list_chunk_indices(d, "post")
        if pre != post:
            raise ValueError(f"{d}: pre chunks {pre} and post chunks {post} differ")
        out += [PairSource(d, i) for i in pre]
    return out


def is_validation(key: str, val_fraction: float, seed: int = 0) -> bool:
    """Deterministic split by key: the same image is held out whatever the chunking or order."""
    h = int.from_bytes(hashlib.sha1(f"{seed}:{key}".encode()).digest()[:8], "big")
    return (h % 1_000_000) < val_fraction * 1_000_000


def iter_pairs(
    sources: list[PairSource],
    *,
    split: str,
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


def check_finite(key: str, *tensors: torch.Tensor) -> None:
    for t in tensors:
        if not torch.isfinite(t).all():
            raise ValueError(f"image {key!r}: NaN or Inf in its vectors")


# --------------------------------------------------------------------------------------------
# Normalisation statistics (per channel, fitted on the training split only)


@dataclass
class NormStats:
    pre_mean: torch.Tensor  # (D_pre,)
    pre_std: torch.Tensor  # (D_pre,)
    post_mean: torch.Tensor  # (D_post,)
    post_std: torch.Tensor  # (D_post,)

    def norm_pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.pre_mean.to(x)) / self.pre_std.to(x)

    def denorm_pre(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.pre_std.to(x) + self.pre_mean.to(x)

    def norm_post(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.post_mean.to(x)) / self.post_std.to(x)

    def save(self, path: Path) -> Path:
        state = {k: v.contiguous() for k, v in asdict(self).items()}
        return atomic_write(path, lambda tmp: save_file(state, str(tmp)))

    @classmethod
    def load(cls, path: Path) -> NormStats:
        return cls(**load_file(str(path)))

    @classmethod
    def identity(cls, d_pre: int, d_post: int) -> NormStats:
        return cls(torch.zeros(d_pre), torch.ones(d_pre), torch.zeros(d_post), torch.ones(d_post))


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


# --------------------------------------------------------------------------------------------
# Models


@dataclass
class ReconConfig:
    model_type: str  # mlp | transformer
    d_post: int
    d_pre: int
    t_post: int | None  # fixed token counts (None: varies per image)
    t_pre: int | None
    expand: int = 1  # mlp: pre tokens per post token (4 for Qwen's 2x2 patch merger)
    hidden_size: int = 1024
    num_layers: int = 3
    num_heads: int = 8
    normalize: bool = True
    embed_model: str = ""
    val_fraction: float = 0.1  # the held-out split, so later stages can find the same images
    split_seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


class MLPRecon(torch.nn.Module):
    """Per post token: (D_post) -> MLP -> (expand x D_pre). expand=1 for LLaVA-style connectors
    (one pre token per post token), 4 for a 2x2 merger (the pre rows of a merged group are
    consecutive)."""

    def __init__(self, cfg: ReconConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dims = [cfg.d_post] + [cfg.hidden_size] * (cfg.num_layers - 1) + [cfg.d_pre * cfg.expand]
        layers: list[torch.nn.Module] = []
        for i in range(len(dims) - 1):
            if i:
                layers += [torch.nn.GELU()]
            layers.append(torch.nn.Linear(dims[i], dims[i + 1]))
        self.mlp = torch.nn.Sequential(*layers)

    def forward(self, post: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """post (B, T_post, D_post) -> (B, T_post * expand, D_pre)"""
        out = self.mlp(post)
        return out.reshape(post.shape[0], post.shape[1] * self.cfg.expand, self.cfg.d_pre)


class TransformerRecon(torch.nn.Module):
    """T_pre learned queries cross-attend to the encoded post tokens: for connectors that change
    the token count (a resampler's 64 -> the encoder's grid)."""

    def __init__(self, cfg: ReconConfig) -> None:
        super().__init__()
        if cfg.t_pre is None:
            raise ValueError("the transformer reconstructor needs a fixed E_pre token count")
        self.cfg = cfg
        h = cfg.hidden_size
        self.inp = torch.nn.Linear(cfg.d_post, h)
        self.queries = torch.nn.Parameter(torch.randn(cfg.t_pre, h) * 0.02)
        layer = torch.nn.TransformerDecoderLayer(
            h, cfg.num_heads, dim_feedforward=2 * h, batch_first=True, norm_first=True, dropout=0.0
        )
        self.decoder = torch.nn.TransformerDecoder(layer, cfg.num_layers)
        self.out = torch.nn.Linear(h, cfg.d_pre)

    def forward(self, post: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """post (B, T_post, D_post), mask (B, T_post) True = real token -> (B, T_pre, D_pre)"""
        memory = self.inp(post)
        q = self.queries.unsqueeze(0).expand(post.shape[0], -1, -1)
        pad = None if mask is None else ~mask
        return self.out(self.decoder(q, memory, memory_key_padding_mask=pad))


RECON_MODELS: dict[str, type[torch.nn.Module]] = {"mlp": MLPRecon, "transformer": TransformerRecon}


def build_recon(cfg: ReconConfig) -> torch.nn.Module:
    try:
        return RECON_MODELS[cfg.model_type](cfg)
    except KeyError:
        raise ValueError(
            f"unknown --model_type {cfg.model_type!r}; choose {', '.join(RECON_MODELS)}"
        ) from None


def save_recon(model: torch.nn.Module, cfg: ReconConfig, folder: Path, name: str) -> Path:
    """folder/<name>.safetensors + folder/recon_config.json."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / f"{name}.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(folder / "recon_config.json", asdict(cfg))
    return folder / f"{name}.safetensors"


def load_recon(
    folder: Path, embed_model: str | None = None, name: str = "best_model"
) -> tuple[torch.nn.Module, ReconConfig]:
    """Load a saved reconstructor; embed_model, when given, must be the one it was trained for."""
    cfg_path = Path(folder) / "recon_config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{folder} has no recon_config.json: not a reconstructor folder")
    cfg = ReconConfig(**json.loads(cfg_path.read_text(encoding="utf-8")))
    if embed_model is not None and cfg.embed_model != embed_model:
        raise ValueError(
            f"{folder} holds a reconstructor for {cfg.embed_model!r}, not {embed_model!r}"
        )
    model = build_recon(cfg)
    model.load_state_dict(load_file(str(Path(folder) / f"{name}.safetensors")))
    return model.eval(), cfg


def reconstruct(
    model: torch.nn.Module, stats: NormStats, posts: list[torch.Tensor], device: torch.device
) -> list[torch.Tensor]:
    """E_pre estimates in the original space for a list of (T_post_i, D_post) -> [(T, D_pre)]."""
    from torch.nn.utils.rnn import pad_sequence

    x = pad_sequence([p.float() for p in posts], batch_first=True).to(device)
    mask = torch.zeros(x.shape[:2], dtype=torch.bool, device=device)
    for i, p in enumerate(posts):
        mask[i, : p.shape[0]] = True
    with torch.no_grad():
        out = stats.denorm_pre(model(stats.norm_post(x), mask)).cpu()
    cfg = model.cfg
    lengths = [
        cfg.t_pre if cfg.model_type == "transformer" else p.shape[0] * cfg.expand for p in posts
    ]
    return [o[:n] for o, n in zip(out, lengths, strict=True)]
