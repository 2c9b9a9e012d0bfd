"""Vision-text alignment scores (seed A): CORAL in one fitted basis, the seed's CORAL / EAS / ELAS
formulas under their own names, and our held-out composites on a documented [0, 1] scale.

Shapes: x (N, Dx) vision rows and y (N, Dy) text rows of the same N images; *_tr / *_te the
training and held-out images. Pure functions, float64, no I/O.

The seed's formulas (kept so users can see what they measure):
- coral_seed: rows L2-normalised, a separate PCA of each side to d = min(Dx, Dy, N - 1)
  dimensions (unrelated axes), C = covariance + 1e-5 I, distance ||C_x - C_y||_F^2 / (4 d^2),
  similarity 1 / (1 + distance). Unit vectors in d dimensions have covariance entries of order
  1/d, so the distance is ~1/d^3 and the similarity ~1 for every pair, related or not.
- eas_seed = 0.3 CKA + 0.3 CORAL_sim + 0.4 Disc, Disc = F / (F + 1) with F the Fisher ratio
  (between- over within-class scatter) of the VISION rows only.
- elas_seed = 0.3 CKA_train + 0.3 (1 - min(MSE_train, 1)) + 0.2 (1 - |MSE_test - MSE_train|)
  + 0.2 cos_train, MSE per element: for unit vectors in D dimensions it is ~2/D (1e-4 at 4096),
  so the second and third terms are ~0.3 and ~0.2 whatever the pair.

Ours (every component on held-out images, each in [0, 1], 0 = chance, 1 = perfect):
- coral: the text side's top `dim` principal axes (fitted on training images) are the one basis;
  vision rows are mapped onto those coordinates by ridge regression fitted on the training
  pairs; on held-out images each side's channels are standardised and the distance
  ||C_x - C_y||_F^2 / (4 d^2) is taken between the two correlation matrices. Null: the same with
  the map fitted on shuffled training pairs. coral_sim = clip(1 - distance / null mean, 0, 1).
- eas = 0.3 CKA_u + 0.3 coral_sim + 0.4 label_acc, with CKA_u the unbiased linear CKA on held-out
  images (clipped at 0) and label_acc the chance-corrected accuracy of labelling each held-out
  image by the nearest text-side class centroid of its mapped vision vector (so the text side
  matters: (acc - majority rate) / (1 - majority rate), clipped).
- elas = 0.3 CKA_u + 0.3 R2_test + 0.2 min(1, R2_test / R2_train) + 0.2 cos_gap, with R2 the
  variance of the standardised text rows the map explains (clipped at 0) and cos_gap the mean
  cosine of matched minus mismatched (deranged) held-out pairs (clipped to [0, 1]).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from src.metrics.similarity import linear_cka
from src.metrics.stats import derangement

SEED_EAS_WEIGHTS = (0.3, 0.3, 0.4)
SEED_ELAS_WEIGHTS = (0.3, 0.3, 0.2, 0.2)


def covariance(x: Tensor, eps: float = 0.0) -> Tensor:
    """(N, d) -> (d, d) sample covariance (N - 1), plus eps I."""
    x = x.double()
    xc = x - x.mean(0)
    return xc.T @ xc / max(x.shape[0] - 1, 1) + eps * torch.eye(x.shape[1], dtype=x.dtype)


def coral_distance(a: Tensor, b: Tensor, eps: float = 0.0) -> float:
    """||C_a - C_b||_F^2 / (4 d^2) for a (Na, d), b (Nb, d) in one basis (same d)."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"CORAL needs one dimension: {a.shape[1]} vs {b.shape[1]}")
    d = a.shape[1]
    return float((covariance(a, eps) - covariance(b, eps)).square().sum() / (4 * d * d))


def _pca(x: Tensor, d: int) -> Tensor:
    xc = x.double() - x.double().mean(0)
    _, _, vh = torch.linalg.svd(xc, full_matrices=False)
    return xc @ vh[:d].T


class SeedCoral(NamedTuple):
    distance: float
    similarity: float
    dim: int


def coral_seed(x: Tensor, y: Tensor) -> SeedCoral:
    """The seed's CORAL (module docstring): unit rows, separate PCAs, 1 / (1 + distance)."""
    x, y = F.normalize(x.double(), dim=-1), F.normalize(y.double(), dim=-1)
    d = min(x.shape[1], y.shape[1], x.shape[0] - 1)
    dist = coral_distance(_pca(x, d), _pca(y, d), eps=1e-5)
    return SeedCoral(dist, 1.0 / (1.0 + dist), d)


