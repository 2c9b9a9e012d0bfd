"""Kernel alignment of a vision tower (KUEA, seed D): a student tower is fine-tuned so that its
batch kernel matches a frozen teacher's, while a clean loss keeps it near the original.

    loss = clean_weight * clean(E, E_orig) + penalty_weight * mean((K_s - K_t)^2)

E: the student's tokens (B, T, D) as a VLM reads them; the kernels are over mean-pooled tokens
(B, D) of student and teacher (src.metrics.kernels). The student kernel's parameters (gamma and
coef0, or the bandwidth) are first fitted by least squares on a sample of original embeddings,
then trained with the tower. They are parameters of the module the optimiser steps and the loss
reads (the seed's loss read a `.cuda()` copy made once, so they never trained).

The frozen part of the student before its first trainable block is computed once per image and
cached with the teacher's pooled features; each step then runs only the trainable blocks (for a
tower whose blocks cannot be cut here, the cache holds the pixels). The stage is
src/train/train_kernel_align; the result is a tower folder (src.models.tower_folder).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from src.data.extraction import extract_shard
from src.data.images import ImageRecord, list_images, train_eval_shards
from src.data.io import load_torch, save_torch_atomic
from src.data.vectors import iter_chunks
from src.errors import UserError
from src.metrics.kernels import clean_loss, kernel_alignment_loss, kernel_matrix, median_distance
from src.metrics.similarity import linear_cka_permutation_test
from src.metrics.stats import bootstrap_means

KernelName = Literal["polynomial", "gaussian", "cosine"]
CHECKPOINT = "checkpoint.pt"


@dataclass
class KernelConfig:
    """The two kernels and the loss (train_kernel_align's kernel flags; seed names in brackets)."""

    kernel_student: KernelName = field(
        default="polynomial", metadata={"help": "student kernel [--kernel_clip]"}
    )
    kernel_teacher: KernelName = field(
        default="polynomial", metadata={"help": "teacher kernel [--kernel_dino]"}
    )
    gamma: float = field(
        default=0.0032, metadata={"help": "student polynomial gamma before the fit"}
    )
    coef0: float = field(
        default=0.191623, metadata={"help": "student polynomial coef0 before the fit"}
    )
    band_student: float | None = field(
        default=None,
        metadata={"help": "student gaussian bandwidth before the fit [--band_clip] "
                  "(default: median pairwise distance)"},
    )  # fmt: skip
    band_teacher: float | None = field(
        default=None,
        metadata={"help": "teacher gaussian bandwidth, fixed [--band_dino] "
                  "(default: median pairwise distance of the teacher's sample)"},
    )  # fmt: skip
    teacher_gamma: float | None = field(
        default=None,
        metadata={"help": "teacher polynomial gamma, fixed (default 1 / mean squared norm)"},
    )
    teacher_coef0: float = field(default=1.0, metadata={"help": "teacher polynomial coef0"})
    loss_clean: Literal["l2", "cosine", "none"] = field(
        default="l2", metadata={"help": "distance of E from E_orig"}
    )
    clean_weight: float = field(default=1.0, metadata={"help": "weight of the clean loss"})
    penalty_weight: float = field(default=0.5, metadata={"help": "weight of the kernel loss"})
    fit_n: int = field(default=256, metadata={"help": "images for the least-squares fit"})
    fit_steps: int = field(default=200, metadata={"help": "Adam steps of that fit"})
    no_kernel_fit: bool = field(
        default=False, metadata={"help": "start training from the flags' values, unfitted"}
    )


@dataclass
class AlignTrainConfig:
    """The optimisation (train_kernel_align's training flags)."""

    steps: int = field(default=200, metadata={"help": "optimizer steps"})
    warmup: int = field(default=20, metadata={"help": "linear warm-up steps, then cosine"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the tower"})
    min_lr: float = field(default=1e-5, metadata={"help": "learning rate at the last step"})
    kernel_lr: float = field(
        default=1e-2,
        metadata={"help": "peak learning rate of the kernel parameters (they train in log space)"},
    )
    wd: float = field(default=1e-4, metadata={"help": "AdamW weight decay of the tower"})
    batch_size: int = field(default=32, metadata={"help": "images per step (one kernel)"})
    grad_clip: float = field(default=1.0, metadata={"help": "gradient-norm clip"})
    seed: int = field(default=0, metadata={"help": "seeds the batches, the fit sample, LoRA"})
    checkpoint_every: int = field(default=50, metadata={"help": "steps between checkpoints"})
    trainable: Literal["last_blocks", "all", "lora"] = field(
        default="last_blocks", metadata={"help": "what of the student trains"}
    )
    blocks: int = field(
        default=3,
        metadata={"help": "last_blocks / lora: how many final blocks (EfficientNet's head "
                  "conv counts as one)"},
    )  # fmt: skip
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})


# --------------------------------------------------------------------------------------------
# Towers: their blocks in order, and (where possible) a cut into a cached prefix and a suffix


@dataclass(frozen=True)
class TowerAdapter:
    """How kernel alignment reaches into one kind of tower.

    units(tower): the blocks in forward order (the ones --blocks counts from the end).
    prefix(tower, x, i): pixels (B, 3, H, W) -> the input of unit i (B, C, h, w); None when the
    tower cannot be cut, so the cache holds pixels and the whole tower runs each step.
    suffix(tower, h, i): the input of unit i -> tokens (B, T, D), what tower(x) returns.
    """

    units: Callable[[nn.Module], list[nn.Module]]
    suffix: Callable[[nn.Module, Tensor, int], Tensor]
    prefix: Callable[[nn.Module, Tensor, int], Tensor] | None = None


def _effnet_units(t: nn.Module) -> list[nn.Module]:
    n = t.net  # stem (conv + BN), the 16 MBConv blocks, head (1x1 conv to 1280 + BN)
    return [
        nn.ModuleList([n._conv_stem, n._bn0]),
        *n._blocks,
        nn.ModuleList([n._conv_head, n._bn1]),
    ]


def _effnet_run(t: nn.Module, h: Tensor, start: int, stop: int) -> Tensor:
    """Units [start, stop) of EfficientNet-Lite0's extract_features (eval: no drop-connect)."""
    n = t.net
    last = len(n._blocks) + 1
    for i in range(start, stop):
        if i == 0:
            h = n._swish(n._bn0(n._conv_stem(h)))
        elif i == last:
            h = n._swish(n._bn1(n._conv_head(h)))
        else:
            h = n._blocks[i - 1](h, drop_connect_rate=None)
    return h


def _effnet_suffix(t: nn.Module, h: Tensor, start: int) -> Tensor:
    fmap = _effnet_run(t, h, start, len(t.net._blocks) + 2)  # (B, 1280, h, w)
    if t.grid != fmap.shape[-1]:
        fmap = F.adaptive_avg_pool2d(fmap, t.grid)
    return fmap.flatten(2).transpose(1, 2)  # (B, grid^2, 1280), as EfficientNetTokens.forward


def _hf_units(t: nn.Module) -> list[nn.Module]:
    enc = t.net.encoder  # CLIP / SigLIP: encoder.layers; DINOv2: encoder.layer
    layers = list(getattr(enc, "layers", None) or getattr(enc, "layer", None) or [])
    if not layers:
        raise UserError(f"{type(t.net).__name__}: no encoder layers found to train")
    return layers


EFFNET_ADAPTER = TowerAdapter(
    _effnet_units, _effnet_suffix, lambda t, x, i: _effnet_run(t, x, 0, i)
)
HF_ADAPTER = TowerAdapter(_hf_units, lambda t, x, i: t(x))


def tower_adapters() -> dict[type, TowerAdapter]:
    """Adapters by tower class (src.models.mini.build_vision's towers); a new family adds one
    line. Imported here, not at module level: the launcher reads stage parsers without loading
    transformers."""
    from src.models.mini import HFVisionTokens
    from src.models.towers import EfficientNetTokens

    return {EfficientNetTokens: EFFNET_ADAPTER, HFVisionTokens: HF_ADAPTER}


def tower_adapter(tower: nn.Module) -> TowerAdapter:
    adapters = tower_adapters()
    for cls, adapter in adapters.items():
        if isinstance(tower, cls):
            return adapter
    known = ", ".join(c.__name__ for c in adapters)
    raise UserError(f"kernel alignment cannot train a {type(tower).__name__} (known: {known})")


@dataclass
class Trainable:
    """The student after select_trainable: what trains, and where the cache is cut."""

    tower: nn.Module
    names: list[str]  # trainable parameter names
    cut: int  # units before the first trainable one, computed once (0: the cache holds pixels)
    peft: bool = False


def _lora_targets(units: list[nn.Module], tower: nn.Module) -> list[str]:
    """Names (in tower) of the Linear and non-grouped 1x1 Conv2d layers inside `units`."""
    inside = {id(m) for u in units for m in u.modules()}
    return [
        name
        for name, m in tower.named_modules()
        if id(m) in inside
        # 1x1 convs only: the "same padding" conv subclasses (EfficientNet's) pad in their own
        # forward, which the LoRA branch of a wider kernel would not reproduce
        and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1
                                          and tuple(m.kernel_size) == (1, 1)))
    ]  # fmt: skip


