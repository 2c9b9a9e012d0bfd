"""Vision -> text projectors fitted on training images: linear (ridge), MLP, 2-layer MLP.

Inputs and targets are standardised with the training images' statistics (the text side's
scale differs by orders of magnitude between LLMs and layers); a projector maps x (N, Dx) to
standardised text coordinates (N, Dy). MLPs: GELU, full-batch AdamW on MSE, seeded, so a fit
is reproducible.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from src.errors import UserError
from src.metrics.alignment import ridge


@dataclass
class Standardiser:
    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, x: Tensor) -> Standardiser:
        x = x.double()
        return cls(x.mean(0), x.std(0).clamp(min=1e-8))

    def __call__(self, x: Tensor) -> Tensor:
        return (x.double() - self.mean) / self.std


@dataclass
class Projector:
    kind: str
    sx: Standardiser
    sy: Standardiser
    fn: Callable[[Tensor], Tensor]  # standardised x -> standardised y

    def __call__(self, x: Tensor) -> Tensor:
        """(N, Dx) raw vision rows -> (N, Dy) standardised text coordinates."""
        with torch.no_grad():
            return self.fn(self.sx(x)).double()

    def target(self, y: Tensor) -> Tensor:
        """(N, Dy) raw text rows -> their standardised coordinates (the projector's space)."""
        return self.sy(y)


def _linear(x: Tensor, y: Tensor, alpha: float, **_: object) -> Callable[[Tensor], Tensor]:
    mx, w, c = ridge(x, y, alpha)
    return lambda z: (z - mx) @ w + c


def _mlp(depth: int) -> Callable[..., Callable[[Tensor], Tensor]]:
    def fit(
        x: Tensor,
        y: Tensor,
        alpha: float,
        *,
        hidden: int = 512,
        steps: int = 300,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> Callable[[Tensor], Tensor]:
        torch.manual_seed(seed)
        dims = [x.shape[1]] + [hidden] * depth
        layers: list[torch.nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [torch.nn.Linear(a, b), torch.nn.GELU()]
        net = torch.nn.Sequential(*layers, torch.nn.Linear(dims[-1], y.shape[1]))
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=alpha)
        xf, yf = x.float(), y.float()
        for _ in range(steps):
            opt.zero_grad()
            loss = (net(xf) - yf).square().mean()
            loss.backward()
            opt.step()
        net.eval().requires_grad_(False)
        return lambda z: net(z.float()).double()

    return fit


PROJECTORS: dict[str, Callable[..., Callable[[Tensor], Tensor]]] = {
    "linear": _linear,
    "mlp": _mlp(1),
    "mlp2": _mlp(2),
}


def fit_projector(
    kind: str, x: Tensor, y: Tensor, *, alpha: float = 0.1, **kw: object
) -> Projector:
    """Fit a projector of `kind` on training rows x (N, Dx) -> y (N, Dy)."""
    if kind not in PROJECTORS:
        raise UserError(f"unknown projector {kind!r}; known: {', '.join(PROJECTORS)}")
    sx, sy = Standardiser.fit(x), Standardiser.fit(y)
    return Projector(kind, sx, sy, PROJECTORS[kind](sx(x), sy(y), alpha, **kw))