def fisher_discriminability_seed(x: Tensor, labels: list[str]) -> float:
    """The seed's Disc: F / (F + 1), F = between / within scatter of x's rows by label; 0.5 with
    fewer than two labels (its default)."""
    x = x.double()
    names = sorted(set(labels))
    if len(names) < 2:
        return 0.5
    lab = torch.tensor([names.index(v) for v in labels])
    mu = x.mean(0)
    within = between = 0.0
    for c in range(len(names)):
        xc = x[lab == c]
        m = xc.mean(0)
        within += float((xc - m).square().sum())
        between += xc.shape[0] * float((m - mu).square().sum())
    f = between / (within + 1e-8)
    return f / (f + 1)


def eas_seed(cka: float, coral_sim: float, disc: float) -> float:
    a, b, g = SEED_EAS_WEIGHTS
    return a * cka + b * coral_sim + g * disc


def elas_seed(cka_train: float, mse_train: float, mse_test: float, cos_train: float) -> float:
    a, b, g, d = SEED_ELAS_WEIGHTS
    return (
        a * cka_train
        + b * (1 - min(mse_train, 1.0))
        + g * (1 - abs(mse_test - mse_train))
        + d * cos_train
    )


# --------------------------------------------------------------------------------------------
# one basis: the text side's principal axes, vision mapped there by ridge regression
# --------------------------------------------------------------------------------------------


class Basis(NamedTuple):
    """Affine maps into one d-dimensional basis: text z = (y - my) @ P, vision z = x @ W + c."""

    my: Tensor  # (Dy,)
    p: Tensor  # (Dy, d)
    mx: Tensor  # (Dx,)
    w: Tensor  # (Dx, d)
    c: Tensor  # (d,)

    def text(self, y: Tensor) -> Tensor:
        return (y.double() - self.my) @ self.p

    def vision(self, x: Tensor) -> Tensor:
        return (x.double() - self.mx) @ self.w + self.c