def select_trainable(tower: nn.Module, cfg: AlignTrainConfig) -> Trainable:
    """Freeze the student but for what cfg.trainable names (BatchNorm statistics stay frozen in
    every mode: the tower runs in eval mode, so batches of 32 do not rewrite them)."""
    adapter = tower_adapter(tower)
    units = adapter.units(tower)
    k = len(units) if cfg.trainable == "all" else min(cfg.blocks, len(units))
    if k <= 0:
        raise UserError("--blocks must be at least 1")
    chosen = units[len(units) - k :]
    cut = len(units) - k if adapter.prefix is not None else 0
    tower.requires_grad_(False).eval()
    if cfg.trainable == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        targets = _lora_targets(chosen, tower)
        if not targets:
            raise UserError("no Linear / Conv2d layer in the chosen blocks to put LoRA on")
        torch.manual_seed(cfg.seed)
        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets)
        tower = inject_adapter_in_model(lora, tower)
        names = [n for n, p in tower.named_parameters() if "lora_" in n]
        for n, p in tower.named_parameters():
            p.requires_grad_(n in names)
        return Trainable(tower.eval(), names, cut, peft=True)
    for u in chosen:
        u.requires_grad_(True)
    names = [n for n, p in tower.named_parameters() if p.requires_grad]
    return Trainable(tower, names, cut)


