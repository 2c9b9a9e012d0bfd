"""Reconstructor models E_post -> E_pre, their configuration, normalisation statistics and files.

A trained reconstructor is a folder: best_model.safetensors (and last_model.safetensors),
recon_config.json, norm_stats.safetensors, and the manifest train_recon writes last.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file

from src.data.identity import IDENTITY_KEYS, upstream_identity, vector_identity
from src.data.io import atomic_write, write_json_atomic
from src.errors import InputMissing, UserError

STATS_NAME = "norm_stats.safetensors"  # beside the reconstructor's weights
CONFIG_NAME = "recon_config.json"
BEST = "best_model"  # the weights of the best held-out epoch: what later stages load


@dataclass
class ReconOptions:
    """The reconstructor a user chooses (train_recon's flags); the vectors fix the rest."""

    model_type: Literal["mlp", "transformer"] = field(
        default="mlp",
        metadata={
            "help": "mlp: per-token map (E_pre tokens = k x E_post tokens, k = 1 for LLaVA, "
            "4 for a 2x2 merger); transformer: learned E_pre queries attending to E_post "
            "(token counts differ, e.g. a resampler)"
        },
    )
    num_layers: int = field(default=3, metadata={"help": "layers of the MLP / decoder"})
    num_heads: int = field(default=8, metadata={"help": "attention heads (transformer)"})
    hidden_size: int = field(default=1024, metadata={"help": "hidden width"})
    normalize: bool = field(
        default=False,
        metadata={"help": "standardise E_pre and E_post per channel (training-split statistics)"},
    )
    val_fraction: float = field(
        default=0.1,
        metadata={"help": "held-out share of the images, chosen by a hash of the image key"},
    )
    split_seed: int = field(
        default=0,
        metadata={
            "help": "seed of the held-out split (recorded, so later stages find the same "
            "images); --seed does not move it"
        },
    )


@dataclass(kw_only=True)
class ReconConfig(ReconOptions):
    """Everything needed to rebuild a trained reconstructor (its recon_config.json)."""

    d_post: int
    d_pre: int
    t_post: int | None  # fixed token counts (None: varies per image)
    t_pre: int | None
    expand: int = 1  # mlp: pre tokens per post token (4 for Qwen's 2x2 patch merger)
    embed_model: str = ""  # the model whose vectors it was trained on


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
        if not Path(path).exists():
            raise InputMissing(f"{path} not found: the reconstructor's training has not finished")
        return cls(**load_file(str(path)))

    @classmethod
    def identity(cls, d_pre: int, d_post: int) -> NormStats:
        return cls(torch.zeros(d_pre), torch.ones(d_pre), torch.zeros(d_post), torch.ones(d_post))


# --------------------------------------------------------------------------------------------
# Models


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
            raise UserError(
                "the transformer reconstructor needs the same E_pre token count for every "
                "image; these vectors vary"
            )
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
        raise UserError(
            f"unknown reconstructor model_type {cfg.model_type!r}; choose {', '.join(RECON_MODELS)}"
        ) from None


def save_recon(model: torch.nn.Module, cfg: ReconConfig, folder: Path, name: str) -> Path:
    """folder/<name>.safetensors + folder/recon_config.json."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / f"{name}.safetensors", lambda tmp: save_file(state, str(tmp)))
    write_json_atomic(folder / CONFIG_NAME, asdict(cfg))
    return folder / f"{name}.safetensors"


def read_config(folder: Path) -> ReconConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.exists():
        raise InputMissing(
            f"{folder} has no {CONFIG_NAME}: not a reconstructor folder (train one with "
            f"python -m src.train.train_recon --out_dir {folder})"
        )
    return ReconConfig(**json.loads(path.read_text(encoding="utf-8")))


def load_recon(
    folder: Path, embed_model: str | None = None, name: str = BEST
) -> tuple[torch.nn.Module, ReconConfig]:
    """Load a saved reconstructor; embed_model, when given, must be the one it was trained for."""
    cfg = read_config(folder)
    if embed_model is not None and cfg.embed_model != embed_model:
        raise UserError(
            f"{folder} holds a reconstructor for {cfg.embed_model!r}, not {embed_model!r}; "
            "pass the reconstructor of that model (--model_dir)"
        )
    model = build_recon(cfg)
    weights = Path(folder) / f"{name}.safetensors"
    try:
        model.load_state_dict(load_file(str(weights)))
    except FileNotFoundError:
        raise InputMissing(
            f"{weights} not found: the reconstructor's training has not finished"
        ) from None
    except RuntimeError as e:
        raise UserError(f"{weights} does not match its {CONFIG_NAME}: {e}") from None
    return model.eval(), cfg


def recon_identity(folder: Path) -> dict[str, Any]:
    """What a trained reconstructor is, wherever its folder lies: its config, the identity of
    the vectors it was trained on (its manifest's upstream) and a hash of the weights later
    stages load. Outputs made with it record this; --skip_existing compares it."""
    upstream = upstream_identity(folder)
    weights = Path(folder) / f"{BEST}.safetensors"
    return {
        "config": asdict(read_config(folder)),
        "upstream": upstream,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }


def provenance(
    folder: Path, vec_dir: Path, shards: list[str] | None, *, override: bool
) -> dict[str, Any]:
    """What an output made with reconstructor `folder` from the vectors in `vec_dir` records and
    --skip_existing compares: {"upstream": the vectors' model, "reconstructor": recon_identity}.

    A reconstructor trained on another model's (or checkpoint's) vectors is a UserError unless
    `override` (--override_model)."""
    recon = recon_identity(folder)
    vectors = vector_identity(vec_dir, shards)
    trained = {k: recon["upstream"].get(k) for k in IDENTITY_KEYS}
    if trained != {k: vectors.get(k) for k in IDENTITY_KEYS} and not override:
        raise UserError(
            f"{folder} was trained on vectors of {trained}, but {vec_dir} holds vectors of "
            f"{vectors}; pass the reconstructor of these vectors (--model_dir) or "
            "--override_model to use it anyway"
        )
    return {"upstream": vectors, "reconstructor": recon}


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