class RidgeSolver:
    """Ridge regression z ~ (x - mx) W + c for a fixed x (N, Dx), factorised once, so that many
    targets z (N, d) cost one triangular solve each: a shuffled-pairing null refits the same x
    against permuted targets (pairing x[perm] with z is pairing x with z[argsort(perm)]).

    lambda = alpha * mean squared row norm of centred x. Solved in the dual form (an N x N
    system) when N <= Dx, else in the primal (Dx x Dx): the same solution, the smaller solve."""

    def __init__(self, x: Tensor, alpha: float = 0.1) -> None:
        x = x.double()
        self.mx = x.mean(0)
        self.xc = x - self.mx
        n, dx = self.xc.shape
        lam = alpha * float(self.xc.square().sum()) / n + 1e-12
        self.dual = n <= dx
        g = self.xc @ self.xc.T if self.dual else self.xc.T @ self.xc
        self.lu = torch.linalg.lu_factor(g + lam * torch.eye(g.shape[0], dtype=g.dtype))

    def fit(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z (N, d) -> (mx (Dx,), W (Dx, d), c (d,))."""
        z = z.double()
        c = z.mean(0)
        zc = z - c
        if self.dual:
            w = self.xc.T @ torch.linalg.lu_solve(*self.lu, zc)
        else:
            w = torch.linalg.lu_solve(*self.lu, self.xc.T @ zc)
        return self.mx, w, c


def ridge(x: Tensor, z: Tensor, alpha: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Ridge regression z ~ (x - mx) W + c: x (N, Dx), z (N, d) -> (mx (Dx,), W (Dx, d), c (d,))
    (RidgeSolver, one target)."""
    return RidgeSolver(x, alpha).fit(z)


def text_basis(y_tr: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The text side's principal axes on the training images: (my (Dy,), P (Dy, d))."""
    y = y_tr.double()
    my = y.mean(0)
    _, _, vh = torch.linalg.svd(y - my, full_matrices=False)
    return my, vh[: min(dim, vh.shape[0])].T


def fit_basis(x_tr: Tensor, y_tr: Tensor, dim: int, alpha: float = 0.1) -> Basis:
    """Text PCA to `dim` axes on the training images; ridge map of vision onto them."""
    my, p = text_basis(y_tr, dim)
    return Basis(my, p, *ridge(x_tr, (y_tr.double() - my) @ p, alpha))


def _standardise(z: Tensor) -> Tensor:
    return (z - z.mean(0)) / z.std(0).clamp(min=1e-12)


def coral_in_basis(basis: Basis, x_te: Tensor, y_te: Tensor) -> float:
    """Our CORAL distance on held-out rows: channels standardised in the one basis."""
    return coral_distance(_standardise(basis.vision(x_te)), _standardise(basis.text(y_te)))


class CoralTest(NamedTuple):
    distance: float
    null: Tensor  # (n_perm,) distances with the map fitted on shuffled training pairs
    p_value: float  # P(null <= distance), one-sided: "closer than chance"
    similarity: float  # clip(1 - distance / null mean, 0, 1)
    dim: int


def coral_test(
    x_tr: Tensor,
    y_tr: Tensor,
    x_te: Tensor,
    y_te: Tensor,
    *,
    dim: int = 32,
    alpha: float = 0.1,
    n_perm: int = 100,
    seed: int = 0,
) -> CoralTest:
    """Our CORAL with its shuffled-pairing null (module docstring)."""
    # The text axes do not depend on the pairing, and the vision side's ridge system is the
    # same for every shuffle: fit it once, then each shuffled pairing is one more target.
    my, p = text_basis(y_tr, dim)
    z_tr = (y_tr.double() - my) @ p
    solver = RidgeSolver(x_tr, alpha)
    basis = Basis(my, p, *solver.fit(z_tr))
    obs = coral_in_basis(basis, x_te, y_te)
    g = torch.Generator().manual_seed(seed)
    null = torch.tensor(
        [
            coral_in_basis(  # x_tr[perm] paired with z_tr = x_tr paired with z_tr[argsort(perm)]
                Basis(my, p, *solver.fit(z_tr[torch.randperm(len(z_tr), generator=g).argsort()])),
                x_te,
                y_te,
            )
            for _ in range(n_perm)
        ],
        dtype=torch.float64,
    )
    p = (int((null <= obs).sum()) + 1) / (n_perm + 1)
    return CoralTest(obs, null, p, coral_similarity(obs, null), basis.p.shape[1])


def coral_similarity(distance: float, null: Tensor) -> float:
    ref = float(null.mean()) if null.numel() else float("nan")
    return float(min(max(1.0 - distance / ref, 0.0), 1.0)) if ref > 0 else float("nan")


# --------------------------------------------------------------------------------------------
# our held-out components
# --------------------------------------------------------------------------------------------


def clip01(v: float) -> float:
    return float(min(max(v, 0.0), 1.0)) if v == v else 0.0


def label_accuracy(zx_te: Tensor, zy_tr: Tensor, lab_tr: list[str], lab_te: list[str]) -> float:
    """Chance-corrected nearest-text-centroid labelling of mapped held-out vision rows.

    zx_te (n, d) mapped vision rows; zy_tr (m, d) training text rows with labels lab_tr; class
    centroids from the text side. (acc - majority rate) / (1 - majority rate), clipped to [0, 1];
    0 with fewer than two classes (nothing to tell apart)."""
    names = sorted(set(lab_tr))
    if len(names) < 2 or len(set(lab_te)) < 2:
        return 0.0
    cent = torch.stack([zy_tr[[i for i, v in enumerate(lab_tr) if v == c]].mean(0) for c in names])
    pred = torch.cdist(zx_te.double(), cent.double()).argmin(1).tolist()
    acc = sum(names[p] == t for p, t in zip(pred, lab_te, strict=True)) / len(lab_te)
    major = max(lab_te.count(c) for c in set(lab_te)) / len(lab_te)
    return clip01((acc - major) / (1 - major)) if major < 1 else 0.0


def r2_score(pred: Tensor, target: Tensor) -> float:
    """1 - sum |pred - target|^2 / sum |target - mean target|^2 over (n, d) rows."""
    t = target.double()
    return 1.0 - float((pred.double() - t).square().sum() / (t - t.mean(0)).square().sum())


def cos_gap(pred: Tensor, target: Tensor, seed: int = 0) -> float:
    """Mean cosine of matched pairs minus that of deranged (mismatched) pairs, (n, d) each."""
    p, t = F.normalize(pred.double(), dim=-1), F.normalize(target.double(), dim=-1)
    other = t[derangement(t.shape[0], seed)]
    return float((p * t).sum(1).mean() - (p * other).sum(1).mean())


def eas_ours(cka_u: float, coral_sim: float, label_acc: float) -> float:
    a, b, g = SEED_EAS_WEIGHTS
    return a * clip01(cka_u) + b * clip01(coral_sim) + g * clip01(label_acc)


def elas_ours(cka_u: float, r2_test: float, r2_train: float, gap: float) -> float:
    a, b, g, d = SEED_ELAS_WEIGHTS
    gen = clip01(r2_test / r2_train) if r2_train > 0 else 0.0
    return a * clip01(cka_u) + b * clip01(r2_test) + g * gen + d * clip01(gap)


def cka_unbiased(x: Tensor, y: Tensor) -> float:
    """Unbiased linear CKA (src.metrics.similarity), NaN when undefined."""
    return linear_cka(x, y, unbiased=True) if x.shape[0] >= 4 else float("nan")