def merged_tower(trainable: Trainable) -> nn.Module:
    """The student as a plain tower of its base architecture (LoRA merged into the weights)."""
    if not trainable.peft:
        return trainable.tower
    from peft.tuners.lora import LoraLayer

    tower = copy.deepcopy(trainable.tower)
    for name, module in list(tower.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(
                tower.get_submodule(parent) if parent else tower, child, module.get_base_layer()
            )
    return tower


# --------------------------------------------------------------------------------------------
# The student kernel's parameters: a module, so the loss reads what the optimiser steps


class StudentKernel(nn.Module):
    """The student's kernel with trainable parameters, held as logs (they stay positive)."""

    PARAMS: ClassVar[dict[str, tuple[str, ...]]] = {
        "polynomial": ("gamma", "coef0"),
        "gaussian": ("band",),
        "cosine": (),
    }

    def __init__(self, name: str, values: dict[str, float]) -> None:
        super().__init__()
        self.name = name
        self.log = nn.ParameterDict(
            {k: nn.Parameter(torch.tensor(math.log(values[k]))) for k in self.PARAMS[name]}
        )

    def values(self) -> dict[str, Tensor]:
        return {k: v.exp() for k, v in self.log.items()}

    def floats(self) -> dict[str, float]:
        out = {k: float(v.detach()) for k, v in self.values().items()}
        if "gamma" in out:  # the normalised polynomial kernel depends on this ratio only
            out["coef0_over_gamma"] = out["coef0"] / out["gamma"]
        return out

    def forward(self, x: Tensor) -> Tensor:
        """x (B, D) -> K (B, B)."""
        return kernel_matrix(self.name, x, self.values())


def teacher_params(cfg: KernelConfig, t_sample: Tensor) -> dict[str, float]:
    """The teacher kernel's fixed parameters (defaults from its sample t_sample (N, D_t))."""
    if cfg.kernel_teacher == "polynomial":
        # The seed's 1 / width assumes unit-variance coordinates; 1 / E||t||^2 is that scale for
        # any features (CRAFT's pooled conv5_2: E||t||^2 ~ 85 at width 512, where 1 / width left
        # the kernel's off-diagonal at 0.96 +- 0.02, 1 / E||t||^2 at 0.86 +- 0.06)
        gamma = cfg.teacher_gamma or 1.0 / float(t_sample.double().pow(2).sum(1).mean())
        return {"gamma": gamma, "coef0": cfg.teacher_coef0}
    if cfg.kernel_teacher == "gaussian":
        return {"band": cfg.band_teacher or median_distance(t_sample)}
    return {}


def initial_params(cfg: KernelConfig, s_sample: Tensor) -> dict[str, float]:
    """The student kernel's parameters from the flags (gaussian default: the median distance)."""
    return {
        "gamma": cfg.gamma,
        "coef0": cfg.coef0,
        "band": cfg.band_student or median_distance(s_sample),
    }


def fit_kernel_params(
    kernel: StudentKernel, s: Tensor, k_teacher: Tensor, steps: int
) -> list[float]:
    """Least squares: minimise mean((K_s(theta; s) - K_t)^2) over the kernel's parameters on a
    sample, s (N, D) with the teacher's kernel k_teacher (N, N), in place. A coarse log grid
    over each parameter first (the loss is far from convex across decades), then Adam.
    Returns the loss per Adam step."""
    if not kernel.log:
        return []
    s = s.detach().double()
    k_teacher = k_teacher.detach().double()

    def loss() -> Tensor:
        return kernel_alignment_loss(kernel_matrix(kernel.name, s, {k: v.double().exp()
                                     for k, v in kernel.log.items()}), k_teacher)  # fmt: skip

    with torch.no_grad():
        for p in kernel.log.values():  # one coordinate at a time, the others held
            start = float(p)
            grid = [start + math.log(10) * j / 4 for j in range(-16, 17)]
            scores = []
            for g in grid:
                p.fill_(g)
                scores.append(float(loss()))
            p.fill_(grid[min(range(len(grid)), key=scores.__getitem__)])
    opt = torch.optim.Adam(kernel.parameters(), lr=0.05)
    history = []
    for _ in range(steps):
        value = loss()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        history.append(float(value.detach()))
    return history


# --------------------------------------------------------------------------------------------
# Data: cached prefix inputs and teacher features


@dataclass
class AlignRecipe:
    """What the tower is aligned on (train_kernel_align's data flags)."""

    root: Path = field(default_factory=lambda: Path("data/sample"), metadata={"help": "image root"})
    student: str = field(
        default="efficientnet-lite0",
        metadata={"help": "student tower: an offline name or a hub id/path (CLIP, SigLIP)"},
    )
    teacher: str = field(
        default="craft-vgg16",
        metadata={"help": "teacher tower: an offline name or a hub id/path (DINOv2)"},
    )
    grid: int = field(default=4, metadata={"help": "offline towers' token grid per side"})
    student_size: int | None = field(
        default=None,
        metadata={"help": "resize the student's input to this many pixels (default: its own)"},
    )
    teacher_size: int | None = field(
        default=None,
        metadata={"help": "resize the teacher's input (CRAFT is ~8 GFLOP an image at 160 px)"},
    )
    train_shards: list[str] | None = field(
        default=None, metadata={"help": "shards to train on (default: all but --eval_shards)"}
    )
    eval_shards: list[str] = field(default_factory=list, metadata={"help": "held-out shards"})
    max_train: int | None = field(
        default=None, metadata={"help": "at most this many training images per shard"}
    )
    eval_n: int = field(default=200, metadata={"help": "held-out images to score"})
    feature_batch_size: int = field(default=16, metadata={"help": "images per caching batch"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "let transformers run code shipped with a hub model"}
    )
    no_progress: bool = field(default=False, metadata={"help": "no progress bars"})


def resized(transform: Any, size: int | None) -> Callable[[list], dict[str, Tensor]]:
    """The tower's own transform, then (optionally) a bilinear antialiased resize to size^2."""

    def preprocess(images: list) -> dict[str, Tensor]:
        x = transform(images)
        if size is not None and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return {"pixel_values": x}

    return preprocess


def _as_map(tokens: Tensor) -> Tensor:
    """(N, H W, C) -> (N, C, H, W), square maps."""
    side = math.isqrt(tokens.shape[1])
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], side, side)


def cache_split(
    records: list[ImageRecord],
    folder: Path,
    encode: Callable[[Tensor], Tensor],
    preprocess: Callable[[list], dict[str, Tensor]],
    identity: dict[str, Any],
    recipe: AlignRecipe,
) -> tuple[list[str], Tensor]:
    """encode(pixels) -> (B, T, C) per image, computed once into vector chunks under folder."""

    def run(inputs: dict, _items: list) -> dict:
        with torch.inference_mode():
            return {"pre": list(encode(inputs["pixel_values"]).unbind(0))}

    extract_shard(
        records, folder, encode=run, preprocess=preprocess, kinds=("pre",),
        batch_size=recipe.feature_batch_size, num_workers=0, save_every=1000,
        save_dtype=torch.float32, skip_existing=True, identity=identity,
        manifest_fields={"stage": "train_kernel_align features"},
        progress=not recipe.no_progress,
    )  # fmt: skip
    keys, rows = [], []
    for _, chunk in iter_chunks(folder, "pre"):
        keys += chunk.keys
        rows += chunk.items()
    return keys, torch.stack(rows)


def split_records(recipe: AlignRecipe) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(training images, held-out images) under recipe.root."""
    train, _ = train_eval_shards(recipe.root, recipe.train_shards, recipe.eval_shards)
    records = [r for s in train for r in list_images(recipe.root, s)[: recipe.max_train]]
    held = [r for s in recipe.eval_shards for r in list_images(recipe.root, s)][: recipe.eval_n]
    if len(records) < 2:
        raise UserError(f"{len(records)} training image(s) under {recipe.root}: need 2 or more")
    return records, held


# --------------------------------------------------------------------------------------------
# Training


class AlignModel(nn.Module):
    """The student (its trainable blocks), its frozen original and the student kernel."""

    def __init__(self, trainable: Trainable, original: nn.Module, kernel: StudentKernel) -> None:
        super().__init__()
        self.student = trainable.tower
        self.original = original.requires_grad_(False).eval()
        self.kernel = kernel
        self.cut = trainable.cut
        self.adapter = tower_adapter(original)

    def tokens(self, h: Tensor) -> Tensor:
        """Cached prefix inputs (B, C, h, w) -> the student's tokens (B, T, D)."""
        return self.adapter.suffix(self.student, h, self.cut)

    @torch.no_grad()
    def original_tokens(self, h: Tensor) -> Tensor:
        return self.adapter.suffix(self.original, h, self.cut)

    def train(self, mode: bool = True) -> AlignModel:
        super().train(False)  # BN statistics and dropout stay frozen; gradients still flow
        return self


def loss_terms(
    model: AlignModel, h: Tensor, t: Tensor, teacher: dict[str, float], cfg: KernelConfig
) -> dict[str, Tensor]:
    """The loss of one batch: h (B, C, h, w) cached prefix inputs, t (B, D_t) teacher features.

    {"total", "clean", "kernel"} (0-d each)."""
    e = model.tokens(h)  # (B, T, D)
    e_orig = model.original_tokens(h)
    k_s = model.kernel(e.mean(1))  # (B, B)
    k_t = kernel_matrix(cfg.kernel_teacher, t, teacher)
    clean = clean_loss(cfg.loss_clean, e, e_orig)
    kern = kernel_alignment_loss(k_s, k_t)
    return {"total": cfg.clean_weight * clean + cfg.penalty_weight * kern,
            "clean": clean, "kernel": kern}  # fmt: skip


def _settings(train: AlignTrainConfig, kcfg: KernelConfig) -> dict[str, Any]:
    """What a checkpoint must share with the run that resumes it."""
    return {k: v for k, v in {**asdict(train), **asdict(kcfg)}.items() if k != "checkpoint_every"}


def train_kernel_align(
    model: AlignModel,
    h: Tensor,
    t: Tensor,
    teacher: dict[str, float],
    kcfg: KernelConfig,
    cfg: AlignTrainConfig,
    *,
    checkpoint: Path,
    device: str = "auto",
    progress: bool = True,
    stop_after: int | None = None,
) -> list[dict[str, float]]:
    """Train model (student blocks and kernel) on cached inputs h (N, C, h, w) and teacher
    features t (N, D_t); resumes from `checkpoint` (the same result as an uninterrupted run:
    batches are a function of (seed, step)). stop_after: end after that many steps of this run
    (checkpointed). Returns one record per step (losses, learning rate, kernel parameters)."""
    from accelerate import Accelerator

    from src.models.connector_fit import batch_indices, lr_at  # the connector's schedule
    from src.runtime import resolve_device

    acc = Accelerator(cpu=resolve_device(device).type == "cpu")
    tower_params = [p for p in model.student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": tower_params, "weight_decay": cfg.wd, "lr": cfg.lr},
         {"params": list(model.kernel.parameters()), "weight_decay": 0.0, "lr": cfg.kernel_lr}]
    )  # fmt: skip
    settings, start, history = _settings(cfg, kcfg), 0, []
    if checkpoint.exists():
        state = load_torch(checkpoint)
        differ = sorted(k for k, v in settings.items() if state["settings"].get(k) != v)
        if differ:
            raise UserError(f"{checkpoint} was made with other settings ({', '.join(differ)}); "
                            "pass --fresh or another --work_dir")  # fmt: skip
        model.load_state_dict(state["trainable"], strict=False)
        opt.load_state_dict(state["optimizer"])
        start, history = int(state["step"]), list(state["history"])
    model, opt = acc.prepare(model, opt)
    bare = acc.unwrap_model(model)
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="kernel align",
               disable=not progress)  # fmt: skip
    for step in bar:
        if stop_after is not None and step - start >= stop_after:
            break
        idx = batch_indices(len(h), step, cfg)
        scale = lr_at(step, cfg) / cfg.lr
        for group, peak in zip(opt.param_groups, (cfg.lr, cfg.kernel_lr), strict=True):
            group["lr"] = peak * scale
        terms = loss_terms(bare, h[idx].to(acc.device), t[idx].to(acc.device), teacher, kcfg)
        opt.zero_grad(set_to_none=True)
        acc.backward(terms["total"])
        acc.clip_grad_norm_(tower_params, cfg.grad_clip)
        opt.step()
        history.append({"step": step + 1, "lr": lr_at(step, cfg),
                        **{f"loss_{k}": float(v.detach()) for k, v in terms.items()},
                        **bare.kernel.floats()})  # fmt: skip
        bar.set_postfix(kernel=f"{history[-1]['loss_kernel']:.4f}",
                        clean=f"{history[-1]['loss_clean']:.3f}")  # fmt: skip
        last = stop_after is not None and step + 1 - start == stop_after
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or last:
            save_checkpoint(checkpoint, bare, getattr(opt, "optimizer", opt), step + 1,
                            history, settings)  # fmt: skip
    return history


def trainable_state(model: AlignModel) -> dict[str, Tensor]:
    """The state that training changes: trainable tower tensors and the kernel's logs."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(
    path: Path, model: AlignModel, opt: Any, step: int, history: list, settings: dict
) -> None:
    save_torch_atomic(path, {"trainable": trainable_state(model), "optimizer": opt.state_dict(),
                             "step": step, "history": history, "settings": settings})  # fmt: skip


# --------------------------------------------------------------------------------------------
# Held-out evaluation


@torch.no_grad()
def heldout_metrics(
    model: AlignModel,
    h: Tensor,
    t: Tensor,
    teacher: dict[str, float],
    kcfg: KernelConfig,
    fitted: dict[str, float],
    *,
    batch: int = 32,
    n_boot: int = 200,
    n_perm: int = 200,
) -> pd.DataFrame:
    """Original vs aligned student on held-out images h (N, C, h, w), teacher features t (N, D_t).

    kernel_mse: mean((K_s - K_t)^2) over all N x N pairs (original: the fitted kernel parameters;
    aligned: the trained ones), CI by bootstrap over images; linear CKA (biased) of pooled
    student vs teacher features, with the mean of its shuffled-pairing null; drift: mean cosine
    of each token to the original's. One row per (tower, metric).
    """
    rows = []
    k_t = kernel_matrix(kcfg.kernel_teacher, t.double(), teacher)
    for tower in ("original", "aligned"):
        run = model.original_tokens if tower == "original" else model.tokens
        e = torch.cat([run(h[i : i + batch]) for i in range(0, len(h), batch)])  # (N, T, D)
        e0 = torch.cat([model.original_tokens(h[i : i + batch]) for i in range(0, len(h), batch)])
        params = fitted if tower == "original" else model.kernel.floats()
        k_s = kernel_matrix(kcfg.kernel_student, e.mean(1).double(), params)
        sq = (k_s - k_t).pow(2)
        g = torch.Generator().manual_seed(0)
        draws = (torch.randint(len(h), (len(h),), generator=g) for _ in range(n_boot))
        boot = torch.stack([sq[i][:, i].mean() for i in draws])
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=boot.dtype)).tolist()
        rows.append({"tower": tower, "metric": "kernel_mse", "value": float(sq.mean()),
                     "ci_low": lo, "ci_high": hi, "null": float("nan"), "n": len(h)})  # fmt: skip
        test = linear_cka_permutation_test(e.mean(1), t, n_perm=n_perm)
        rows.append({"tower": tower, "metric": "linear_cka", "value": test.observed,
                     "ci_low": float("nan"), "ci_high": float("nan"),
                     "null": float(test.null.mean()), "n": len(h)})  # fmt: skip
        cos = F.cosine_similarity(e, e0, dim=-1).mean(1)  # (N,)
        means = bootstrap_means(cos, n_boot)
        lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=means.dtype)).tolist()
        rows.append({"tower": tower, "metric": "token_cosine_to_original",
                     "value": float(cos.mean()), "ci_low": lo, "ci_high": hi,
                     "null": float("nan"), "n": len(h)})  # fmt: skip
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The whole run


def build_tower(name: str, grid: int, trust_remote_code: bool = False) -> tuple[nn.Module, Any]:
    """(tower, image transform) by name, as a VLM builds it (src.models.mini.build_vision)."""
    from src.models.connector import ConnectorArch
    from src.models.mini import build_vision

    return build_vision(ConnectorArch(vision=name, grid=grid), trust_remote_code=trust_remote_code)


def _cached(
    records: list[ImageRecord],
    work_dir: Path,
    role: str,
    identity: dict[str, Any],
    encode: Callable[[Tensor], Tensor],
    preprocess: Callable[[list], dict[str, Tensor]],
    recipe: AlignRecipe,
) -> tuple[list[str], Tensor]:
    """cache_split per shard (each shard its own chunk folder); keys and rows in one order."""
    from src.data.paths import kernel_feature_dir

    tag = "_".join(str(v) for v in identity.values())
    keys, rows = [], []
    for shard in dict.fromkeys(r.shard for r in records):
        part = [r for r in records if r.shard == shard]
        folder = kernel_feature_dir(work_dir, role, tag, shard)
        k, x = cache_split(part, folder, encode, preprocess, identity, recipe)
        # a finished cache of another subset of the shard (--max_train) is reused: keep the
        # images asked for (an image the tower could not read is reported in the manifest)
        wanted = {r.key for r in part}
        keep = [i for i, key in enumerate(k) if key in wanted]
        missing = len(wanted - set(k))
        if missing:
            print(f"note: {missing} of {len(part)} images are not in {folder} (unreadable, or "
                  "cached for another --max_train: then use another --work_dir)")  # fmt: skip
        keys += [f"{shard}/{k[i]}" for i in keep]
        rows.append(x[keep])
    return keys, torch.cat(rows)


@dataclass
class AlignData:
    """Cached inputs of both splits: prefix inputs h (N, C, h, w), teacher features t (N, D_t)."""

    train_keys: list[str]
    h_train: Tensor
    t_train: Tensor
    eval_keys: list[str]
    h_eval: Tensor
    t_eval: Tensor


def load_data(
    recipe: AlignRecipe, original: nn.Module, transform: Any, cut: int, work_dir: Path
) -> AlignData:
    """Cache the student's frozen prefix (or its pixels) and the teacher's pooled features of
    every training and held-out image, once; a teacher is built only when something is missing."""
    train, held = split_records(recipe)
    adapter = tower_adapter(original)
    ident = {"tower": recipe.student, "grid": recipe.grid, "cut": cut, "size": recipe.student_size}

    def prefix(x: Tensor) -> Tensor:  # pixels -> (B, h w, C)
        hmap = adapter.prefix(original, x, cut) if adapter.prefix and cut else x
        return hmap.flatten(2).transpose(1, 2)

    student_pre = resized(transform, recipe.student_size)
    teacher: list[Any] = []

    def teacher_encode(x: Tensor) -> Tensor:  # pixels -> (B, 1, D_t), the teacher built lazily
        if not teacher:
            teacher.extend(build_tower(recipe.teacher, recipe.grid, recipe.trust_remote_code))
        return teacher[0](x).mean(1, keepdim=True)

    t_ident = {"tower": recipe.teacher, "size": recipe.teacher_size, "pool": "mean"}

    def teacher_pre(images: list) -> dict[str, Tensor]:
        if not teacher:
            teacher.extend(build_tower(recipe.teacher, recipe.grid, recipe.trust_remote_code))
        return resized(teacher[1], recipe.teacher_size)(images)

    out = []
    for records in (train, held):
        if not records:
            out += [[], torch.zeros(0), torch.zeros(0)]
            continue
        keys, h = _cached(records, work_dir, "student", ident, prefix, student_pre, recipe)
        t_keys, t = _cached(records, work_dir, "teacher", t_ident, teacher_encode, teacher_pre,
                            recipe)  # fmt: skip
        common = [k for k in keys if k in set(t_keys)]  # an image one tower could not read
        pos, t_pos = {k: i for i, k in enumerate(keys)}, {k: i for i, k in enumerate(t_keys)}
        out += [common, _as_map(h[[pos[k] for k in common]]), t[[t_pos[k] for k in common], 0]]
    return AlignData(*out)


def fit_sample(n: int, fit_n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 7_919 + 1)
    return torch.randperm(n, generator=g)[:fit_n].tolist()


@dataclass
class AlignResult:
    history: list[dict[str, float]]
    fit_history: list[float]
    params: dict[str, dict[str, float]]  # initial / fitted / final
    teacher: dict[str, float]
    heldout: pd.DataFrame
    n_train: int
    seconds: dict[str, float]
    finished: bool


def align_tower(
    recipe: AlignRecipe,
    kcfg: KernelConfig,
    cfg: AlignTrainConfig,
    *,
    work_dir: Path,
    device: str = "auto",
    fresh: bool = False,
    stop_after: int | None = None,
) -> tuple[AlignResult, AlignModel, Trainable]:
    """Cache, fit the kernel parameters, train, evaluate on held-out images."""
    t0 = time.perf_counter()
    tower, transform = build_tower(recipe.student, recipe.grid, recipe.trust_remote_code)
    original = copy.deepcopy(tower).requires_grad_(False).eval()
    trainable = select_trainable(tower, cfg)
    data = load_data(recipe, original, transform, trainable.cut, work_dir)
    t_cache = time.perf_counter() - t0
    sample = fit_sample(len(data.h_train), kcfg.fit_n, cfg.seed)
    adapter = tower_adapter(original)
    with torch.no_grad():
        s = torch.cat([adapter.suffix(original, data.h_train[sample[i : i + 64]], trainable.cut)
                       .mean(1) for i in range(0, len(sample), 64)])  # fmt: skip
    t_s = data.t_train[sample]
    teacher = teacher_params(kcfg, t_s)
    kernel = StudentKernel(kcfg.kernel_student, initial_params(kcfg, s))
    model = AlignModel(trainable, original, kernel)
    params = {"initial": model.kernel.floats()}
    checkpoint = work_dir / CHECKPOINT
    if fresh:
        checkpoint.unlink(missing_ok=True)
    fit_history: list[float] = []
    if not kcfg.no_kernel_fit:
        k_t = kernel_matrix(kcfg.kernel_teacher, t_s.double(), teacher)
        fit_history = fit_kernel_params(model.kernel, s, k_t, kcfg.fit_steps)
    params["fitted"] = model.kernel.floats()
    t1 = time.perf_counter()
    history = train_kernel_align(
        model, data.h_train, data.t_train, teacher, kcfg, cfg, checkpoint=checkpoint,
        device=device, progress=not recipe.no_progress, stop_after=stop_after,
    )  # fmt: skip
    finished = bool(history) and history[-1]["step"] >= cfg.steps
    model = model.cpu()
    params["final"] = model.kernel.floats()
    t2 = time.perf_counter()
    heldout = pd.DataFrame()
    if finished and len(data.h_eval) > 2:
        heldout = heldout_metrics(model, data.h_eval, data.t_eval, teacher, kcfg,
                                  params["fitted"], batch=cfg.batch_size)  # fmt: skip
    seconds = {"cache": t_cache, "train": t2 - t1, "heldout": time.perf_counter() - t2,
               "total": time.perf_counter() - t0}  # fmt: skip
    result = AlignResult(history, fit_history, params, teacher, heldout, len(data.h_train),
                         {k: round(v, 1) for k, v in seconds.items()}, finished)  # fmt: skip
    return result, model, trainable


def tower_identity(name: str, tower: nn.Module) -> dict[str, Any]:
    """What a tower was built from: its name (offline name or hub id/path) and, for a packaged
    one, its weights file and checksum (a delta only fits the exact base weights)."""
    import hashlib

    from src.data.io import portable

    ident: dict[str, Any] = {"name": portable(name) if Path(name).exists() else name}
    weights = getattr(tower, "weights_file", None)
    if weights:
        ident["weights_file"] = Path(weights).name
        ident["weights_sha256"] = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    return ident


def write_outputs(
    result: AlignResult,
    model: AlignModel,
    trainable: Trainable,
    recipe: AlignRecipe,
    kcfg: KernelConfig,
    cfg: AlignTrainConfig,
    *,
    out_dir: Path,
    tables_dir: Path,
    command: str,
    args: dict[str, Any],
) -> None:
    """Tables (history, fit, heldout) into tables_dir, the tower folder into out_dir (tower.json
    records the kernel parameters initial / fitted / final, the held-out metrics and the
    command), then out_dir's manifest, last."""
    from src.data.io import atomic_write, write_manifest
    from src.data.paths import kernel_table
    from src.models.tower_folder import save_tower_folder

    tables = {
        "history": pd.DataFrame(result.history),
        "fit": pd.DataFrame({"step": range(1, len(result.fit_history) + 1),
                             "loss_kernel": result.fit_history}),
        "params": pd.DataFrame([{"stage": k, **v} for k, v in result.params.items()]),
        "heldout": result.heldout,
    }  # fmt: skip
    for name, df in tables.items():
        atomic_write(kernel_table(tables_dir, name), lambda tmp, df=df: df.to_csv(tmp, index=False))
    upstream = {
        "student": tower_identity(recipe.student, model.original),
        "teacher": {"name": recipe.teacher},
        "data": {"root": recipe.root, "train_shards": recipe.train_shards,
                 "eval_shards": recipe.eval_shards, "n_train": result.n_train},
    }  # fmt: skip
    record = {
        "stage": "train_kernel_align",
        "student_base": upstream["student"],
        "teacher": recipe.teacher,
        "trainable": {"mode": cfg.trainable, "blocks": cfg.blocks,
                      "n_tensors": len(trainable.names)},
        "kernel": {**asdict(kcfg), "teacher_params": result.teacher},
        "kernel_params": result.params,
        "train": asdict(cfg),
        "heldout": result.heldout.to_dict("records"),
        "seconds": result.seconds,
        "command": command,
    }  # fmt: skip
    save_tower_folder(out_dir, merged_tower(trainable), model.original, base_name=recipe.student,
                      record=record)  # fmt: skip
    write_manifest(out_dir, stage="train_kernel_align", upstream=upstream, args=args,
                   kernel_params=result.params, seconds=result.seconds)  # fmt: skip
